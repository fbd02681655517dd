"""What every renderer returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor


@dataclass
class RenderOutput:
    """Renders of a batch of cameras.

    rgb [B,3,H,W] in [0,1] composited on the background, alpha [B,1,H,W],
    depth [B,1,H,W] (expected depth along the camera z axis, 0 where empty),
    extras: backend-specific tensors (e.g. `means2d` [B,N,2] with retained grad, `radii`).
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    extras: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def render_in_chunks(render: Callable[[Any], RenderOutput], cams: Any, chunk: int = 8) -> RenderOutput:
    """render(cams[i : i + chunk]) for every chunk, without gradients, joined on the CPU (extras dropped)."""
    outs = [render(cams[i : i + chunk]) for i in range(0, len(cams), chunk)]
    return RenderOutput(rgb=torch.cat([o.rgb.cpu() for o in outs]), alpha=torch.cat([o.alpha.cpu() for o in outs]),
                        depth=torch.cat([o.depth.cpu() for o in outs]))
