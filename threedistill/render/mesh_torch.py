"""A vectorised torch triangle-mesh rasteriser with flat Lambertian shading.

Each triangle is projected with the cameras' pinhole intrinsics and tested against the pixel
centres (i + 0.5) inside its screen bounding box. All (triangle, pixel) candidate pairs of all
cameras are enumerated at once, in chunks of bounded size, and a z-buffer keeps the nearest
surface per pixel (a packed int64 key: float depth bits, then triangle index, so ties break
deterministically). A second, differentiable pass evaluates the winners: colours get exact
gradients, vertices get gradients through the perspective-correct depth and face normals
(silhouette edges are not differentiable). Triangles with a vertex behind the near plane are
dropped (toyworld cameras never get that close).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from threedistill.cameras import Cameras
from threedistill.render.types import RenderOutput

NEAR = 1e-2
"""Triangles with any vertex closer than this (camera z) are not drawn."""

PAIRS_PER_CHUNK = 1 << 20
"""Candidate (triangle, pixel) pairs evaluated at once; bounds the working memory to ~100 MB."""

_EMPTY = torch.iinfo(torch.int64).max


def mesh_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Unit face normals [F,3] (right-hand rule over each face's vertex order)."""
    tri = vertices[faces]
    n = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    return F.normalize(n, dim=-1)


def lambert_shading(vertices: Tensor, faces: Tensor, light_dir: Sequence[float] | Tensor, ambient: float) -> Tensor:
    """Two-sided Lambertian factor per face [F]: ambient + (1 - ambient) * |n . l|."""
    light = F.normalize(torch.as_tensor(light_dir, dtype=vertices.dtype, device=vertices.device).reshape(3), dim=0)
    return ambient + (1.0 - ambient) * (mesh_normals(vertices, faces) @ light).abs()


def _project(vertices: Tensor, faces: Tensor, cams: Cameras) -> tuple[Tensor, Tensor]:
    """Screen positions [B,F,3,2] (pixels) and camera-z [B,F,3] of every triangle corner."""
    w2c = cams.viewmats().to(vertices.dtype)
    cam = torch.einsum("bij,vj->bvi", w2c[:, :3, :3], vertices) + w2c[:, None, :3, 3]
    K = cams.intrinsics().to(vertices.dtype)
    z = cam[..., 2]
    safe_z = torch.where(z > NEAR, z, torch.ones_like(z))
    uv = cam[..., :2] / safe_z[..., None] * K[:, None, [0, 1], [0, 1]] + K[:, None, [0, 1], [2, 2]]
    return uv[:, faces], z[:, faces]


