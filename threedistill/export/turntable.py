"""Turntable renders of a representation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..cameras import turntable_cameras


@torch.no_grad()
def render_turntable(representation: Any, frames: int, resolution: int, background: Tensor, chunk: int = 4) -> Tensor:
    """One full orbit, frames [T,3,H,W] in [0,1], rendered a few views at a time."""
    cams = turntable_cameras(frames, resolution, resolution).to(background.device)
    out = [representation.render(cams[i : i + chunk], background).rgb.cpu() for i in range(0, frames, chunk)]
    return torch.cat(out)
