"""A vectorised torch triangle-mesh rasteriser: nvdiffrast-like pieces and two renderers.

Each triangle is projected with the cameras' pinhole intrinsics and tested against the pixel
centres (i + 0.5) inside its screen bounding box. All (triangle, pixel) candidate pairs of all
cameras are enumerated at once, in chunks of bounded size, and a z-buffer keeps the nearest
surface per pixel (a packed int64 key: float depth bits, then triangle index, so ties break
deterministically). A second, differentiable pass evaluates the winners (`rasterize`):
perspective-correct barycentrics and depth, with exact gradients to the vertices. Triangles
with a vertex behind the near plane are dropped (orbit cameras never get that close).

Pieces (nvdiffrast's, in torch): `rasterize` -> `Raster`, `interpolate` (vertex or
face-corner attributes), `sample_texture` (bilinear UV lookups), `antialias` (analytic
silhouette antialiasing, which is what gives vertices gradients from the outline).
Renderers: `render_mesh` (flat Lambert shading of face colours, the toyworld references;
silhouettes there are not differentiable) and `render_textured_mesh` (unlit colours from a
texture field, vertex colours or a UV texture; the mesh representation's renderer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from threedistill.core.cameras import Cameras
from threedistill.core.types import RenderOutput

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
    if bg.dim() <= 2:  # [3] or [B,3]
        return bg.reshape(-1, 3, 1, 1)
    return bg


# ---------------------------------------------------------------------- nvdiffrast-like pieces
@dataclass
class Raster:
    """Visible surface per pixel of B cameras (at `supersample` times their resolution).

    face_index [B,H,W] long (-1 empty); bary [B,H,W,3] perspective-correct barycentrics
    (0 where empty; differentiable w.r.t. the vertices); depth [B,H,W] camera z (0 where empty).
    The packed views list only the N covered pixels: pixel [N] (b*H*W + y*W + x), face [N],
    bary_packed [N,3], depth_packed [N]. uv [B,F,3,2] / z [B,F,3] are the projected corners.
    """

    face_index: Tensor
    bary: Tensor
    depth: Tensor
    pixel: Tensor
    face: Tensor
    bary_packed: Tensor
    depth_packed: Tensor
    uv: Tensor
    z: Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        B, H, W = self.face_index.shape
        return B, H, W


def _scatter(values: Tensor, pixel: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Packed per-pixel values [N,C] -> image [B,C,H,W] (0 elsewhere)."""
    B, H, W = shape
    image = torch.zeros(B * H * W, values.shape[-1], dtype=values.dtype, device=values.device).index_put((pixel,), values)
    return image.view(B, H, W, -1).permute(0, 3, 1, 2)


def rasterize(vertices: Tensor, faces: Tensor, cams: Cameras, supersample: int = 1) -> Raster:
    """Rasterise triangles vertices [V,3] / faces [F,3] into every camera (pixel centres i + 0.5).

    The z-buffer pass runs without gradients; the winners' barycentrics and depths are then
    evaluated differentiably (gradients reach the vertices through them, not through coverage).
    """
    k = int(supersample)
    B, H, W = len(cams), cams.height * k, cams.width * k
    faces = faces.long()
    n_faces = max(faces.shape[0], 1)
    uv, z = _project(vertices, faces, cams.with_size(W, H))
    winner = _zbuffer(uv.detach(), z.detach(), (B, H, W))
    pixel = torch.nonzero(winner >= 0).squeeze(1)
    tri = winner[pixel]
    py, px = (pixel % (H * W)) // W, pixel % W
    centre = torch.stack([px, py], -1).to(uv.dtype) + 0.5
    w = _barycentrics(uv.reshape(-1, 3, 2)[tri], centre)
    zt = z.reshape(-1, 3)[tri]
    depth = _interp_depth(w, zt)
    bary = w / zt * depth[:, None]
    face_index = torch.where(winner >= 0, winner % n_faces, -1).view(B, H, W)
    dense = _scatter(torch.cat([bary, depth[:, None]], -1), pixel, (B, H, W)).permute(0, 2, 3, 1)
    return Raster(face_index, dense[..., :3], dense[..., 3], pixel, tri % n_faces, bary, depth, uv, z)


def _interpolate_packed(attr: Tensor, raster: Raster, faces: Tensor) -> Tensor:
    """attr [V,C] (per vertex) or [F,3,C] (per face corner) at the covered pixels -> [N,C]."""
    corners = attr[faces.long()[raster.face]] if attr.dim() == 2 else attr[raster.face]
    return (raster.bary_packed[..., None].to(attr.dtype) * corners).sum(1)


def interpolate(attr: Tensor, raster: Raster, faces: Tensor) -> Tensor:
    """Barycentric interpolation of attr [V,C] or [F,3,C] -> [B,C,H,W] (0 where empty).

    Differentiable w.r.t. attr and (through the barycentrics) the vertices.
    """
    return _scatter(_interpolate_packed(attr, raster, faces), raster.pixel, raster.shape)


