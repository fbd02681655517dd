"""Torch volume rendering (any device): rays, dense sampling, occupancy skipping, compositing.

A radiance field is anything with `density(points [M,3]) -> sigma [M]` and
`query(points [M,3]) -> (sigma [M], rgb [M,3])` (post-activation). Rendering a batch of
cameras:

1. one ray per pixel centre (i + 0.5), OpenCV camera axes, clipped to the box
   [-bound, bound]^3 (slab test);
2. `samples_per_ray` equal intervals between the entry and exit points; the sample sits at
   the interval's middle, or at a uniformly jittered place in it when `stratified`;
3. samples in empty cells of the binary occupancy grid are skipped (density 0, the field is
   not evaluated there); a ray that misses the box around the occupied cells is not marched at
   all (all its samples would be skipped; its offsets are still drawn, so results are equal);
4. with `early_stop_eps` > 0, a no-grad pass over the remaining samples finds those behind an
   opaque surface (transmittance below the threshold) or nearly transparent (alpha below
   `alpha_threshold`) and skips them too: they would add (almost) nothing to the image;
5. the field is evaluated at the kept samples with gradients, scattered back into dense
   [rays, samples] tensors and composited with nerfacc's dense rendering-weight function
   (`nerfacc.volrend.render_weight_from_density`, plain torch for unpacked inputs).

Depth is the expected camera z (sum of weight x camera z, not divided by alpha), as the
splat backends report it. Without gradients the rays are processed in chunks so that large
renders (turntables) stay within memory.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from threedistill.core.cameras import Cameras
from threedistill.core.types import RenderOutput

NEAR_PLANE = 0.01
CHUNK_RAYS = 8192


class RadianceField(Protocol):
    def density(self, points: Tensor) -> Tensor: ...

    def query(self, points: Tensor) -> tuple[Tensor, Tensor]: ...


# ---------------------------------------------------------------------- rays
def camera_rays(cams: Cameras) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pixel rays: origins [B,H,W,3], unit world directions [B,H,W,3] and z_scale [B,H,W],
    the camera z gained per unit of distance along the ray (depth = t * z_scale)."""
    B, H, W = len(cams), cams.height, cams.width
    dev, dt = cams.device, cams.c2w.dtype
    f = cams.focal.to(dt)[:, None, None]
    v, u = torch.meshgrid(torch.arange(H, device=dev, dtype=dt) + 0.5, torch.arange(W, device=dev, dtype=dt) + 0.5, indexing="ij")
    x = (u - 0.5 * W) / f  # [B,H,W]
    y = (v - 0.5 * H) / f
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [B,H,W,3]
    norm = d_cam.norm(dim=-1)
    R = cams.c2w[:, :3, :3]
    dirs = torch.einsum("bij,bhwj->bhwi", R, d_cam) / norm[..., None]
    origins = cams.c2w[:, None, None, :3, 3].expand(B, H, W, 3)
    return origins, dirs, 1.0 / norm


def slab_interval(origins: Tensor, dirs: Tensor, lo: Tensor | float, hi: Tensor | float, near: float = NEAR_PLANE) -> tuple[Tensor, Tensor]:
    """Slab test against the box [lo, hi] (corners [3] or one number per axis): the distances t_near, t_far [R]
    where each ray [R,3] enters and leaves it (t_near at least `near`; the ray misses it when t_far < t_near)."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    inv = 1.0 / safe
    t0, t1 = (lo - origins) * inv, (hi - origins) * inv
    return torch.minimum(t0, t1).amax(dim=-1).clamp_min(near), torch.maximum(t0, t1).amin(dim=-1)


def ray_box_intersect(origins: Tensor, dirs: Tensor, bound: float, near: float = NEAR_PLANE) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test against [-bound, bound]^3: t_near, t_far [R] and hit [R] (bool)."""
    t_near, t_far = slab_interval(origins, dirs, -bound, bound, near)
    return t_near, t_far, t_far > t_near


def sample_offsets(rays: int, n: int, stratified: bool, generator: Optional[torch.Generator], like: Tensor) -> Tensor:
    """Where each of a ray's n samples sits in its interval [R,n]: uniform draws when `stratified`, else 0.5."""
    if stratified:
        return torch.rand((rays, n), generator=generator, dtype=like.dtype).to(like.device)
    return torch.full((rays, n), 0.5, dtype=like.dtype, device=like.device)


