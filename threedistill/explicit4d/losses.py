"""Photometric pieces of the explicit 4D pipeline: L1, SSIM, optional LPIPS, PLA4D's focal zoom and
the mask centroids its motion alignment compares.

All take frames [N,C,H,W] in [0,1] (clips are flattened by the caller).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"
"""torchvision's AlexNet weights, which LPIPS's 'alex' network reads from the torch hub cache."""


def l1(x: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error."""
    return (x - target).abs().mean()


def gaussian_kernel(radius: int, sigma: float, like: Tensor) -> Tensor:
    """The normalised 1D Gaussian [2 radius + 1] of `sigma` pixels (dtype and device of `like`)."""
    coords = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    g = gaussian_kernel(size // 2, sigma, like)
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity (Wang et al. 2004; Gaussian window 11 / 1.5, C1 = 0.01^2, C2 = 0.03^2) of
    images in [0,1]; windows are cut at the border (zero padding), as 3DGS's loss does."""
    channels = x.shape[1]
    w = _gaussian_window(min(window, x.shape[-1], x.shape[-2]) | 1, sigma, channels, x)
    pad = w.shape[-1] // 2

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(z, w, padding=pad, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value.mean()


LpipsFn = Callable[[Tensor, Tensor], Tensor]


def load_lpips(device: torch.device, log: Callable[[str], None]) -> Optional[LpipsFn]:
    """LPIPS (AlexNet) when the `lpips` package and torchvision's AlexNet weights are installed locally
    (nothing is downloaded), else None after one log line saying why it is skipped."""
    try:
        import lpips
    except ImportError:
        log("LPIPS skipped: the lpips package is not installed (pip install lpips); the loss is L1 + SSIM")
        return None
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT
    if not checkpoint.is_file():
        log(f"LPIPS skipped: torchvision's AlexNet weights are not at {checkpoint}; the loss is L1 + SSIM")
        return None
    model = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def distance(x: Tensor, y: Tensor) -> Tensor:
        return model(x * 2.0 - 1.0, y * 2.0 - 1.0).mean()

    log("LPIPS (AlexNet) on")
    return distance


def zoom(images: Tensor, scale: Tensor) -> Tensor:
    """Images [N,C,H,W] as a pinhole camera with `scale` times the focal length sees them: magnified by
    `scale` about the principal point (the image centre), edges repeated where the view widens."""
    n = images.shape[0]
    inv = 1.0 / scale.reshape(())
    zero = torch.zeros((), dtype=images.dtype, device=images.device)
    theta = torch.stack([torch.stack([inv, zero, zero]), torch.stack([zero, inv, zero])]).to(images.dtype)
    grid = F.affine_grid(theta.expand(n, 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def centroids(masks: Tensor) -> Tensor:
    """Centroid (x, y) in [-1, 1] image coordinates [N,2] of masks [N,1,H,W] (the centre where a mask is empty)."""
    h, w = masks.shape[-2:]
    ys = (torch.arange(h, dtype=masks.dtype, device=masks.device) + 0.5) / h * 2.0 - 1.0
    xs = (torch.arange(w, dtype=masks.dtype, device=masks.device) + 0.5) / w * 2.0 - 1.0
    m = masks[:, 0]
    mass = m.sum((-2, -1)).clamp_min(1e-6)
    return torch.stack([(m * xs).sum((-2, -1)) / mass, (m * ys[:, None]).sum((-2, -1)) / mass], dim=-1)


def estimated_masks(frames: Tensor, threshold: float = 0.1) -> Tensor:
    """Foreground masks [N,1,H,W] of generated frames [N,3,H,W] without alpha: pixels that differ by more than
    `threshold` (any channel) from the frame's background colour, the median of its border pixels."""
    border = torch.cat([frames[..., 0, :], frames[..., -1, :], frames[..., :, 0], frames[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]
    return ((frames - background).abs().amax(1, keepdim=True) > threshold).to(frames.dtype)


def blur(images: Tensor, sigma: float) -> Tensor:
    """Images [N,C,H,W] blurred by a Gaussian of `sigma` pixels (edges repeated); unchanged below 0.3 px."""
    if sigma < 0.3:
        return images
    radius = min(int(math.ceil(3.0 * sigma)), (min(images.shape[-2:]) - 1) // 2)
    kernel = gaussian_kernel(radius, sigma, images)
    channels = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1).contiguous(), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1).contiguous(), groups=channels)
