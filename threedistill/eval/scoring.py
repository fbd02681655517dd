"""Scores of a finished stage against a prior's ground truth (toyworld), as metrics.json holds them.

- static: mask_iou, psnr, back_psnr and mode over held-out cameras (metrics.py), plus chamfer
  and mesh_level of the asset's mesh when meshes are exported, and for a PBR material its
  scores against the known one (materials.py: albedo_psnr, roughness / metallic means and errors);
- several particles: each particle's scores under `particles`, their means as mask_iou /
  psnr (/ chamfer), and `modes_reached`, the number of distinct modes they matched;
- 4D: every held-out camera at every frame time (`evaluate_toyworld_clips`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Protocol

from torch import Tensor

from ..core.cameras import Cameras
from ..core.geometry import SurfaceMesh
from ..core.types import RenderOutput
from ..representations.base import Representation
from .chamfer import chamfer_to_toyworld
from .materials import material_scores
from .metrics import evaluate_toyworld, evaluate_toyworld_clips


class GroundTruth(Protocol):
    """A prior that knows its data exactly (`Prior.has_ground_truth`: toyworld, toyworld-video)."""

    resolution: int

    def modes(self, prompt: str) -> list[Any]:
        """The object(s) a prompt names, one per mode (meshes with vertices and faces)."""
        ...

    def render_ground_truth(self, mesh: Any, cams: Cameras) -> RenderOutput:
        """The reference renders of one mode (each camera at its time for an animated object)."""
        ...

    def material_truth(self, mesh: Any, cams: Cameras) -> tuple[Tensor, Tensor]:
        """One mode's unshaded [albedo, roughness, metallic] maps [B,5,H,W] and alpha (eval/materials.py)."""
        ...


def score_asset(representation: Representation, truth: GroundTruth, prompt: str, eval_views: int, background: Tensor,
                clip_frames: int = 1, mesh_of: Optional[Callable[[int], Optional[SurfaceMesh]]] = None) -> dict[str, Any]:
    """The stage's scores (see the module docstring); `mesh_of(i)` gives particle i's mesh for chamfer."""
    members = representation.members()
    if representation.is_dynamic:
        return evaluate_toyworld_clips(members[0], truth, prompt, eval_views, clip_frames, background)
    scores = [evaluate_toyworld(m, truth, prompt, eval_views, background) for m in members]
    for i, s in enumerate(scores):
        s.update(material_scores(members[i].material_maps, truth, prompt, eval_views, background.device))
        mesh = mesh_of(i) if mesh_of is not None else None
        if mesh is not None:
            s.update(chamfer_to_toyworld(mesh, truth, prompt))
            if math.isfinite(mesh.level):  # marching cubes' level (an explicit mesh has none)
                s["mesh_level"] = mesh.level
    if len(scores) == 1:
        return scores[0]
    summary: dict[str, Any] = {
        "mask_iou": sum(s["mask_iou"] for s in scores) / len(scores),
        "psnr": sum(s["psnr"] for s in scores) / len(scores),
        "modes_reached": len({s["mode"] for s in scores}),
        "particles": scores,
    }
    if all("chamfer" in s for s in scores):
        summary["chamfer"] = sum(s["chamfer"] for s in scores) / len(scores)
    return summary
