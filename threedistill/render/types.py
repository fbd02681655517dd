"""What every renderer returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