def _sample_packed(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear texture [C,Ht,Wt] lookups at uv [N,2] -> [N,C] (see sample_texture)."""
    grid = torch.stack([2.0 * uv[:, 0] - 1.0, 1.0 - 2.0 * uv[:, 1]], -1).to(texture.dtype)
    out = F.grid_sample(texture[None], grid.view(1, 1, -1, 2), mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(texture.shape[0], -1).t()


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookups in texture [C,Ht,Wt] at uv [B,2,H,W] -> [B,C,H,W].

    UV convention of OBJ/OpenGL: u to the right, v up (v = 0 is the texture's last row);
    texel centres at (i + 0.5) / size, clamped at the border.
    """
    B, _, H, W = uv.shape
    flat = _sample_packed(texture, uv.permute(0, 2, 3, 1).reshape(-1, 2))
    return flat.view(B, H, W, -1).permute(0, 3, 1, 2)


def edge_neighbours(faces: Tensor) -> Tensor:
    """[F,3] long: the face across the edge opposite corner i of each face (-1 on a boundary).

    Edges shared by more than two faces pair up arbitrarily.
    """
    faces = faces.long()
    n = faces.shape[0]
    e = torch.stack([faces[:, [1, 2]], faces[:, [2, 0]], faces[:, [0, 1]]], 1).reshape(-1, 2)
    key = e.amin(1) * (int(faces.max()) + 1 if n else 1) + e.amax(1)
    order = torch.argsort(key)
    same = torch.nonzero(key[order][1:] == key[order][:-1]).squeeze(1)
    a, b = order[same], order[same + 1]
    nb = torch.full((3 * n,), -1, dtype=torch.long, device=faces.device)
    nb[a], nb[b] = b // 3, a // 3
    return nb.view(n, 3)


def antialias(image: Tensor, raster: Raster, faces: Tensor, neighbours: Optional[Tensor] = None) -> Tensor:
    """Analytic antialiasing of silhouette edges (nvdiffrast's method, Laine et al. 2020).

    image [B,C,H,W] is the hard render at the raster's resolution (premultiplied; 0 where
    empty). For every horizontally or vertically adjacent pixel pair showing different faces,
    the nearer pixel's triangle (empty pixels are infinitely far) is intersected with the
    segment between the two pixel centres; when the edge it leaves through is a silhouette
    edge (a boundary edge, or one whose neighbouring face faces the other way in this view),
    the pixel the edge crosses into is blended toward the other by the covered length: t > 0.5
    moves (t - 0.5) of the far pixel toward the near one, t < 0.5 moves (0.5 - t) of the near
    pixel toward the far one (t: crossing position, 0 at the near centre, 1 at the far one).
    The crossing depends on the projected vertices, so silhouettes get vertex gradients. Only
    pixels along silhouettes do work (cheap next to rasterisation); self-occlusion contours are
    handled like outlines, interior edges between front faces are left alone.
    """
    B, H, W = raster.shape
    faces = faces.long()
    n_faces = max(faces.shape[0], 1)
    nb = edge_neighbours(faces) if neighbours is None else neighbours
    uv = raster.uv
    with torch.no_grad():
        sign = torch.sign(_edge(uv[..., 0, :], uv[..., 1, :], uv[..., 2, :]))  # [B,F]
        depth = torch.where(raster.face_index >= 0, raster.depth, torch.full_like(raster.depth, math.inf)).reshape(-1)
        fi = raster.face_index.reshape(-1)
    flat = image.permute(0, 2, 3, 1).reshape(B * H * W, -1)
    delta = torch.zeros_like(flat)
    for dy, dx in ((0, 1), (1, 0)):
        a = raster.face_index[:, : H - dy, : W - dx]
        b_, y, x = torch.nonzero(a != raster.face_index[:, dy:, dx:], as_tuple=True)
        p = b_ * H * W + y * W + x
        q = p + dy * W + dx
        swap = depth[q] < depth[p]
        near, far = torch.where(swap, q, p), torch.where(swap, p, q)
        face = fi[near]
        corners = uv.reshape(-1, 3, 2)[b_ * n_faces + face]

        def centre(pix: Tensor) -> Tensor:
            return torch.stack([pix % W, (pix % (H * W)) // W], -1).to(uv.dtype) + 0.5

        w_near, w_far = _barycentrics(corners, centre(near)), _barycentrics(corners, centre(far))
        leaving = w_far < 0
        t_all = torch.where(leaving, w_near / torch.where(leaving, w_near - w_far, torch.ones_like(w_far)), torch.full_like(w_far, math.inf))
        t, edge = t_all.min(-1)
        other = nb[face, edge]
        silhouette = (other < 0) | (sign[b_, other.clamp(min=0)] != sign[b_, face])
        keep = torch.isfinite(t) & silhouette
        near, far, t = near[keep], far[keep], t[keep].to(flat.dtype)
        diff = flat[near] - flat[far]
        into_far = (t - 0.5).clamp(min=0.0)[:, None]
        into_near = (0.5 - t).clamp(min=0.0)[:, None]
        delta = delta.index_add(0, far, into_far * diff).index_add(0, near, -into_near * diff)
    return (flat + delta).view(B, H, W, -1).permute(0, 3, 1, 2)


def composite(image: Tensor, supersample: int, background: Tensor | Sequence[float], extras: Optional[dict[str, Any]] = None) -> RenderOutput:
    """Premultiplied [rgb, alpha, depth * alpha] image [B,5,H*k,W*k] -> pooled RenderOutput on background."""
    if supersample > 1:
        image = F.avg_pool2d(image, supersample)
    premult, alpha, depth_sum = image[:, :3], image[:, 3:4], image[:, 4:5]
    rgb = premult + (1.0 - alpha) * _as_background(background, premult)
    depth = torch.where(alpha > 0, depth_sum / alpha.clamp(min=1e-12), torch.zeros_like(depth_sum))
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, extras=extras or {})


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
    faces = faces.long()
    raster = rasterize(vertices, faces, cams, k)
    shade = lambert_shading(vertices, faces, light_dir, ambient)
    colour = face_colors[raster.face] * shade[raster.face, None]
    depth = raster.depth_packed.to(face_colors.dtype)
    values = torch.cat([colour, torch.ones_like(depth)[:, None], depth[:, None]], -1)
    return composite(_scatter(values, raster.pixel, raster.shape), k, background, {"face_index": raster.face_index})


def render_textured_mesh(
    vertices: Tensor,
    faces: Tensor,
    cams: Cameras,
    *,
    colour_fn: Optional[Callable[[Tensor], Tensor]] = None,
    colour_attrs: Optional[Tensor] = None,
    vertex_colors: Optional[Tensor] = None,
    uvs: Optional[Tensor] = None,
    face_uvs: Optional[Tensor] = None,
    texture: Optional[Tensor] = None,
    background: Tensor | Sequence[float] = (1.0, 1.0, 1.0),
    supersample: int = 1,
    antialias_edges: bool = True,
    neighbours: Optional[Tensor] = None,
) -> RenderOutput:
    """Render an unlit (colour-baked) triangle mesh: rgb on background, alpha, depth.

    Colours come from exactly one source:
    - colour_fn: maps the interpolated `colour_attrs` [V,C] (default: the world positions
      vertices [V,3]) at the covered pixels [N,C] to rgb [N,3] (a texture field);
    - vertex_colors [V,3]: interpolated barycentrically;
    - uvs [T,2], face_uvs [F,3] (indices into uvs) and texture [3,Ht,Wt]: bilinear lookups
      (see `sample_texture` for the UV convention).
    Rendering at `supersample` times the resolution is average-pooled; `antialias_edges`
    applies `antialias` (silhouette vertex gradients) before pooling. `neighbours`: the
    cached `edge_neighbours(faces)`. Gradients reach vertices (barycentrics, depth, silhouette
    crossings) and the colour source. extras["face_index"]: visible face per raster pixel.
    """
    k = int(supersample)
    faces = faces.long()
    raster = rasterize(vertices, faces, cams, k)
    if colour_fn is not None:
        colour = colour_fn(_interpolate_packed(vertices if colour_attrs is None else colour_attrs, raster, faces))
    elif vertex_colors is not None:
        colour = _interpolate_packed(vertex_colors, raster, faces)
    elif texture is not None and uvs is not None and face_uvs is not None:
        colour = _sample_packed(texture, _interpolate_packed(uvs[face_uvs.long()], raster, faces))
    else:
        raise ValueError("render_textured_mesh needs colour_fn, vertex_colors, or uvs + face_uvs + texture")
    return composite_surface(colour, raster, faces, k, background, antialias_edges, neighbours)


def composite_surface(colour: Tensor, raster: Raster, faces: Tensor, supersample: int, background: Tensor | Sequence[float],
                      antialias_edges: bool, neighbours: Optional[Tensor]) -> RenderOutput:
    """Per-fragment colours [P,C] -> the composited render: colour, alpha and depth scattered to the
    supersampled image, silhouette edges antialiased, pooled and composited on `background`."""
    depth = raster.depth_packed.to(colour.dtype)
    values = torch.cat([colour, torch.ones_like(depth)[:, None], depth[:, None]], -1)
    image = _scatter(values, raster.pixel, raster.shape)
    if antialias_edges:
        image = antialias(image, raster, faces, neighbours)
    out = composite(image, supersample, background, {"face_index": raster.face_index})
    out.alpha = out.alpha.clamp(0.0, 1.0)
    return out
