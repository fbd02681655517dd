"""Training backgrounds behind any representation: solid, a random colour per view, or a small MLP.

Representations render on the solid colour (`render.background`); the other modes swap it for
their own by compositing again: rgb' = rgb + (1 - alpha) * (new - solid), exact for any renderer
whose rgb is premultiplied colour plus (1 - alpha) * background. Held-out metrics, previews of
evaluation and exports always use the solid colour.

- random: a uniform random colour per training view (DreamFusion/threestudio's augmentation
  against the prior explaining the object with its background; use it with Stable Diffusion,
  not with toyworld, whose references are on white).
- mlp: colour = sigmoid(MLP(ray direction)), learnt with the representation (DreamFusion's
  environment map), lr `background_lr`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..core.cameras import Cameras
from ..core.types import RenderOutput
from .volume_torch import camera_rays


class Background(nn.Module):
    """Replaces the solid training background of renders (see the module docstring)."""

    solid: Tensor  # [3]

    def __init__(self, mode: str, solid: Tensor, lr: float, generator: torch.Generator, hidden: int = 16) -> None:
        super().__init__()
        self.mode, self.lr, self.generator = mode, lr, generator
        self.register_buffer("solid", solid.detach().clone().reshape(3))
        self.mlp: Optional[nn.Sequential] = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 3)) if mode == "mlp" else None

    def param_groups(self) -> list[dict[str, Any]]:
        return [] if self.mlp is None else [{"name": "background", "params": list(self.mlp.parameters()), "lr": self.lr}]

    def colour(self, cams: Cameras) -> Tensor:
        """The background [B,3,H,W] (or [B,3,1,1]) of these training views."""
        B = len(cams)
        if self.mode == "random":
            return torch.rand(B, 3, generator=self.generator).to(self.solid)[..., None, None]
        if self.mlp is not None:
            _, dirs, _ = camera_rays(cams)
            return torch.sigmoid(self.mlp(dirs.to(self.solid))).permute(0, 3, 1, 2)
        return self.solid.view(1, 3, 1, 1).expand(B, 3, 1, 1)

    def composite(self, out: RenderOutput, cams: Cameras) -> RenderOutput:
        """The renders composited on this background instead of the solid colour (solid: unchanged)."""
        if self.mode == "solid":
            return out
        rgb = out.rgb + (1.0 - out.alpha) * (self.colour(cams) - self.solid.view(1, 3, 1, 1))
        return RenderOutput(rgb=rgb, alpha=out.alpha, depth=out.depth, extras=out.extras)
