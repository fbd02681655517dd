"""Edit one 2D image toward a target prompt with DDS (`threedistill edit-image`).

The image is encoded once into the prior's space (z_src: SD's VAE mean latent, toyworld's
pixels); z_tgt starts as a copy and follows the DDS gradient with plain SGD, as in the official
notebook (lr 0.1 with the loss scaled by 2000 / (64 * 64), i.e. about 0.05 per unit gradient).
No camera is known for a plain image, so toyworld's camera kernel is off.

The prior edits at its own resolution (toyworld 64 px, SD's VAE 512 px); the result keeps the
input's size: the edit (decoded edited image minus decoded source) is resized to the input and
added to it, so what the edit leaves alone keeps the input's full detail (and an SD edit does
not carry the VAE's reconstruction error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .dds import DDSGuidance
from ..core.types import TextEmbeddings
from ..priors.base import DiffusionPrior


@dataclass
class ImageEdit:
    """The source as the prior sees it, the edited image (both [1,3,R,R] in [0,1]), the edit applied to
    the input at its own size ([1,3,H,W]) and the gradient norms."""

    source: Tensor
    edited: Tensor
    full: Tensor
    grad_norms: list[float]


def prompt_embeddings(prior: DiffusionPrior, prompt: str, negative_prompt: str = "") -> TextEmbeddings:
    """One row of cond / negative / null embeddings for a prompt without view phrases."""
    emb = prior.embed([prompt, negative_prompt, ""])
    return TextEmbeddings(cond=emb[0:1], uncond=emb[1:2], null=emb[2:3], plain=emb[0:1])


def edit_image(
    prior: DiffusionPrior, guidance: DDSGuidance, image: Tensor, emb_src: TextEmbeddings, emb_tgt: TextEmbeddings,
    steps: int, lr: float, on_step: Optional[Callable[[int, float], None]] = None,
) -> ImageEdit:
    """DDS-edit `image` [3,H,W] in [0,1] from the source prompt's embeddings toward the target's
    (see `prompt_embeddings`)."""
    device = prior.alphas_cumprod.device
    original = image.unsqueeze(0).float()
    size = prior.resolution
    img = _resized(original.to(device), (size, size))
    with torch.no_grad():
        z_src = prior.encode(img)
    z = z_src.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([z], lr=lr)
    grad_norms = []
    for step in range(1, steps + 1):
        out = guidance.edit_loss(z, z_src, emb_tgt, emb_src, None, step)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        grad_norms.append(float(out.logs["grad_norm"]))
        if on_step is not None:
            on_step(step, grad_norms[-1])
    with torch.no_grad():
        source, edited = prior.decode(z_src).float().cpu(), prior.decode(z.detach()).float().cpu()
        full = (original + _resized(edited - source, tuple(original.shape[-2:]))).clamp(0.0, 1.0)
    return ImageEdit(source=source, edited=edited, full=full, grad_norms=grad_norms)


def _resized(images: Tensor, size: tuple[int, ...]) -> Tensor:
    if images.shape[-2:] == size:
        return images
    down = images.shape[-1] > size[-1]
    return F.interpolate(images, size=size, mode="bilinear", antialias=down, align_corners=False)
