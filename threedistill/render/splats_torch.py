"""Torch 3D Gaussian splat renderer (any device): EWA projection + tile-based compositing.

The math follows gsplat 1.5.3's "classic" mode so both backends agree:
- projection: camera-space covariance R S S^T R^T through the pinhole Jacobian (with
  gsplat's 1.3x-field-of-view clamp on the Jacobian), plus `EPS2D` on the 2D diagonal;
  conic = inverse 2D covariance;
- culling: camera z < `NEAR_PLANE`, opacity < 1/255, or a bounding box off the image. The
  box is gsplat's opacity-aware one, radius = ceil(k * sqrt(cov2d diagonal)) with
  k = min(3.33, sqrt(2 ln(255 opacity))): it holds every pixel where alpha >= 1/255;
- per pixel: alpha = min(0.999, opacity * exp(-0.5 d^T conic d)), d = pixel centre - mean,
  pixel centres at i + 0.5; alpha < 1/255 contributes nothing; front-to-back in depth order,
  a pixel stops before the Gaussian that would bring its transmittance to <= 1e-4.

`render_splats_dense` evaluates every pixel against every Gaussian with the plain formulas
(`gaussian_sigma`, `gaussian_alpha`, `composite`): it is the reference the tiled renderer is
tested against. `render_splats_torch` shares the projection, bins Gaussians into tiles and
composites chunks of tiles with a hand-written backward pass (render/splats_tiles.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from threedistill.core.cameras import Cameras
from threedistill.core.types import RenderOutput
from threedistill.render.splats_tiles import ALPHA_MAX, ALPHA_MIN, T_MIN, bin_gaussians, composite_tiles, untile

NEAR_PLANE = 0.01
EPS2D = 0.3
TILE_SIZE = 8
MEMORY_BUDGET_MB = 256.0
CHUNK_ELEMS = {"cpu": 1 << 18, "cuda": 1 << 23}  # tile x Gaussian x pixel entries per chunk (CPU: fits in cache)
_FLOATS_PER_ELEMENT = 12  # [tiles, K, pixels] float32 tensors alive at once in a chunk's backward


@dataclass
class Projected:
    """Gaussians projected into B views (all [B,N,...]); culled ones have radii 0."""

    means2d: Tensor  # [B,N,2] pixels
    conics: Tensor  # [B,N,3] (a, b, c): sigma = 0.5 (a dx^2 + c dy^2) + b dx dy
    depths: Tensor  # [B,N] camera z
    radii: Tensor  # [B,N,2] int32 pixel half-extents of the bounding box, 0 = culled

    @property
    def visible(self) -> Tensor:
        """[B,N] bool: the Gaussian reaches the image in that view."""
        return self.radii.amax(dim=-1) > 0


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [...,3,3] from wxyz quaternions [...,4] (normalised here)."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def project_gaussians(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, cams: Cameras,
    near_plane: float = NEAR_PLANE, eps2d: float = EPS2D,
) -> Projected:
    """EWA-project N Gaussians into every camera of `cams` (differentiable).

    means [N,3] / quats [N,4] / scales [N,3] are shared by the B views, or [B,N,...] per view
    (a 4D asset seen at each camera's time); opacities [N].
    """
    W, H = cams.width, cams.height
    viewmats = cams.viewmats().to(means)
    K = cams.intrinsics().to(means)
    R, t = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]  # [B,1,3,3], [B,1,3]
    means_c = (R @ _per_view(means)[..., None]).squeeze(-1) + t  # [B,N,3]
    x, y, z = means_c.unbind(-1)
    in_front = z > near_plane
    z = torch.where(in_front, z, torch.ones_like(z))  # keeps culled entries finite
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    # gsplat clamps the point used for the Jacobian to 1.3x the field of view.
    lim_x_pos, lim_x_neg = (W - cx) / fx + 0.15 * W / fx, cx / fx + 0.15 * W / fx
    lim_y_pos, lim_y_neg = (H - cy) / fy + 0.15 * H / fy, cy / fy + 0.15 * H / fy
    tx = z * torch.maximum(torch.minimum(x / z, lim_x_pos), -lim_x_neg)
    ty = z * torch.maximum(torch.minimum(y / z, lim_y_pos), -lim_y_neg)
    zeros = torch.zeros_like(z)
    J = torch.stack([fx / z, zeros, -fx * tx / z**2, zeros, fy / z, -fy * ty / z**2], -1).unflatten(-1, (2, 3))
    M = quat_to_rotmat(_per_view(quats)) * _per_view(scales)[..., None, :]  # [1 or B,N,3,3], covariance = M M^T
    JM = J @ (R @ M)  # [B,N,2,3]
    cov2d = JM @ JM.transpose(-1, -2) + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    c00, c01, c11 = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = c00 * c11 - c01 * c01
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c11 / det_safe, -c01 / det_safe, c00 / det_safe], dim=-1)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    radii = _radii(means2d.detach(), c00.detach(), c11.detach(), opacities.detach(), W, H)
    radii = torch.where((in_front & (det > 0))[..., None], radii, torch.zeros_like(radii))
    return Projected(means2d=means2d, conics=conics, depths=means_c[..., 2], radii=radii)


def _per_view(x: Tensor) -> Tensor:
    """[N,C] -> [1,N,C]; per-view [B,N,C] unchanged."""
    return x[None] if x.dim() == 2 else x


def _radii(means2d: Tensor, c00: Tensor, c11: Tensor, opacities: Tensor, W: int, H: int) -> Tensor:
    """gsplat's opacity-aware box half-extents [B,N,2] (int32), 0 when culled."""
    extend = torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp_max(3.33)
    r = torch.stack([torch.ceil(extend * c00.sqrt()), torch.ceil(extend * c11.sqrt())], dim=-1)
    mx, my = means2d.unbind(-1)
    inside = (mx + r[..., 0] > 0) & (mx - r[..., 0] < W) & (my + r[..., 1] > 0) & (my - r[..., 1] < H)
    keep = inside & (opacities >= ALPHA_MIN) & (r.amax(-1) > 0)
    return torch.where(keep[..., None], r, torch.zeros_like(r)).to(torch.int32)


def gaussian_sigma(px: Tensor, py: Tensor, means2d: Tensor, conics: Tensor) -> Tensor:
    """sigma = 0.5 d^T conic d [..., K, P] with d = pixel centre - mean.

    px, py: pixel centres [P]; means2d [..., K, 2]; conics [..., K, 3] as (a, b, c).
    """
    dx = px - means2d[..., 0:1]
    dy = py - means2d[..., 1:2]
    a, b, c = conics[..., 0:1], conics[..., 1:2], conics[..., 2:3]
    return torch.addcmul(dx * torch.addcmul(b * dy, 0.5 * a, dx), 0.5 * c * dy, dy)


def gaussian_alpha(sigma: Tensor, opacities: Tensor) -> Tensor:
    """alpha = min(0.999, opacity * exp(-sigma)) [..., K, P], 0 where below 1/255.

    (gsplat also skips sigma < 0, which a positive-definite conic only reaches by rounding.)
    """
    alpha = (opacities[..., None] * torch.exp(-sigma)).clamp_max(ALPHA_MAX)
    return F.threshold(alpha, ALPHA_MIN, 0.0)


def blend_weights(alpha: Tensor) -> tuple[Tensor, Tensor]:
    """Front-to-back weights w = alpha * T along dim -2, with gsplat's early stop.

    Returns (weights, transmittance before each Gaussian), both [..., K, P] and 0 after
    the stop: a pixel stops before the Gaussian that would bring T to <= 1e-4.
    """
    one_minus = 1.0 - alpha
    # T never grows, so the kept Gaussians (T after them > T_MIN) are a prefix; dividing
    # the thresholded T after by 1 - alpha gives T before them, and 0 from the stop on.
    t_excl = F.threshold(torch.cumprod(one_minus, dim=-2), T_MIN, 0.0) / one_minus
    return alpha * t_excl, t_excl


def composite(alpha: Tensor, feats: Tensor) -> tuple[Tensor, Tensor]:
    """Accumulated features [..., P, F] and final transmittance [..., P].

    alpha [..., K, P] in depth order, feats [..., K, F].
    """
    weights, _ = blend_weights(alpha)
    acc = torch.einsum("...kp,...kf->...pf", weights, feats)
    return acc, 1.0 - weights.sum(dim=-2)


def _features(colors: Tensor, proj: Projected, depth_moments: bool = False) -> Tensor:
    """Per-view features [B,N,4]: RGB and camera depth (and its square: [B,N,5] with `depth_moments`)."""
    B, N = proj.depths.shape
    colors = colors.expand(B, N, 3) if colors.dim() == 3 else colors[None].expand(B, N, 3)
    z = proj.depths[..., None]
    return torch.cat([colors, z, z * z] if depth_moments else [colors, z], dim=-1)


def _finish(acc: Tensor, trans: Tensor, background: Tensor, proj: Projected, backend: str) -> RenderOutput:
    """RenderOutput from accumulated features [B,H,W,4 or 5] and transmittance [B,H,W]."""
    B = acc.shape[0]
    bg = background.to(acc).expand(B, 3) if background.dim() == 1 else background.to(acc)
    rgb = acc[..., :3] + trans[..., None] * bg[:, None, None, :]
    means2d = proj.means2d
    if means2d.requires_grad:
        means2d.retain_grad()
    extras = {"means2d": means2d, "radii": proj.radii.amax(dim=-1), "backend": backend}
    if acc.shape[-1] > 4:
        extras["depth_sq"] = acc[..., 4][:, None]
    return RenderOutput(
        rgb=rgb.permute(0, 3, 1, 2),
        alpha=(1.0 - trans)[:, None],
        depth=acc[..., 3][:, None],
        extras=extras,
    )


def render_splats_dense(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    cams: Cameras, background: Tensor, depth_moments: bool = False,
) -> RenderOutput:
    """Naive reference renderer: every pixel against every Gaussian (memory B*N*H*W)."""
    proj = project_gaussians(means, quats, scales, opacities, cams)
    B, N = proj.depths.shape
    W, H = cams.width, cams.height
    order = torch.argsort(proj.depths.detach(), dim=1, stable=True)  # [B,N]
    pick = lambda t: torch.gather(t, 1, order[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
    opac = torch.where(proj.visible, opacities[None].expand(B, N), torch.zeros_like(proj.depths))
    opac = torch.gather(opac, 1, order)
    px = torch.arange(W, device=means.device, dtype=means.dtype).repeat(H) + 0.5
    py = torch.arange(H, device=means.device, dtype=means.dtype).repeat_interleave(W) + 0.5
    alpha = gaussian_alpha(gaussian_sigma(px, py, pick(proj.means2d), pick(proj.conics)), opac)
    acc, trans = composite(alpha, pick(_features(colors, proj, depth_moments)))
    return _finish(acc.view(B, H, W, -1), trans.view(B, H, W), background, proj, "dense")


def render_splats_torch(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    cams: Cameras, background: Tensor,
    tile_size: int = TILE_SIZE, memory_budget_mb: float = MEMORY_BUDGET_MB, chunk_elems: int | None = None,
    depth_moments: bool = False,
) -> RenderOutput:
    """Tile-based torch splat renderer, differentiable w.r.t. all Gaussian inputs.

    Tiles are composited in chunks of at most `chunk_elems` tile x Gaussian x pixel
    entries (default per device type). A chunk's per-pixel intermediates live only while it
    is composited, and those kept for the backward pass stay within `memory_budget_mb` (beyond
    it they are recomputed), so peak memory stays near the budget unless a single tile needs
    more (render/splats_tiles.py). `depth_moments` adds extras "depth_sq" (sum of weight x camera z^2).
    """
    proj = project_gaussians(means, quats, scales, opacities, cams)
    B, N = proj.depths.shape
    bins = bin_gaussians(proj, cams.width, cams.height, tile_size, opacities)
    feats = _features(colors, proj, depth_moments)
    table = torch.cat(
        [proj.means2d, proj.conics, opacities[None, :, None].expand(B, N, 1), feats], dim=-1
    ).reshape(B * N, 6 + feats.shape[-1])
    padding = torch.zeros_like(table[:1])
    padding[:, 2] = padding[:, 4] = 1.0  # unit conic, zero opacity
    table = torch.cat([table, padding])  # row B * N pads short tile lists
    max_elems = _chunk_elems(memory_budget_mb, chunk_elems, means.device)
    acc, trans = composite_tiles(table, bins, tile_size, max_elems, memory_budget_mb * 2**20)
    acc = untile(acc, bins, B, cams.height, cams.width)
    trans = untile(trans[..., None], bins, B, cams.height, cams.width)[..., 0]
    return _finish(acc, trans, background, proj, "torch")


def _chunk_elems(memory_budget_mb: float, chunk_elems: int | None, device: torch.device) -> int:
    """Chunk size in tile x Gaussian x pixel entries under the memory budget."""
    if chunk_elems is None:
        chunk_elems = CHUNK_ELEMS.get(device.type, CHUNK_ELEMS["cuda"])
    return max(1, min(chunk_elems, int(memory_budget_mb * 2**20 / (4 * _FLOATS_PER_ELEMENT))))