def _edge(o: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """Signed double area of the 2D triangles (o, s, t) [...]."""
    return (s[..., 0] - o[..., 0]) * (t[..., 1] - o[..., 1]) - (s[..., 1] - o[..., 1]) * (t[..., 0] - o[..., 0])


def _barycentrics(tri_uv: Tensor, p: Tensor) -> Tensor:
    """Screen-space barycentric weights [N,3] of points p [N,2] in triangles tri_uv [N,3,2]."""
    a, b, c = tri_uv.unbind(-2)
    w = torch.stack([_edge(b, c, p), _edge(c, a, p), _edge(a, b, p)], dim=-1)
    return w / _edge(a, b, c)[..., None]


def _interp_depth(w: Tensor, z: Tensor) -> Tensor:
    """Perspective-correct camera-z from screen barycentrics w [N,3] and corner depths z [N,3]."""
    return 1.0 / (w / z).sum(-1)


def _pixel_bounds(uv: Tensor, width: int, height: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """First pixel column/row and counts of the pixel centres inside each triangle's box."""
    lo = torch.ceil(uv.amin(-2) - 0.5)
    hi = torch.floor(uv.amax(-2) - 0.5)
    x0 = lo[:, 0].clamp(0, width).long()
    y0 = lo[:, 1].clamp(0, height).long()
    nx = (hi[:, 0].clamp(-1, width - 1).long() - x0 + 1).clamp(min=0)
    ny = (hi[:, 1].clamp(-1, height - 1).long() - y0 + 1).clamp(min=0)
    return x0, y0, nx, ny


def _chunks(counts: Tensor, budget: int) -> list[tuple[int, int]]:
    """Split consecutive items into runs whose counts sum to at most `budget` (or one item)."""
    cum = torch.cumsum(counts, 0)
    runs, start, n = [], 0, counts.numel()
    while start < n:
        base = int(cum[start - 1]) if start > 0 else 0
        end = int(torch.searchsorted(cum, torch.tensor(base + budget, device=cum.device), right=True))
        end = max(end, start + 1)
        runs.append((start, end))
        start = end
    return runs


@torch.no_grad()
def _zbuffer(uv: Tensor, z: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Index (b*F + f) of the nearest triangle at every pixel [B*H*W], -1 where empty.

    uv [B,F,3,2] and z [B,F,3] are the projected triangles of all cameras.
    """
    B, H, W = shape
    n_faces = uv.shape[1]
    uv, z = uv.reshape(-1, 3, 2), z.reshape(-1, 3)
    x0, y0, nx, ny = _pixel_bounds(uv, W, H)
    area = _edge(uv[:, 0], uv[:, 1], uv[:, 2])
    keep = (z.amin(-1) > NEAR) & (area.abs() > 1e-9) & (nx > 0) & (ny > 0)
    tri = torch.nonzero(keep).squeeze(1)
    counts = nx[tri] * ny[tri]
    keys = torch.full((B * H * W,), _EMPTY, dtype=torch.int64, device=uv.device)
    for start, end in _chunks(counts, PAIRS_PER_CHUNK):
        t_local = torch.repeat_interleave(torch.arange(end - start, device=uv.device), counts[start:end])
        t = tri[start:end][t_local]
        first = torch.cumsum(counts[start:end], 0) - counts[start:end]
        offset = torch.arange(t.numel(), device=uv.device) - first[t_local]
        px = x0[t] + offset % nx[t]
        py = y0[t] + offset // nx[t]
        centre = torch.stack([px, py], -1).to(uv.dtype) + 0.5
        w = _barycentrics(uv[t], centre)
        inside = (w >= 0).all(-1)
        t, px, py, w = t[inside], px[inside], py[inside], w[inside]
        depth = _interp_depth(w, z[t]).float()
        key = (depth.view(torch.int32).long() << 32) | t
        pixel = (t // n_faces) * (H * W) + py * W + px
        keys.scatter_reduce_(0, pixel, key, reduce="amin")
    return torch.where(keys == _EMPTY, -1, keys & 0xFFFFFFFF)


def _as_background(background: Tensor | Sequence[float], like: Tensor) -> Tensor:
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    return bg.view(1, 3, 1, 1) if bg.dim() == 1 else bg


def render_mesh(
    vertices: Tensor,
    faces: Tensor,
    face_colors: Tensor,
    cams: Cameras,
    *,
    light_dir: Sequence[float] | Tensor = (0.4, 0.3, 0.85),
    ambient: float = 0.35,
    background: Tensor | Sequence[float] = (1.0, 1.0, 1.0),
    supersample: int = 2,
) -> RenderOutput:
    """Render a flat-shaded triangle mesh from every camera.

    vertices [V,3] (world), faces [F,3] (long), face_colors [F,3] in [0,1]. Shading is
    two-sided Lambertian under a fixed world light. The image is rendered at `supersample`
    times the resolution and average-pooled, so alpha is fractional along edges; rgb is
    composited on `background` and depth is the camera-z of the visible surface (0 where empty).
    extras["face_index"] [B,Hs,Ws]: visible face per supersampled pixel (-1 where empty).
    """
    k = int(supersample)
    B, H, W = len(cams), cams.height * k, cams.width * k
    faces = faces.long()
    n_faces = max(faces.shape[0], 1)
    uv, z = _project(vertices, faces, cams.with_size(cams.width * k, cams.height * k))
    winner = _zbuffer(uv.detach(), z.detach(), (B, H, W))

    pixel = torch.nonzero(winner >= 0).squeeze(1)
    tri = winner[pixel]
    face = tri % n_faces
    py, px = (pixel % (H * W)) // W, pixel % W
    centre = torch.stack([px, py], -1).to(uv.dtype) + 0.5
    w = _barycentrics(uv.reshape(-1, 3, 2)[tri], centre)
    depth = _interp_depth(w, z.reshape(-1, 3)[tri]).to(face_colors.dtype)
    shade = lambert_shading(vertices, faces, light_dir, ambient)
    colour = face_colors[face] * shade[face, None]

    values = torch.cat([colour, torch.ones_like(depth)[:, None], depth[:, None]], -1)
    image = torch.zeros(B * H * W, 5, dtype=values.dtype, device=values.device).index_put((pixel,), values)
    image = image.view(B, H, W, 5).permute(0, 3, 1, 2)
    if k > 1:
        image = F.avg_pool2d(image, k)
    premult, alpha, depth_sum = image[:, :3], image[:, 3:4], image[:, 4:5]
    rgb = premult + (1.0 - alpha) * _as_background(background, premult)
    depth_img = torch.where(alpha > 0, depth_sum / alpha.clamp(min=1e-12), torch.zeros_like(depth_sum))
    face_index = torch.where(winner >= 0, winner % n_faces, -1).view(B, H, W)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth_img, extras={"face_index": face_index})
