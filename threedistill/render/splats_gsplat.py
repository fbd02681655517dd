"""gsplat (CUDA) splat backend, configured to match the torch backend's math.

gsplat 1.5.3 JIT-compiles its CUDA kernels on first use; `gsplat_status()` tries that
once per process and remembers the outcome.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from threedistill.core.cameras import Cameras
from threedistill.render.splats_torch import EPS2D, NEAR_PLANE
from threedistill.core.types import RenderOutput


@functools.lru_cache(maxsize=None)
def gsplat_status() -> tuple[bool, str]:
    """(usable, reason): whether gsplat's CUDA kernels load here. Tried once, cached."""
    if not torch.cuda.is_available():
        return False, "no CUDA device is available to torch"
    try:
        from gsplat.cuda._backend import _C  # builds or loads the extension
    except (ImportError, OSError, RuntimeError) as err:
        return False, f"gsplat's CUDA kernels failed to load: {type(err).__name__}: {err}".splitlines()[0]
    if _C is None:
        return False, "gsplat's CUDA kernels are not built and no CUDA toolkit (nvcc) was found to build them"
    return True, "ok"


def render_splats_gsplat(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    cams: Cameras, background: Tensor, depth_moments: bool = False,
) -> RenderOutput:
    """Render with gsplat's fused CUDA rasteriser ("classic" mode, unpacked, RGB+D); `depth_moments` rasterises
    camera z^2 as a fourth colour channel (extras "depth_sq")."""
    from gsplat.rendering import rasterization

    B = len(cams)
    bg = background.to(means).expand(B, 3) if background.dim() == 1 else background.to(means)
    if depth_moments:
        viewmats = cams.viewmats().to(means)
        z = (means @ viewmats[:, 2, :3].T).T + viewmats[:, 2, 3:4]  # [B,N] camera z
        per_view = colors if colors.dim() == 3 else colors[None].expand(B, *colors.shape)
        colors = torch.cat([per_view, (z * z)[..., None]], dim=-1)
        bg = torch.cat([bg, bg.new_zeros(B, 1)], dim=-1)
    render, alpha, meta = rasterization(
        means, quats, scales, opacities, colors,
        viewmats=cams.viewmats().to(means), Ks=cams.intrinsics().to(means),
        width=cams.width, height=cams.height,
        near_plane=NEAR_PLANE, eps2d=EPS2D, packed=False, absgrad=False,
        rasterize_mode="classic", render_mode="RGB+D", backgrounds=bg,
    )
    means2d = meta["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    extras = {"means2d": means2d, "radii": meta["radii"].amax(dim=-1), "backend": "cuda"}
    if depth_moments:
        extras["depth_sq"] = render[..., 3:4].permute(0, 3, 1, 2)
    return RenderOutput(
        rgb=render[..., :3].permute(0, 3, 1, 2),
        alpha=alpha.permute(0, 3, 1, 2),
        depth=render[..., -1:].permute(0, 3, 1, 2),
        extras=extras,
    )
