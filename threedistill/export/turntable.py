"""Turntable renders of a representation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core.cameras import turntable_cameras
from ..core.types import render_in_chunks


@torch.no_grad()
def render_turntable(representation: Any, frames: int, resolution: int, background: Tensor, chunk: int = 4,
                     animation_cycles: int = 0) -> Tensor:
    """One full orbit, frames [T,3,H,W] in [0,1], rendered a few views at a time. With
    `animation_cycles` > 0 (4D assets) time also runs 0 -> 1 that many times over the orbit."""
    cams = turntable_cameras(frames, resolution, resolution).to(background.device)
    if animation_cycles > 0:
        cams.time = (torch.arange(frames, device=background.device, dtype=torch.float32) * animation_cycles / frames) % 1.0
    return render_in_chunks(lambda views: representation.render(views, background), cams, chunk).rgb
