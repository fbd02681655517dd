"""nerfacc (CUDA) volume rendering, and the choice between it and the torch backend.

Backends (DESIGN.md section 6): "cuda" = nerfacc's `OccGridEstimator.sampling` (fused ray
marching through the occupancy grid with early stopping) + packed compositing, "torch" =
render/volume_torch.py (any device), "auto" = nerfacc when the tensors are on CUDA and its
extension loads, else torch.

The occupancy grid is the representation's own `OccupancyGrid` (nerfacc's cell layout); its
binary grid is copied into a cached `OccGridEstimator` before each render, so both backends
skip the same cells. nerfacc marches with a fixed step of 2 * bound / samples_per_ray, the
torch backend splits each ray's chord into samples_per_ray intervals: the two agree up to
sampling noise, not bit for bit.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch
from torch import Tensor

from threedistill.core.cameras import Cameras
from .backend import resolve_backend
from threedistill.core.types import RenderOutput
from threedistill.render.volume_torch import NEAR_PLANE, OccupancyGrid, RadianceField, camera_rays



@functools.lru_cache(maxsize=None)
def nerfacc_status() -> tuple[bool, str]:
    """(usable, reason): whether nerfacc's CUDA extension loads here. Tried once, cached."""
    if not torch.cuda.is_available():
        return False, "no CUDA device is available to torch"
    try:
        from nerfacc.cuda._backend import _C  # builds (JIT) or loads the extension
    except (ImportError, OSError, RuntimeError) as err:
        return False, f"nerfacc's CUDA extension failed to load: {type(err).__name__}: {err}".splitlines()[0]
    if _C is None:
        return False, "nerfacc's CUDA extension is not built and no CUDA toolkit (nvcc) was found to build it"
    return True, "ok"


def resolve_volume_backend(name: str, device: torch.device | str) -> str:
    """The concrete backend ("cuda" or "torch") that `name` selects for tensors on `device`."""
    return resolve_backend(name, device, nerfacc_status, "nerfacc", "volume rendering")


def _estimator(occupancy: Optional[OccupancyGrid], bound: float, device: torch.device) -> Any:
    """A cached OccGridEstimator over [-bound, bound]^3 holding the current binary grid."""
    from nerfacc import OccGridEstimator

    holder: Any = occupancy if occupancy is not None else _estimator
    G = occupancy.resolution if occupancy is not None else 1
    key = f"_nerfacc_estimator_{G}_{bound}_{device}"
    est = holder.__dict__.get(key)  # a plain attribute: never part of a state_dict
    if est is None:
        est = OccGridEstimator(roi_aabb=[-bound] * 3 + [bound] * 3, resolution=G, levels=1).to(device)
        est.binaries.fill_(True)
        holder.__dict__[key] = est
    if occupancy is not None:
        est.binaries.copy_(occupancy.binary[None])
        est.occs.copy_(occupancy.occs)  # sampling caps alpha_thre at their mean
    return est


def render_volume_nerfacc(
    field: RadianceField, cams: Cameras, background: Tensor, *, bound: float, samples_per_ray: int,
    occupancy: Optional[OccupancyGrid] = None, stratified: bool = False, early_stop_eps: float = 1e-4,
    alpha_threshold: float = 0.0, keep_samples: bool = False, depth_moments: bool = False,
) -> RenderOutput:
    """Render with nerfacc's occupancy-grid marching and packed compositing (CUDA only).

    Same outputs as `render_volume_torch` (extras "backend" = "cuda").
    """
    from nerfacc.volrend import accumulate_along_rays, render_weight_from_density

    B, H, W = len(cams), cams.height, cams.width
    origins, dirs, z_scale = camera_rays(cams)
    origins, dirs = origins.reshape(-1, 3).contiguous(), dirs.reshape(-1, 3).contiguous()
    n_rays = origins.shape[0]
    est = _estimator(occupancy, bound, origins.device)

    def points_of(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        return origins[ray_indices] + dirs[ray_indices] * ((t_starts + t_ends) * 0.5)[:, None]

    def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        return field.density(points_of(t_starts, t_ends, ray_indices))

    use_sigma = early_stop_eps > 0 or alpha_threshold > 0
    ray_indices, t_starts, t_ends = est.sampling(
        origins, dirs, sigma_fn=sigma_fn if use_sigma else None, near_plane=NEAR_PLANE,
        render_step_size=2.0 * bound / samples_per_ray, early_stop_eps=early_stop_eps,
        alpha_thre=alpha_threshold, stratified=stratified,
    )
    ray_indices = ray_indices.long()
    points = points_of(t_starts, t_ends, ray_indices)
    sigmas, rgbs = field.query(points)  # called even for no samples: keeps the graph connected
    weights, _, _ = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices=ray_indices, n_rays=n_rays)
    rgb = accumulate_along_rays(weights, values=rgbs, ray_indices=ray_indices, n_rays=n_rays)
    alpha = accumulate_along_rays(weights, values=None, ray_indices=ray_indices, n_rays=n_rays)
    t_exp = accumulate_along_rays(weights, values=((t_starts + t_ends) * 0.5)[:, None], ray_indices=ray_indices, n_rays=n_rays)
    rgb, alpha = rgb.view(B, H, W, -1), alpha.view(B, H, W)  # 3 channels, or a latent field's
    depth = t_exp.view(B, H, W) * z_scale
    bg = background.to(rgb).expand(B, -1) if background.dim() == 1 else background.to(rgb)
    rgb = rgb + (1.0 - alpha[..., None]) * bg[:, None, None, :]
    extras: dict[str, Any] = {"samples": int(ray_indices.numel()), "backend": "cuda"}
    if depth_moments:
        mid = ((t_starts + t_ends) * 0.5)[:, None]
        t2 = accumulate_along_rays(weights, values=mid * mid, ray_indices=ray_indices, n_rays=n_rays)
        extras["depth_sq"] = (t2.view(B, H, W) * z_scale * z_scale)[:, None]
    if keep_samples:
        extras.update({"sample_points": points.detach(), "sample_weights": weights, "sample_dirs": dirs[ray_indices]})
    return RenderOutput(rgb=rgb.permute(0, 3, 1, 2), alpha=alpha[:, None], depth=depth[:, None], extras=extras)
