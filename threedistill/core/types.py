"""The data that travels between components: renders, prompt embeddings, splat parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypedDict

import torch
from torch import Tensor


@dataclass
class RenderOutput:
    """Renders of a batch of cameras.

    rgb [B,3,H,W] in [0,1] composited on the background, alpha [B,1,H,W],
    depth [B,1,H,W] (expected depth along the camera z axis, 0 where empty),
    extras: backend-specific tensors (e.g. `means2d` [B,N,2] with retained grad, `radii`).
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    extras: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def render_in_chunks(render: Callable[[Any], RenderOutput], cams: Any, chunk: int = 8) -> RenderOutput:
    """render(cams[i : i + chunk]) for every chunk, without gradients, joined on the CPU (extras dropped)."""
    outs = [render(cams[i : i + chunk]) for i in range(0, len(cams), chunk)]
    return RenderOutput(rgb=torch.cat([o.rgb.cpu() for o in outs]), alpha=torch.cat([o.alpha.cpu() for o in outs]),
                        depth=torch.cat([o.depth.cpu() for o in outs]))


@dataclass
class TextEmbeddings:
    """Prompt embeddings travelling together, one row per view: never split positionally."""

    cond: Tensor
    """The prompt, view-dependent when the run uses view phrases."""
    uncond: Tensor
    """The negative prompt (CFG's unconditional branch)."""
    null: Tensor
    """The empty prompt (DDIM inversion, CSD's null branch)."""
    plain: Optional[Tensor] = None
    """The prompt without view phrases (VSD's variational model); None means `cond`."""
    negatives: Optional[Tensor] = None
    """Perp-Neg's negative embeddings [B,K,...] (`--prompts.perp-neg`; None without it)."""
    negative_weights: Optional[Tensor] = None
    """Their weights [B,K] (negative numbers push away from that view)."""

    @property
    def plain_or_cond(self) -> Tensor:
        return self.cond if self.plain is None else self.plain

    def index(self, idx: Tensor | slice) -> "TextEmbeddings":
        def pick(x: Optional[Tensor]) -> Optional[Tensor]:
            return None if x is None else x[idx]

        return TextEmbeddings(self.cond[idx], self.uncond[idx], self.null[idx], pick(self.plain), pick(self.negatives),
                              pick(self.negative_weights))

    def repeat(self, n: int) -> "TextEmbeddings":
        """The batch repeated n times along dim 0 (one copy per particle)."""
        def rep(x: Tensor) -> Tensor:
            return x.repeat(n, *([1] * (x.ndim - 1)))

        def rep_opt(x: Optional[Tensor]) -> Optional[Tensor]:
            return None if x is None else rep(x)

        return TextEmbeddings(rep(self.cond), rep(self.uncond), rep(self.null), rep_opt(self.plain), rep_opt(self.negatives),
                              rep_opt(self.negative_weights))


class SplatTensors(TypedDict):
    """3D Gaussians in the 3DGS layout (detached): what splats.ply holds."""

    means: Tensor  # [N,3]
    sh: Tensor  # [N,K,3] spherical-harmonic colour coefficients
    opacity_logits: Tensor  # [N]
    log_scales: Tensor  # [N,3]
    quats: Tensor  # [N,4] (w, x, y, z)


@dataclass
class ReferenceImage:
    """The image of an image-to-3D run (`--image`), as priors conditioned on it read it."""

    rgb: Tensor
    """[1,3,H,W] in [0,1], composited on white, at the file's resolution."""
    alpha: Tensor
    """[1,1,H,W] in [0,1]: the object's mask."""
    cameras: Any
    """The reference view's camera (core/cameras.py `Cameras`, one row) at the training resolution."""