def sample_intervals(t_near: Tensor, t_far: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """n = offsets.shape[1] equal intervals per ray: t_starts, t_ends and sample positions t [R,n], each at its
    offset [R,n] (`sample_offsets`) within its interval."""
    n = offsets.shape[1]
    steps = torch.linspace(0.0, 1.0, n + 1, device=t_near.device, dtype=t_near.dtype)
    edges = t_near[:, None] + (t_far - t_near)[:, None] * steps  # [R,n+1]
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    return t_starts, t_ends, t_starts + (t_ends - t_starts) * offsets


# ---------------------------------------------------------------------- occupancy
class OccupancyGrid(nn.Module):
    """A binary occupancy grid over [-bound, bound]^3 in nerfacc's OccGridEstimator layout
    (cell index x*G^2 + y*G + z), kept up to date from the field's density with an EMA:

        occ  <- max(decay * occ, density(jittered cell point) * step_size)
        binary = occ > min(threshold, mean(occ)), then dilated by `dilate` cells.

    `step_size` converts density to an opacity-like value (nerfacc's occ_eval_fn convention).
    Dilation lets the surface grow outward: a cell next to an occupied one is still sampled.
    """

    occs: Tensor  # [G^3] EMA of density x step size
    binary: Tensor  # [G,G,G] bool
    updates: Tensor  # [] long

    def __init__(self, resolution: int, bound: float, threshold: float = 0.01, decay: float = 0.95, dilate: int = 1) -> None:
        super().__init__()
        self.resolution, self.bound = int(resolution), float(bound)
        self.threshold, self.decay, self.dilate = threshold, decay, int(dilate)
        G = self.resolution
        self.register_buffer("occs", torch.zeros(G**3))
        self.register_buffer("binary", torch.ones(G, G, G, dtype=torch.bool))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._box: Optional[tuple[Tensor, Tensor]] = None
        self._box_known = False  # `_box` holds the occupied box of the current `binary`

    def cell_index(self, points: Tensor) -> Tensor:
        """Flat cell index [...] of points [...,3] (clamped into the grid)."""
        G = self.resolution
        ijk = ((points + self.bound) * (G / (2.0 * self.bound))).long().clamp(0, G - 1)
        return (ijk[..., 0] * G + ijk[..., 1]) * G + ijk[..., 2]

    def query(self, points: Tensor) -> Tensor:
        """Occupied [...] for points [...,3]."""
        return self.binary.view(-1)[self.cell_index(points)]

    def cell_centres(self) -> Tensor:
        G = self.resolution
        r = torch.arange(G, device=self.occs.device, dtype=torch.float32)
        ijk = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).view(-1, 3)
        return ijk

    @torch.no_grad()
    def update(self, density_fn, step_size: float, generator: Optional[torch.Generator] = None, fraction: float = 1.0, chunk: int = 1 << 16) -> None:
        """Re-evaluate the density at one jittered point in (a random `fraction` of) the
        cells, plus every occupied cell, and rebuild the binary grid."""
        G = self.resolution
        ijk = self.cell_centres()
        idx = torch.arange(G**3, device=ijk.device)
        if fraction < 1.0:
            pick = torch.rand(G**3, generator=generator).to(ijk.device) < fraction
            idx = idx[pick | self.binary.view(-1)]
            ijk = ijk[idx]
        jitter = torch.rand(ijk.shape, generator=generator).to(ijk.device)
        points = (ijk + jitter) * (2.0 * self.bound / G) - self.bound
        dens = torch.cat([density_fn(points[i : i + chunk]) for i in range(0, points.shape[0], chunk)])
        self.occs[idx] = torch.maximum(self.occs[idx] * self.decay, dens * step_size)
        self.rebuild()
        self.updates += 1

    def rebuild(self) -> None:
        """binary from occs (threshold and dilation)."""
        G = self.resolution
        thre = min(self.threshold, float(self.occs.mean()))
        binary = (self.occs > thre).view(1, 1, G, G, G).float()
        if self.dilate > 0:
            k = 2 * self.dilate + 1
            binary = F.max_pool3d(binary, kernel_size=k, stride=1, padding=self.dilate)
        self.binary = binary.view(G, G, G) > 0.5
        self._box_known = False

    def fill(self) -> None:
        """Mark every cell occupied (as before the first update)."""
        self.binary.fill_(True)
        self._box_known = False

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._box_known = False

    def occupied_box(self) -> Optional[tuple[Tensor, Tensor]]:
        """The smallest axis-aligned box (lo [3], hi [3], world units) holding every occupied cell, grown by half a
        cell; None when no cell is occupied. A sample outside it lies in an empty cell. Kept until `binary` changes."""
        if not self._box_known:
            self._box, self._box_known = self._find_occupied_box(), True
        return self._box

    def _find_occupied_box(self) -> Optional[tuple[Tensor, Tensor]]:
        cell = 2.0 * self.bound / self.resolution
        occupied = [self.binary.any(dim=d) for d in ((1, 2), (0, 2), (0, 1))]  # per axis [G]
        if not bool(occupied[0].any()):
            return None
        first = torch.stack([o.nonzero()[0, 0] for o in occupied]).to(torch.float32)
        last = torch.stack([o.nonzero()[-1, 0] for o in occupied]).to(torch.float32)
        return first * cell - self.bound - 0.5 * cell, (last + 1.0) * cell - self.bound + 0.5 * cell


