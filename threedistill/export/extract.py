"""Mesh extraction from a representation's field: marching cubes, cleanup, vertex colours.

A representation exports a mesh through a *field* (`core.geometry.Field`, from its
`as_field()`):

- `density(points [N,3]) -> [N]`: non-negative, larger inside the object (no gradient needed);
- `albedo(points [N,3]) -> [N,3]`: colour in [0,1];
- `render_alpha(cams) -> [B,1,H,W]` or None: its rendered opacity, used to calibrate the
  surface level (see below);
- `surface_level`: the level used when it cannot render (None when it can).

A NeRF's field is `NeRFField`; 3D Gaussians' is `GaussianField` (representations/gaussian_field.py).

The surface level
-----------------
`GaussianField.density` is the *composited opacity field*

    F(x) = 1 - prod_i (1 - a_i(x)),    a_i(x) = o_i exp(-0.5 (x - m_i)^T Sigma_i^-1 (x - m_i)).

Rule: the surface is the level set F = L whose solid {F >= L} has the same silhouettes as the
renders, i.e. L maximises, over `calibration_views` views, the IoU of "the pixel's ray meets
{F >= L}" with "the rendered alpha is >= 0.5" (the threshold `mask_iou` uses). Rays meet
{F >= L} exactly where the maximum of F along them is >= L, so the IoU of every level comes
out of one sort of the per-pixel ray maxima (trilinear grid samples half a voxel apart).

Why calibrate, and why 0.5 is the reference: on a ray x(t) = p + t r the exponent of a
Gaussian is a parabola, q_i(t) = q_i* + (t - t_i)^2 / v_i, whose minimum q_i* is the
Mahalanobis distance of the ray in the Gaussian's projected 2D covariance (exact for an
orthographic view; the EWA approximation the splat renderer makes for a perspective one).
So the largest value a_i takes on the ray is exactly the alpha the renderer composites for
that Gaussian at that pixel: for one Gaussian (or Gaussians that overlap where they are
dense, which F composites as the image does) the rendered-alpha-0.5 contour is the
silhouette of {F >= 0.5} from every view, and calibration finds L = 0.5 (tested: 0.49 for
an anisotropic Gaussian). But Gaussians trained by score distillation form a thin, leaky
shell: a ray grazing it crosses several Gaussians one after another, each below 0.5 in F,
whose alphas the image accumulates and F does not. F = 0.5 then lies inside the rendered
silhouette and leaves holes; the calibrated level is lower (0.26 for a shell of Gaussians
on a sphere, silhouette IoU 0.99 against 0.93 at 0.5; about 0.2 for a trained toyworld mug,
where it also minimised the chamfer distance to the true mesh among fixed levels).
A field that cannot render (`render_alpha` returns None) uses its `surface_level`;
`MeshExportConfig.level` overrides both.

Extraction: F (or any field's density) is sampled on a `resolution`^3 grid over
[-bound, bound]^3; by default the solid is closed by filling cavities no ray from outside
the grid can reach (Gaussians trained by score distillation often form a hollow shell, whose
inner wall is invisible in every render); marching cubes (scikit-image, Lewiner) at the level
gives an outward-oriented triangle mesh; connected components with fewer faces than
`min_component_fraction` of the largest are dropped (floaters); optional quadric decimation
(fast-simplification) reduces it to `decimate_faces`; vertex colours are the field's albedo.
World axes (z up) are kept here; the writers convert where a format wants y up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from ..core.errors import UserError
from ..core.geometry import Field, SurfaceMesh


@dataclass
class MeshExportConfig:
    """Mesh extraction (marching cubes) and mesh export settings."""

    resolution: int = 128
    """Grid points per axis over [-bound, bound]^3."""
    bound: float = 1.0
    level: Optional[float] = None
    """Density level of the surface; None: calibrated on silhouettes when the field can render
    its alpha, else the field's `surface_level` (see the module docstring)."""
    calibration_views: int = 12
    """Views (orbit, elevations 0/25/50 degrees, azimuths off the held-out ones) for calibration."""
    calibration_resolution: int = 96
    fill_interior: bool = True
    """Treat cavities unreachable from outside the grid as solid (removes a shell's inner wall)."""
    min_component_fraction: float = 0.05
    """Drop connected components with fewer faces than this fraction of the largest one."""
    decimate_faces: int = 0
    """Quadric decimation to about this many faces (0: keep the marching-cubes mesh)."""
    texture_size: int = 1024
    """Side of the baked texture (OBJ) in pixels."""
    texture_padding: int = 4
    """Texels the baked texture is dilated into the gutter around each UV chart."""
    chunk_points: int = 1 << 18
    """Points per field evaluation."""


