"""nvdiffrast (CUDA) mesh rendering, and the choice between it and the torch rasteriser.

Backends (DESIGN.md section 6): "cuda" = nvdiffrast's `RasterizeCudaContext` with its
`rasterize`, `interpolate`, `texture` and `antialias` ops, "torch" = render/mesh_torch.py
(any device), "auto" = nvdiffrast when the tensors are on CUDA and `nvdiffrast.torch`
imports, else torch. Both follow the same contract (`render_textured_mesh`) and the same
conventions: pixel centres at i + 0.5, camera z as depth, premultiplied compositing,
silhouette antialiasing before the supersampling pool. nvdiffrast runs in float32.

Camera -> clip space: OpenCV pixel coordinates (u right, v down) map to NDC
x = 2u/W - 1, y = 2v/H - 1, w = camera z. nvdiffrast stores row 0 at NDC y = -1, so row v
of its output is row v of ours with no flip. The CUDA rasteriser wants sizes divisible by 8:
the image is padded at the right/bottom (pixel centres unchanged) and cropped.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from threedistill.core.cameras import Cameras
from threedistill.render.backend import BACKENDS, resolve_backend
from threedistill.render.mesh_torch import NEAR, composite
from threedistill.core.types import RenderOutput

MESH_BACKENDS = BACKENDS
FAR = 100.0
"""Far plane of the clip-space depth (the object lives inside the unit sphere)."""


@functools.lru_cache(maxsize=None)
def _context(device: torch.device) -> Any:
    import nvdiffrast.torch as dr

    return dr.RasterizeCudaContext(device=device)  # one per device, reused across renders


@functools.lru_cache(maxsize=None)
def nvdiffrast_status() -> tuple[bool, str]:
    """(usable, reason): whether nvdiffrast's torch ops import here. Tried once, cached."""
    if not torch.cuda.is_available():
        return False, "no CUDA device is available to torch"
    try:
        importlib.import_module("nvdiffrast.torch")
        _context(torch.device("cuda", torch.cuda.current_device()))  # builds/loads the CUDA plugin
    except (ImportError, OSError, RuntimeError) as err:
        return False, f"nvdiffrast failed to load: {type(err).__name__}: {err}".splitlines()[0]
    return True, ""


def resolve_mesh_backend(name: str, device: torch.device | str) -> str:
    """The concrete backend ("cuda" or "torch") that `name` selects for tensors on `device`."""
    return resolve_backend(name, device, nvdiffrast_status, "nvdiffrast", "rasterising meshes")


def clip_space(vertices: Tensor, cams: Cameras, width: int, height: int) -> Tensor:
    """Homogeneous clip positions [B,V,4] of vertices [V,3] for an image of width x height pixels."""
    w2c = cams.viewmats().to(vertices.dtype)
    cam = torch.einsum("bij,vj->bvi", w2c[:, :3, :3], vertices) + w2c[:, None, :3, 3]
    K = cams.intrinsics().to(vertices.dtype)
    z = cam[..., 2]
    u_times_z = cam[..., 0] * K[:, None, 0, 0] + z * K[:, None, 0, 2]
    v_times_z = cam[..., 1] * K[:, None, 1, 1] + z * K[:, None, 1, 2]
    x = 2.0 * u_times_z / width - z
    y = 2.0 * v_times_z / height - z
    zc = z * (FAR + NEAR) / (FAR - NEAR) - 2.0 * FAR * NEAR / (FAR - NEAR)
    return torch.stack([x, y, zc, z], -1)


def render_textured_mesh_nvdiffrast(
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
    """`mesh_torch.render_textured_mesh` through nvdiffrast (CUDA tensors; see that function).

    `neighbours` is accepted for the shared signature and unused (nvdiffrast builds its own
    topology hash for antialiasing).
    """
    import nvdiffrast.torch as dr

    k = int(supersample)
    B, H, W = len(cams), cams.height * k, cams.width * k
    Hp, Wp = -(-H // 8) * 8, -(-W // 8) * 8
    dtype = vertices.dtype
    verts = vertices.float()
    tri = faces.to(torch.int32).contiguous()
    pos = clip_space(verts, cams.with_size(W, H), Wp, Hp).contiguous()  # NDC over the padded size: centres stay at i + 0.5
    rast, _ = dr.rasterize(_context(pos.device), pos, tri, resolution=[Hp, Wp])
    mask = rast[..., 3:4] > 0
    if colour_fn is not None:
        attrs = (verts if colour_attrs is None else colour_attrs.float()).contiguous()
        interp, _ = dr.interpolate(attrs[None], rast, tri)
        covered = mask[..., 0]
        values = colour_fn(interp[covered])
        colour = torch.zeros(*rast.shape[:3], values.shape[-1], dtype=values.dtype, device=values.device)
        colour = colour.index_put(torch.nonzero(covered, as_tuple=True), values)
    elif vertex_colors is not None:
        colour, _ = dr.interpolate(vertex_colors.float().contiguous()[None], rast, tri)
    elif texture is not None and uvs is not None and face_uvs is not None:
        flipped = torch.stack([uvs[:, 0], 1.0 - uvs[:, 1]], -1).float().contiguous()  # nvdiffrast: v = 0 is row 0
        uv, _ = dr.interpolate(flipped[None], rast, face_uvs.to(torch.int32).contiguous())
        tex = texture.float().permute(1, 2, 0)[None].expand(B, -1, -1, -1).contiguous()
        colour = dr.texture(tex, uv, filter_mode="linear", boundary_mode="clamp")
    else:
        raise ValueError("render_textured_mesh needs colour_fn, vertex_colors, or uvs + face_uvs + texture")
    depth, _ = dr.interpolate(pos[..., 3:4].contiguous(), rast, tri)
    alpha = mask.to(colour.dtype)
    image = torch.cat([colour * alpha, alpha, depth * alpha], -1).contiguous()
    if antialias_edges:
        image = dr.antialias(image, rast, pos, tri)
    image = image[:, :H, :W].permute(0, 3, 1, 2).to(dtype)
    face_index = rast[:, :H, :W, 3].long() - 1
    out = composite(image, k, background, {"face_index": face_index})
    out.alpha = out.alpha.clamp(0.0, 1.0)
    return out


__all__ = ["MESH_BACKENDS", "clip_space", "nvdiffrast_status", "render_textured_mesh_nvdiffrast", "resolve_mesh_backend"]
