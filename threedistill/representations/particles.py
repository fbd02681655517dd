"""Several independent 3D models ("particles", VSD's N > 1) optimised side by side.

A camera batch of N * B views is split into N consecutive chunks, one per particle, so each
particle sees its own random views and the guidance sees one batch. Everything else
(parameters, densification, checkpoints) is delegated member by member.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..core.cameras import Cameras
from ..core.types import RenderOutput


class Particles(nn.Module):
    """N representations of one kind behind the single-representation interface."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("Particles needs at least one member")
        self.members = nn.ModuleList(members)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def num_points(self) -> int:
        return int(sum(getattr(m, "num_points", 0) for m in self.members))

    def param_groups(self) -> list[dict[str, Any]]:
        return [group for m in self.members for group in m.param_groups()]

    def _chunks(self, n_views: int) -> list[slice]:
        if n_views % len(self) != 0:
            raise ValueError(f"{n_views} views cannot be split evenly over {len(self)} particles")
        per = n_views // len(self)
        return [slice(i * per, (i + 1) * per) for i in range(len(self))]

    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        """Particle i renders chunk i of the batch; outputs are concatenated in order."""
        bg_rows = background.dim() == 2
        outs = [m.render(cams[sl], background[sl] if bg_rows else background) for m, sl in zip(self.members, self._chunks(len(cams)))]
        return RenderOutput(
            rgb=torch.cat([o.rgb for o in outs]),
            alpha=torch.cat([o.alpha for o in outs]),
            depth=torch.cat([o.depth for o in outs]),
            extras={"members": outs},
        )

    def regularisation(self, out: RenderOutput, step: int) -> Tensor:
        """The sum of the members' regularisers (0 when they have none)."""
        total = out.rgb.new_zeros(())
        for member, member_out in zip(self.members, out.extras["members"]):
            reg = getattr(member, "regularisation", None)
            if reg is not None:
                total = total + reg(member_out, step)
        return total

    def after_step(self, step: int, out: RenderOutput, optimizer: torch.optim.Optimizer) -> None:
        for member, member_out in zip(self.members, out.extras["members"]):
            member.after_step(step, member_out, optimizer)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {"particles": [m.state_dict() for m in self.members]}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:  # type: ignore[override]
        for member, member_state in zip(self.members, state["particles"]):
            member.load_state_dict(member_state)
