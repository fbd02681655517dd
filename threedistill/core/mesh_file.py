"""Coloured triangle meshes inside the unit sphere, and reading them from mesh files.

Used for toyworld's catalogue objects and user meshes (`--prior.mesh`), the mesh
representation's starting shape (`--representation.path`) and `threedistill toyworld scene --mesh`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import trimesh
from torch import Tensor

from .errors import UserError
from .runtime import quiet_libraries

OBJECT_RADIUS = 0.85
"""Objects are scaled so their farthest vertex lies this far from the centre."""


@dataclass
class ColouredMesh:
    """A triangle mesh with per-face colours."""

    vertices: np.ndarray  # [V,3] float32
    faces: np.ndarray  # [F,3] int64
    face_colors: np.ndarray  # [F,3] float32 in [0,1]
    name: str
    main_faces: Optional[np.ndarray] = None  # [F] bool: the faces a colour word recolours

    def to_torch(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
        """(vertices [V,3] float32, faces [F,3] long, face_colors [F,3] float32) on `device`."""
        return (
            torch.tensor(self.vertices, dtype=torch.float32, device=device),
            torch.tensor(self.faces, dtype=torch.long, device=device),
            torch.tensor(self.face_colors, dtype=torch.float32, device=device),
        )


def normalise(vertices: np.ndarray) -> np.ndarray:
    """Centre vertices on their bounding-box centre and scale the farthest one to OBJECT_RADIUS."""
    v = vertices - 0.5 * (vertices.min(0) + vertices.max(0))
    return (v * (OBJECT_RADIUS / np.linalg.norm(v, axis=1).max())).astype(np.float32)


_USER_MESH_GREY = (0.7, 0.7, 0.7)
GLTF_SUFFIXES = (".glb", ".gltf")


def _face_colours(mesh: trimesh.Trimesh) -> np.ndarray:
    """Per-face RGB in [0,1] from a mesh's visuals, light grey when it has none."""
    visual: Any = mesh.visual
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        visual, kind = visual.to_color(), "vertex"
    if kind == "vertex":
        rgb = np.asarray(visual.vertex_colors, dtype=np.float32)[:, :3] / 255.0
        return rgb[mesh.faces].mean(axis=1)
    if kind == "face":
        return np.asarray(visual.face_colors, dtype=np.float32)[:, :3] / 255.0
    return np.tile(np.array(_USER_MESH_GREY, np.float32), (len(mesh.faces), 1))


def load_mesh_file(path: str | Path, name: str) -> ColouredMesh:
    """Load a mesh file (.glb/.obj/.ply/.stl...) normalised into the unit sphere, with face colours.

    glTF files are y-up by specification and are turned z-up; other formats are taken as z-up.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mesh file not found: {path}; pass an existing .glb/.obj/.ply/.stl")
    try:
        with quiet_libraries("trimesh", level=logging.CRITICAL + 1):  # trimesh logs failures with tracebacks
            mesh: Any = trimesh.load(path, force="mesh")
            colours = _face_colours(mesh)
    except Exception as exc:  # trimesh raises many types for malformed files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"could not read mesh {path}: {reason}; pass a valid .glb/.obj/.ply/.stl") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise UserError(f"could not read mesh {path}: it has no triangles; pass a valid .glb/.obj/.ply/.stl")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    if not np.isfinite(vertices).all() or np.ptp(vertices, axis=0).max() == 0:
        raise UserError(f"could not read mesh {path}: its vertices are degenerate or not finite; pass a valid mesh")
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if path.suffix.lower() in GLTF_SUFFIXES:  # glTF is y-up; our world is z-up: (x, y, z) -> (x, -z, y)
        vertices = np.stack([vertices[:, 0], -vertices[:, 2], vertices[:, 1]], axis=1)
    vertices = normalise(vertices)
    return ColouredMesh(vertices, faces, np.clip(colours, 0, 1).astype(np.float32), name, np.ones(len(faces), bool))
