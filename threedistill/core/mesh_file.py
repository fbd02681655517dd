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
from .mesh_colours import geometry_faces
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


GLTF_SUFFIXES = (".glb", ".gltf")


def _scene_faces(scene: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every geometry instance of a trimesh scene in world space (node transforms applied), its
    faces coloured by its own material (core/mesh_colours.py), concatenated."""
    import trimesh

    parts = []
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        geometry = scene.geometry[name]
        if not isinstance(geometry, trimesh.Trimesh) or len(geometry.faces) == 0:
            continue
        vertices, faces, colours = geometry_faces(geometry)
        vertices = trimesh.transform_points(vertices, transform)
        parts.append((vertices, faces, colours))
    if not parts:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3))
    offsets = np.cumsum([0] + [len(v) for v, _, _ in parts[:-1]])
    return (np.concatenate([v for v, _, _ in parts]), np.concatenate([f + o for (_, f, _), o in zip(parts, offsets)]),
            np.concatenate([c for _, _, c in parts]))


def load_mesh_file(path: str | Path, name: str) -> ColouredMesh:
    """Load a mesh file (.glb/.gltf/.obj/.ply/.stl...) normalised into the unit sphere, with face colours.

    Every primitive / material group is placed by its node transforms and keeps its own colours:
    glTF materials (base colour factor, texture, COLOR_0), OBJ + MTL textures, PLY vertex or face
    colours (core/mesh_colours.py). glTF files are y-up by specification and are turned z-up;
    other formats are taken as z-up.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mesh file not found: {path}; pass an existing .glb/.obj/.ply/.stl")
    try:
        with quiet_libraries("trimesh", level=logging.CRITICAL + 1):  # trimesh logs failures with tracebacks
            scene = trimesh.load(path, force="scene")
            vertices, faces, colours = _scene_faces(scene)
    except Exception as exc:  # trimesh raises many types for malformed files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"could not read mesh {path}: {reason}; pass a valid .glb/.obj/.ply/.stl") from None
    if len(faces) == 0:
        raise UserError(f"could not read mesh {path}: it has no triangles; pass a valid .glb/.obj/.ply/.stl")
    if not np.isfinite(vertices).all() or np.ptp(vertices, axis=0).max() == 0:
        raise UserError(f"could not read mesh {path}: its vertices are degenerate or not finite; pass a valid mesh")
    if path.suffix.lower() in GLTF_SUFFIXES:  # glTF is y-up; our world is z-up: (x, y, z) -> (x, -z, y)
        vertices = np.stack([vertices[:, 0], -vertices[:, 2], vertices[:, 1]], axis=1)
    vertices = normalise(vertices)
    return ColouredMesh(vertices, faces, np.clip(colours, 0, 1).astype(np.float32), name, np.ones(len(faces), bool))
