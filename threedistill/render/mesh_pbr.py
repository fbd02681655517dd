"""Physically based rendering of a triangle mesh: the torch rasteriser (mesh_torch.py) + the GGX
shader (pbr.py), one environment per view.

A material function maps the interpolated per-vertex attributes at every covered pixel to five
channels, [albedo rgb, roughness, metallic] in [0, 1]; normals are the mesh's flat face normals,
turned toward the camera (two-sided, like toyworld's references). Everything is torch, so the
same code runs on CUDA tensors (nvdiffrast is not used here). `render_material_maps` renders the
five channels unshaded (scores, the ControlNet's inputs, texture baking checks).

With `light_condition`, extras["light_condition"] [B,18,H,W] holds DreamMat's six condition
renders of the mesh under each view's environment: white albedo at metallic {0, 1} x roughness
{0, 0.5, 1} (no gradients), for a ControlNet that reads them (priors/diffusers/controlnet.py).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.types import RenderOutput
from .mesh_torch import Raster, _interpolate_packed, _scatter, composite_surface, mesh_normals, rasterize
from .pbr import Environment, environment_tensors, shade

MaterialFn = Callable[[Tensor], Tensor]
"""Interpolated attributes [N,C] -> [albedo rgb, roughness, metallic] [N,5] in [0,1]."""

CONDITION_MATERIALS = ((0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (1.0, 0.0), (1.0, 0.5), (1.0, 1.0))
"""(metallic, roughness) of DreamMat's six light-condition renders."""


def _surface(vertices: Tensor, faces: Tensor, cams: Cameras, supersample: int) -> tuple[Raster, Tensor, Tensor, Tensor]:
    """(raster, view index [N], unit normals toward the camera [N,3], unit view directions [N,3])."""
    raster = rasterize(vertices, faces, cams, supersample)
    B, H, W = raster.shape
    view_index = raster.pixel // (H * W)
    points = _interpolate_packed(vertices, raster, faces)
    view = torch.nn.functional.normalize(cams.positions.to(points)[view_index] - points, dim=-1)
    normal = mesh_normals(vertices, faces)[raster.face]
    normal = torch.where((normal * view).sum(-1, keepdim=True) < 0, -normal, normal)
    return raster, view_index, normal, view


def render_pbr_mesh(
    vertices: Tensor,
    faces: Tensor,
    cams: Cameras,
    lights: Sequence[Environment],
    material_fn: MaterialFn,
    material_attrs: Optional[Tensor] = None,
    *,
    background: Tensor | Sequence[float] = (1.0, 1.0, 1.0),
    supersample: int = 1,
    antialias_edges: bool = True,
    neighbours: Optional[Tensor] = None,
    light_condition: bool = False,
) -> RenderOutput:
    """Shaded renders of the mesh: view i lit by lights[i] (rgb on background, alpha, depth).

    `material_attrs` [V,C] are interpolated and handed to `material_fn` (default: the world
    positions). Gradients reach the material (and the vertices through barycentrics, depth and
    silhouettes). extras: face_index, and light_condition when asked for (module docstring).
    """
    if len(lights) != len(cams):
        raise ValueError(f"render_pbr_mesh needs one environment per camera, got {len(lights)} for {len(cams)}")
    k = int(supersample)
    faces = faces.long()
    raster, view_index, normal, view = _surface(vertices, faces, cams, k)
    material = material_fn(_interpolate_packed(vertices if material_attrs is None else material_attrs, raster, faces))
    dirs, colours, ambient = environment_tensors(list(lights), vertices.device, material.dtype)
    dirs, colours, ambient = dirs[view_index], colours[view_index], ambient[view_index]
    rgb = shade(normal, view, material[:, :3], material[:, 3], material[:, 4], dirs, colours, ambient).clamp(0.0, 1.0)
    out = composite_surface(rgb, raster, faces, k, background, antialias_edges, neighbours)
    if light_condition:
        with torch.no_grad():
            white, per_fragment = torch.ones_like(normal), normal[:, 0]
            renders = [shade(normal, view, white, torch.full_like(per_fragment, r), torch.full_like(per_fragment, m), dirs, colours,
                             ambient).clamp(0.0, 1.0)
                       for m, r in CONDITION_MATERIALS]
            maps = _scatter(torch.cat(renders, -1), raster.pixel, raster.shape)
            out.extras["light_condition"] = torch.nn.functional.avg_pool2d(maps, k) if k > 1 else maps
    return out


def render_material_maps(vertices: Tensor, faces: Tensor, cams: Cameras, material_fn: MaterialFn,
                         material_attrs: Optional[Tensor] = None, supersample: int = 1) -> tuple[Tensor, Tensor]:
    """Unshaded material channels [B,5,H,W] (premultiplied by coverage, 0 off the mesh) and alpha [B,1,H,W]."""
    k = int(supersample)
    faces = faces.long()
    raster = rasterize(vertices, faces, cams, k)
    material = material_fn(_interpolate_packed(vertices if material_attrs is None else material_attrs, raster, faces))
    image = _scatter(torch.cat([material, torch.ones_like(material[:, :1])], -1), raster.pixel, raster.shape)
    if k > 1:
        image = torch.nn.functional.avg_pool2d(image, k)
    return image[:, :5], image[:, 5:6]