# ---------------------------------------------------------------------- extraction
@torch.no_grad()
def sample_grid(density: Any, resolution: int, bound: float, chunk: int = 1 << 18) -> np.ndarray:
    """density at resolution^3 points of [-bound, bound]^3, indexed [x, y, z] -> float32 array."""
    axis = torch.linspace(-bound, bound, resolution)
    out = np.empty(resolution**3, np.float32)
    # one x-slab of points at a time keeps the point tensor small
    per_slab = resolution * resolution
    slabs = max(1, chunk // per_slab)
    yz = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    for i in range(0, resolution, slabs):
        xs = axis[i : i + slabs]
        pts = torch.cat([xs.repeat_interleave(per_slab)[:, None], yz.repeat(len(xs), 1)], 1)
        out[i * per_slab : (i + len(xs)) * per_slab] = density(pts).detach().float().cpu().reshape(-1).numpy()
    return out.reshape(resolution, resolution, resolution)


def fill_cavities(grid: np.ndarray, level: float) -> np.ndarray:
    """Raise the grid above `level` wherever no 6-connected path of sub-level voxels reaches the border."""
    from scipy import ndimage

    solid = grid >= level
    enclosed = ndimage.binary_fill_holes(solid) & ~solid
    if not enclosed.any():
        return grid
    out = grid.copy()
    out[enclosed] = max(float(grid.max()), level) + 1.0
    return out


def marching_cubes(grid: np.ndarray, level: float, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Outward-oriented triangles of {grid >= level}; the grid is padded so the surface is closed."""
    from skimage import measure

    res = grid.shape[0]
    h = 2.0 * bound / (res - 1)
    padded = np.pad(grid, 1, mode="constant", constant_values=min(float(grid.min()), level - 1.0))
    verts, faces, _, _ = measure.marching_cubes(padded, level, spacing=(h, h, h), allow_degenerate=False)
    # scikit-image orders faces clockwise seen along the descent gradient; flip to counter-clockwise outward
    return weld((verts - h - bound).astype(np.float32), faces[:, ::-1].astype(np.int64), 0.02 * h)


def weld(vertices: np.ndarray, faces: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices within about `tolerance` (same cell of a grid that fine) and drop faces that collapse.

    Marching cubes puts vertices almost on top of each other where the level is close to a grid
    value; the sliver triangles between them have no area to texture (xatlas leaves them unmapped).
    """
    if len(vertices) == 0:
        return vertices, faces
    keys = np.floor(vertices / tolerance).astype(np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    faces = inverse.reshape(-1)[faces]
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])
    return vertices[first], faces[keep]


def keep_large_components(vertices: np.ndarray, faces: np.ndarray, min_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Drop connected components with fewer faces than min_fraction of the largest; reindex vertices."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(faces) == 0:
        return vertices, faces
    if min_fraction > 0:
        V = len(vertices)
        edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
        graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(V, V))
        _, labels = connected_components(graph, directed=False)
        face_label = labels[faces[:, 0]]
        sizes = np.bincount(face_label)
        faces = faces[sizes[face_label] >= min_fraction * sizes.max()]
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces]


def decimate(vertices: np.ndarray, faces: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric edge-collapse decimation to about target_faces (no-op when already below it)."""
    if target_faces <= 0 or len(faces) <= target_faces:
        return vertices, faces
    try:
        from fast_simplification import simplify
    except ImportError:
        raise UserError("mesh decimation needs fast-simplification; `pip install fast-simplification` or set decimate_faces 0") from None
    v, f = simplify(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.int64), target_count=int(target_faces))
    return keep_large_components(np.asarray(v, np.float32), np.asarray(f, np.int64), 0.0)


def calibration_cameras(n: int, resolution: int) -> Any:
    """n orbit cameras at elevations 0/25/50 degrees, azimuths offset from the held-out cameras'."""
    from ..core.cameras import orbit_cameras

    az = torch.arange(n, dtype=torch.float32) * (360.0 / n) - 180.0 + 7.5
    el = torch.tensor([(0.0, 25.0, 50.0)[i % 3] for i in range(n)])
    return orbit_cameras(el, az, torch.full((n,), 2.8), torch.full((n,), 40.0), resolution, resolution)


def _render_alpha(field: Field, cams: Any) -> Optional[Tensor]:
    """The field's rendered alpha [B,1,H,W] on the CPU, or None when it cannot render."""
    alpha = field.render_alpha(cams)
    return None if alpha is None else alpha.detach().float().cpu()


@torch.no_grad()
def ray_maxima(grid: np.ndarray, bound: float, cams: Any, chunk_rays: int = 4096) -> Tensor:
    """Largest (trilinear) grid value along every pixel ray of `cams` -> [B*H*W], samples half a voxel apart."""
    res = grid.shape[0]
    vol = torch.from_numpy(np.ascontiguousarray(grid, np.float32))[None, None]  # [1,1,X,Y,Z]
    H, W = cams.height, cams.width
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)
    K_inv = torch.linalg.inv(cams.intrinsics().float().cpu())
    c2w = cams.c2w.float().cpu()
    dirs = torch.einsum("bij,bjk,pk->bpi", c2w[:, :3, :3], K_inv, pix)
    dirs = torch.nn.functional.normalize(dirs, dim=-1).reshape(-1, 3)
    origins = c2w[:, :3, 3].repeat_interleave(H * W, 0)
    half_diag = math.sqrt(3.0) * bound
    n_samples = int(math.ceil(2.0 * half_diag / (bound / (res - 1))))  # step: half a voxel
    t = torch.linspace(-half_diag, half_diag, n_samples)
    centre_t = -(origins * dirs).sum(-1, keepdim=True)  # closest approach to the origin
    out = torch.empty(dirs.shape[0])
    for i in range(0, dirs.shape[0], chunk_rays):
        o, d, t0 = origins[i : i + chunk_rays], dirs[i : i + chunk_rays], centre_t[i : i + chunk_rays]
        pts = o[:, None] + (t0 + t[None])[..., None] * d[:, None]  # [R,S,3]
        coords = (pts / bound).flip(-1)  # grid_sample wants (z, y, x) for a volume indexed [x, y, z]
        vals = torch.nn.functional.grid_sample(vol, coords[None, None], mode="bilinear", padding_mode="zeros", align_corners=True)
        out[i : i + chunk_rays] = vals.reshape(len(o), -1).amax(-1)
    return out


