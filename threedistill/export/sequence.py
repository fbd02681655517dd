"""4D exports: one file per frame and videos of several views over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.cameras import heldout_cameras
from ..core.motion import MotionConfig, clips_of, frame_times
from ..core.types import render_in_chunks
from .extract import ExtractedMesh, GaussianField, extract_mesh
from .mesh import write_glb
from .splat_ply import write_splat_ply


def frame_field(deformed: Any, time: float) -> Any:
    """The density/albedo field of a deformed asset at one time (Gaussians or NeRF)."""
    if hasattr(deformed.static(), "splat_tensors"):
        return GaussianField.from_splat_tensors(deformed.splat_tensors_at(time))
    return deformed.field_at(time)


def frame_mesh(deformed: Any, time: float, config: Any) -> ExtractedMesh:
    """The extracted mesh of a deformed asset at one time."""
    return extract_mesh(frame_field(deformed, time), config)


def write_sequence(deformed: Any, out_dir: Path, frames: int, mesh_config: Any) -> list[Path]:
    """splats_tNNN.ply (Gaussians) and mesh_tNNN.glb for each of `frames` times in [0, 1]."""
    written: list[Path] = []
    for i, t in enumerate(frame_times(frames).tolist()):
        if hasattr(deformed.static(), "splat_tensors"):
            written.append(write_splat_ply(out_dir / f"splats_t{i:03d}.ply", **deformed.splat_tensors_at(t)))
        written.append(write_glb(out_dir / f"mesh_t{i:03d}.glb", frame_mesh(deformed, t, mesh_config)))
    return written


@torch.no_grad()
def view_grid_frames(deformed: Any, views: int, frames: int, resolution: int, background: Tensor) -> Tensor:
    """Video frames [T,3,H,views*W]: `views` held-out cameras side by side, time running 0 -> 1."""
    cams = clips_of(heldout_cameras(views, resolution, resolution), frames, MotionConfig()).to(background.device)
    rgb = render_in_chunks(lambda clip: deformed.render(clip, background), cams, frames).rgb
    grid = rgb.view(views, frames, *rgb.shape[1:])  # [V,T,3,H,W]
    return torch.cat(list(grid), dim=-1)
