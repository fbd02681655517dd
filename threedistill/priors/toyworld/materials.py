"""toyworld's PBR ground truth: catalogue objects shaded by the project's GGX shader.

With `--prior.material pbr` (set automatically for a `--representation.material pbr` run) the
references of every prompt are the object rendered by `render/mesh_pbr.py` with its known
per-part albedo, roughness and metallic (catalogue.py), flat face normals, under one of
`TRAINING_LIGHTS`: a reference set per light, each with 1/K of `num_references`. The prior
scores each view against the references under the light that view was rendered with (the
representation reports it in extras["light_index"]); held-out scores use `HELDOUT_LIGHT` on both
sides. A user mesh (or a mesh without known materials) is matte plastic: roughness 0.7, metallic 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ...core.cameras import Cameras
from ...core.mesh_file import ColouredMesh
from ...core.types import RenderOutput
from ...render.mesh_pbr import render_material_maps, render_pbr_mesh
from ...render.pbr import HELDOUT_LIGHT, TRAINING_LIGHTS, Environment
from .catalogue import ToyMesh

DEFAULT_MATERIAL = (0.7, 0.0)
"""(roughness, metallic) of a mesh without known materials."""


def face_materials(mesh: ColouredMesh) -> np.ndarray:
    """[F,2] float32 (roughness, metallic) of every face of a catalogue object (or the default)."""
    if isinstance(mesh, ToyMesh) and mesh.face_materials is not None:
        return np.asarray(mesh.face_materials, np.float32)
    return np.tile(np.asarray(DEFAULT_MATERIAL, np.float32), (len(mesh.faces), 1))


def _face_attributes(mesh: ColouredMesh, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(vertices [V,3], faces [F,3], per-corner materials [F,3,5]: albedo, roughness, metallic)."""
    v, f, c = mesh.to_torch(device)
    material = torch.cat([c, torch.as_tensor(face_materials(mesh), device=device)], 1)
    return v, f, material[:, None, :].expand(-1, 3, -1)


def light_of(index: int) -> Environment:
    """A training environment by index; -1 is the held-out one."""
    return HELDOUT_LIGHT if index < 0 else TRAINING_LIGHTS[index]


@torch.no_grad()
def render_pbr_ground_truth(mesh: ColouredMesh, cams: Cameras, lights: Sequence[Environment], device: torch.device) -> RenderOutput:
    """The object shaded by the GGX shader, view i under lights[i] (supersampled x2, white background,
    like the Lambertian references)."""
    v, f, corners = _face_attributes(mesh, device)
    return render_pbr_mesh(v, f, cams.to(device), lights, lambda a: a, corners, supersample=2, antialias_edges=False)


@torch.no_grad()
def render_material_truth(mesh: ColouredMesh, cams: Cameras, device: torch.device) -> tuple[Tensor, Tensor]:
    """Its unshaded [albedo, roughness, metallic] maps [B,5,H,W] (premultiplied) and alpha [B,1,H,W]."""
    v, f, corners = _face_attributes(mesh, device)
    return render_material_maps(v, f, cams.to(device), lambda a: a, corners, supersample=2)