def best_iou_level(maxima: Tensor, target: Tensor) -> tuple[float, float]:
    """The level L maximising IoU({maxima >= L}, target) over all levels, and that IoU."""
    order = torch.argsort(maxima, descending=True)
    m, hit = maxima[order], target[order].float()
    tp, fp = hit.cumsum(0), (1.0 - hit).cumsum(0)
    iou = tp / (target.sum() + fp)
    last_of_tie = torch.ones_like(m, dtype=torch.bool)
    last_of_tie[:-1] = m[1:] < m[:-1]
    iou = torch.where(last_of_tie & (m > 0), iou, torch.full_like(iou, -1.0))
    k = int(iou.argmax())
    below = float(m[k + 1]) if k + 1 < len(m) else 0.0
    return 0.5 * (float(m[k]) + below), float(iou[k])


def calibrate_level(grid: np.ndarray, field: Field, config: MeshExportConfig) -> Optional[tuple[float, float]]:
    """(level, silhouette IoU) whose solid's silhouettes best match the field's renders; None if it cannot render."""
    cams = calibration_cameras(config.calibration_views, config.calibration_resolution)
    alpha = _render_alpha(field, cams)
    if alpha is None or not (alpha >= 0.5).any():
        return None
    maxima = ray_maxima(grid, config.bound, cams)
    if not (maxima > 0).any():
        return None
    return best_iou_level(maxima, alpha.reshape(-1) >= 0.5)


def resolve_level(field: Field, config: MeshExportConfig, grid: Optional[np.ndarray] = None) -> tuple[float, float]:
    """(level, silhouette IoU or nan): the configured level, a calibrated one, or the field's surface_level."""
    if config.level is not None:
        return float(config.level), math.nan
    if grid is not None and config.calibration_views > 0:
        calibrated = calibrate_level(grid, field, config)
        if calibrated is not None:
            return calibrated
    level = field.surface_level
    if level is None:
        raise UserError(f"{type(field).__name__} declares no surface_level and cannot render; pass a mesh level explicitly")
    return float(level), math.nan


@torch.no_grad()
def extract_mesh(field: Field, config: Optional[MeshExportConfig] = None) -> SurfaceMesh:
    """Marching-cubes mesh of a field's {density >= level}, cleaned, with albedo vertex colours."""
    config = config or MeshExportConfig()
    if config.resolution < 8:
        raise UserError(f"mesh resolution must be at least 8, got {config.resolution}")
    grid = sample_grid(field.density, config.resolution, config.bound, config.chunk_points)
    if not np.isfinite(grid).all():
        raise UserError("the field's density is not finite everywhere; the asset is broken (NaN parameters?)")
    level, iou = resolve_level(field, config, grid)
    if grid.max() < level:
        raise UserError(f"the field never reaches the surface level {level:g} (max {float(grid.max()):.3g}); "
                        "the asset is empty or the level is too high")
    if config.fill_interior:
        grid = fill_cavities(grid, level)
    vertices, faces = marching_cubes(grid, level, config.bound)
    vertices, faces = keep_large_components(vertices, faces, config.min_component_fraction)
    vertices, faces = decimate(vertices, faces, config.decimate_faces)
    colors = eval_chunked(field.albedo, vertices, config.chunk_points)
    return SurfaceMesh(vertices.astype(np.float32), faces.astype(np.int64), colors, level, iou)


@torch.no_grad()
def eval_chunked(fn: Any, points: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """fn(points) for numpy points [N,3], evaluated `chunk` points at a time -> float32 numpy."""
    pts = torch.from_numpy(np.ascontiguousarray(points, np.float32))
    outs = [fn(pts[i : i + chunk]).detach().float().cpu() for i in range(0, len(pts), chunk)]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 3), np.float32)
