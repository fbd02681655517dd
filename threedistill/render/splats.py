"""3D Gaussian splat rendering behind one function, with backend selection.

Backends (DESIGN.md section 6): "cuda" = gsplat's fused kernels, "torch" = the tile-based
torch reference (any device), "auto" = gsplat when the tensors are on CUDA and its kernels
load, else torch.
"""

from __future__ import annotations


import torch
from torch import Tensor

from threedistill.core.cameras import Cameras
from .backend import resolve_backend
from threedistill.render.splats_gsplat import gsplat_status, render_splats_gsplat
from threedistill.render.splats_torch import render_splats_torch
from threedistill.core.types import RenderOutput



def resolve_splat_backend(name: str, device: torch.device | str) -> str:
    """The concrete backend ("cuda" or "torch") that `name` selects for tensors on `device`."""
    return resolve_backend(name, device, gsplat_status, "gsplat", "rendering splats")


def render_splats(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    cams: Cameras, background: Tensor, backend: str = "auto", depth_moments: bool = False,
) -> RenderOutput:
    """Render N Gaussians into the B cameras of `cams`.

    means [N,3]; quats [N,4] wxyz (normalised here); scales [N,3] (positive); opacities [N]
    in (0,1); colors [N,3] or [B,N,3] (activated RGB); background [3] or [B,3]. The torch
    backend also takes means, quats and scales per view ([B,N,...]: a 4D asset at each
    camera's time, rendered in one pass).
    Returns rgb/alpha/depth (depth = sum of weight x camera z, not divided by alpha) and
    extras "means2d" [B,N,2] (gradient retained for densification), "radii" [B,N] (> 0 where
    visible), "backend"; with `depth_moments`, "depth_sq" [B,1,H,W] (sum of weight x camera z^2: HiFA's
    z-variance regulariser, representations/base.py).
    """
    if resolve_splat_backend(backend, means.device) == "cuda":
        if means.dim() == 3 or quats.dim() == 3 or scales.dim() == 3:
            raise ValueError("per-view Gaussian parameters need the torch backend; render each time separately with gsplat")
        return render_splats_gsplat(means, quats, scales, opacities, colors, cams, background, depth_moments)
    return render_splats_torch(means, quats, scales, opacities, colors, cams, background, depth_moments=depth_moments)