# ---------------------------------------------------------------------- compositing
def composite(t_starts: Tensor, t_ends: Tensor, t_mid: Tensor, sigmas: Tensor, rgbs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Dense front-to-back compositing: rgb [R,3], alpha [R], distance-weighted t [R], weights [R,n]."""
    from nerfacc.volrend import render_weight_from_density

    weights, _, _ = render_weight_from_density(t_starts, t_ends, sigmas)
    rgb = (weights[..., None] * rgbs).sum(dim=-2)
    return rgb, weights.sum(dim=-1), (weights * t_mid).sum(dim=-1), weights


@torch.no_grad()
def visible_samples(field: RadianceField, points: Tensor, mask: Tensor, dt: Tensor, early_stop_eps: float, alpha_threshold: float) -> Tensor:
    """Refine `mask` [R,n]: drop samples behind opaque matter (transmittance < eps) and
    nearly transparent ones (alpha < alpha_threshold), judged from a no-grad density pass."""
    sig = torch.zeros(mask.shape, device=points.device, dtype=points.dtype)
    sig[mask] = field.density(points[mask])
    sdt = sig * dt
    trans = torch.exp(-(torch.cumsum(sdt, dim=-1) - sdt))
    keep = mask & (trans > early_stop_eps)
    if alpha_threshold > 0:
        keep &= (1.0 - torch.exp(-sdt)) >= alpha_threshold
    return keep


def rays_through_box(origins: Tensor, dirs: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Which rays [R] (bool) pass through (or touch) the box [lo, hi], in front of the near plane."""
    t_near, t_far = slab_interval(origins, dirs, lo.to(origins), hi.to(origins))
    return t_far >= t_near


def _render_rays(
    field: RadianceField, origins: Tensor, dirs: Tensor, bound: float, samples_per_ray: int,
    occupancy: Optional[OccupancyGrid], stratified: bool, generator: Optional[torch.Generator],
    early_stop_eps: float, alpha_threshold: float, keep_samples: bool = False, depth_moments: bool = False,
) -> dict[str, Tensor]:
    """Render R rays [R,3] (see `_march_rays`), marching only those that pass through the occupancy grid's occupied
    box: every sample of any other ray is in an empty cell, so it renders nothing, exactly as when marched (the
    sample offsets are drawn for every ray, so the random stream is the same)."""
    R = origins.shape[0]
    offsets = sample_offsets(R, samples_per_ray, stratified, generator, origins)
    box = occupancy.occupied_box() if occupancy is not None else None
    if occupancy is None or (box is not None and bool((box[0] <= -bound).all() and (box[1] >= bound).all())):
        return _march_rays(field, origins, dirs, offsets, bound, occupancy, early_stop_eps, alpha_threshold, keep_samples, depth_moments)
    rays = rays_through_box(origins, dirs, *box).nonzero().squeeze(1) if box is not None else origins.new_zeros(0, dtype=torch.long)
    marched = _march_rays(field, origins[rays], dirs[rays], offsets[rays], bound, occupancy, early_stop_eps, alpha_threshold,
                          keep_samples, depth_moments)
    result = {"samples": marched["samples"]}
    for key in ("rgb", "alpha", "t", "t2"):
        if key in marched:
            value = marched[key]
            result[key] = value.new_zeros((R, *value.shape[1:])).index_put((rays,), value)
    if keep_samples:
        result["sample_points"], result["sample_weights"], result["sample_dirs"] = (
            marched["sample_points"], marched["sample_weights"], marched["sample_dirs"])
    return result


def _march_rays(
    field: RadianceField, origins: Tensor, dirs: Tensor, offsets: Tensor, bound: float,
    occupancy: Optional[OccupancyGrid], early_stop_eps: float, alpha_threshold: float, keep_samples: bool = False,
    depth_moments: bool = False,
) -> dict[str, Tensor]:
    """March R rays [R,3] with n = offsets.shape[1] samples each (at `offsets` [R,n] within equal intervals): rgb
    [R,C] (not composited), alpha [R], t (weight x distance) [R], the kept-sample count and, with `keep_samples`,
    the kept samples' points, weights and ray directions (for regularisers)."""
    R, samples_per_ray = offsets.shape
    t_near, t_far, hit = ray_box_intersect(origins, dirs, bound)
    t_far = torch.where(hit, t_far, t_near)
    t_starts, t_ends, t_mid = sample_intervals(t_near, t_far, offsets)
    points = origins[:, None, :] + dirs[:, None, :] * t_mid[..., None]  # [R,n,3]
    mask = hit[:, None].expand(R, samples_per_ray).clone()
    if occupancy is not None:
        mask &= occupancy.query(points)
    if early_stop_eps > 0 or alpha_threshold > 0:
        if mask.any():
            mask = visible_samples(field, points, mask, t_ends - t_starts, early_stop_eps, alpha_threshold)
    flat = mask.view(-1).nonzero().squeeze(1)
    sig_k, rgb_k = field.query(points.view(-1, 3)[flat])
    sigmas = torch.zeros(R * samples_per_ray, device=points.device, dtype=sig_k.dtype).index_put((flat,), sig_k)
    C = rgb_k.shape[-1]  # 3, or a latent field's channels
    rgbs = torch.zeros(R * samples_per_ray, C, device=points.device, dtype=rgb_k.dtype).index_put((flat,), rgb_k)
    rgb, alpha, t_exp, weights = composite(t_starts, t_ends, t_mid, sigmas.view(R, samples_per_ray), rgbs.view(R, samples_per_ray, C))
    result = {"rgb": rgb, "alpha": alpha, "t": t_exp, "samples": torch.tensor(flat.numel())}
    if depth_moments:
        result["t2"] = (weights * t_mid * t_mid).sum(dim=-1)
    if keep_samples:
        result["sample_points"] = points.view(-1, 3)[flat]
        result["sample_weights"] = weights.view(-1)[flat]
        result["sample_dirs"] = dirs[flat // samples_per_ray]
    return result


def render_volume_torch(
    field: RadianceField, cams: Cameras, background: Tensor, *, bound: float, samples_per_ray: int,
    occupancy: Optional[OccupancyGrid] = None, stratified: bool = False, generator: Optional[torch.Generator] = None,
    early_stop_eps: float = 1e-4, alpha_threshold: float = 0.0, chunk_rays: int = CHUNK_RAYS,
    keep_samples: bool = False, depth_moments: bool = False,
) -> RenderOutput:
    """Render the B cameras of `cams` through `field` (see the module docstring).

    background [C] or [B,C] (C = the field's channels: 3, or a latent field's). Returns rgb composited on it, alpha, depth (expected camera z,
    not divided by alpha) and extras "samples" (field evaluations with gradient),
    "backend" = "torch" and, with `keep_samples` (one chunk only, i.e. with gradients),
    "sample_points" [K,3], "sample_weights" [K] and "sample_dirs" [K,3]; with `depth_moments`,
    "depth_sq" [B,1,H,W] (sum of weight x camera z^2, for the z-variance regulariser).
    """
    B, H, W = len(cams), cams.height, cams.width
    origins, dirs, z_scale = camera_rays(cams)
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    n = origins.shape[0]
    step = n if torch.is_grad_enabled() else max(int(chunk_rays), 1)
    parts = [
        _render_rays(field, origins[i : i + step], dirs[i : i + step], bound, samples_per_ray, occupancy,
                     stratified, generator, early_stop_eps, alpha_threshold, keep_samples, depth_moments)
        for i in range(0, n, step)
    ]
    rgb = torch.cat([p["rgb"] for p in parts]).view(B, H, W, -1)
    alpha = torch.cat([p["alpha"] for p in parts]).view(B, H, W)
    depth = torch.cat([p["t"] for p in parts]).view(B, H, W) * z_scale
    bg = background.to(rgb).expand(B, -1) if background.dim() == 1 else background.to(rgb)
    rgb = rgb + (1.0 - alpha[..., None]) * bg[:, None, None, :]
    extras: dict = {"samples": int(sum(int(p["samples"]) for p in parts)), "backend": "torch"}
    if depth_moments:
        extras["depth_sq"] = (torch.cat([p["t2"] for p in parts]).view(B, H, W) * z_scale * z_scale)[:, None]
    if keep_samples and len(parts) == 1:
        extras.update({k: parts[0][k] for k in ("sample_points", "sample_weights", "sample_dirs")})
    return RenderOutput(rgb=rgb.permute(0, 3, 1, 2), alpha=alpha[:, None], depth=depth[:, None], extras=extras)
