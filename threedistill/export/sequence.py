"""4D exports: one file per frame and videos of several views over time."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..core.cameras import heldout_cameras
from ..core.errors import UserError
from ..core.motion import MotionConfig, clips_of, frame_times
from ..core.types import render_in_chunks
from ..representations.base import Representation
from .extract import MeshExportConfig, extract_mesh
from .mesh import write_glb
from .splat_ply import write_splat_ply


def write_sequence(asset: Representation, out_dir: Path, frames: int, mesh_config: MeshExportConfig) -> list[Path]:
    """splats_tNNN.ply (Gaussians) and mesh_tNNN.glb for each of `frames` times in [0, 1]."""
    written: list[Path] = []
    for i, t in enumerate(frame_times(frames).tolist()):
        splats = asset.as_splats(t)
        if splats is not None:
            written.append(write_splat_ply(out_dir / f"splats_t{i:03d}.ply", **splats))
        field = asset.as_field(t)
        if field is None:
            raise UserError(f"{type(asset.static()).__name__} has no field to extract per-frame meshes from")
        written.append(write_glb(out_dir / f"mesh_t{i:03d}.glb", extract_mesh(field, mesh_config)))
    return written


@torch.no_grad()
def view_grid_frames(asset: Representation, views: int, frames: int, resolution: int, background: Tensor) -> Tensor:
    """Video frames [T,3,H,views*W]: `views` held-out cameras side by side, time running 0 -> 1."""
    cams = clips_of(heldout_cameras(views, resolution, resolution), frames, MotionConfig()).to(background.device)
    rgb = render_in_chunks(lambda clip: asset.render(clip, background), cams, frames).rgb
    grid = rgb.view(views, frames, *rgb.shape[1:])  # [V,T,3,H,W]
    return torch.cat(list(grid), dim=-1)
