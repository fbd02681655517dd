"""Surfaces and fields: what mesh extraction reads from a representation and what it produces.

- `Field`: a density/albedo field (a NeRF, 3D Gaussians' composited opacity, a 4D asset at one
  time) with its rendered alpha, which calibrates the surface level (export/extract.py).
- `SurfaceMesh`: a triangle mesh in world coordinates (z up) with vertex colours.
- `TextureColour`: where a texture baked for a mesh takes its colours from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import numpy as np
from torch import Tensor


class Field(Protocol):
    """What mesh extraction needs from a representation (export/extract.py)."""

    @property
    def surface_level(self) -> Optional[float]:
        """The density level of the surface when it cannot be calibrated on renders (None: it can)."""
        ...

    def density(self, points: Tensor) -> Tensor:
        """Non-negative density [N] at points [N,3], larger inside (no gradient needed)."""
        ...

    def albedo(self, points: Tensor) -> Tensor:
        """Colour [N,3] in [0,1] at points [N,3]."""
        ...

    def render_alpha(self, cams: Any) -> Optional[Tensor]:
        """The rendered opacity [B,1,H,W] of the field from these cameras (None: it cannot render)."""
        ...


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@dataclass
class SurfaceMesh:
    """A triangle mesh in world coordinates (z up) with per-vertex colours."""

    vertices: np.ndarray  # [V,3] float32
    faces: np.ndarray  # [F,3] int64, counter-clockwise seen from outside
    vertex_colors: np.ndarray  # [V,3] float32 in [0,1]
    level: float = math.nan
    """The density level the surface was extracted at (nan for an explicit mesh)."""
    silhouette_iou: float = math.nan
    """Calibration: IoU of {ray max >= level} with the renders' alpha >= 0.5 (nan without calibration)."""

    def face_colors(self) -> np.ndarray:
        """[F,3] mean colour of each face's vertices."""
        return self.vertex_colors[self.faces].mean(axis=1)

    def to_trimesh(self) -> Any:
        import trimesh

        rgba = np.concatenate([_to_uint8(self.vertex_colors), np.full((len(self.vertices), 1), 255, np.uint8)], axis=1)
        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=rgba, process=False)


@dataclass
class TextureColour:
    """Colours for baking a mesh texture.

    `at_points(points [N,3]) -> [N,3]`; an explicit mesh also knows colours per face:
    `at_surface(points [N,3], corner vertex ids [N,3], barycentrics [N,3]) -> [N,3]` (tensors).
    """

    at_points: Callable[[Tensor], Tensor]
    at_surface: Optional[Callable[[Tensor, Tensor, Tensor], Tensor]] = None
