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
from ..core.schedule import Schedule
from ..core.types import RenderOutput
from .base import Representation


class Particles(Representation):
    """N representations of one kind behind the single-representation interface."""

    def __init__(self, members: list[Representation]) -> None:
        super().__init__()
        if not members:
            raise ValueError("Particles needs at least one member")
        self.particles = nn.ModuleList(members)
        self.config = members[0].config

    def __len__(self) -> int:
        return len(self.particles)

    def members(self) -> list[Representation]:
        return list(self.particles)  # type: ignore[arg-type]

    @property
    def num_points(self) -> int:
        return int(sum(m.num_points for m in self.members()))

    @property
    def is_dynamic(self) -> bool:
        return self.members()[0].is_dynamic

    def param_groups(self) -> list[dict[str, Any]]:
        return [group for m in self.members() for group in m.param_groups()]

    def _chunks(self, n_views: int) -> list[slice]:
        if n_views % len(self) != 0:
            raise ValueError(f"{n_views} views cannot be split evenly over {len(self)} particles")
        per = n_views // len(self)
        return [slice(i * per, (i + 1) * per) for i in range(len(self))]

    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        """Particle i renders chunk i of the batch; outputs are concatenated in order."""
        bg_rows = background.dim() == 2
        outs = [m.render(cams[sl], background[sl] if bg_rows else background) for m, sl in zip(self.members(), self._chunks(len(cams)))]
        return RenderOutput(
            rgb=torch.cat([o.rgb for o in outs]),
            alpha=torch.cat([o.alpha for o in outs]),
            depth=torch.cat([o.depth for o in outs]),
            extras={"members": outs},
        )

    def loss_weights(self) -> dict[str, Schedule]:
        return self.members()[0].loss_weights()

    def losses(self, out: RenderOutput, active: frozenset[str]) -> dict[str, Tensor]:
        """Each term summed over the members."""
        terms: dict[str, Tensor] = {}
        for member, member_out in zip(self.members(), out.extras["members"]):
            for name, value in member.losses(member_out, active).items():
                terms[name] = terms[name] + value if name in terms else value
        return terms

    def before_step(self, step: int, active: frozenset[str]) -> None:
        for member in self.members():
            member.before_step(step, active)

    def after_step(self, step: int, out: RenderOutput, optimizer: torch.optim.Optimizer) -> None:
        for member, member_out in zip(self.members(), out.extras["members"]):
            member.after_step(step, member_out, optimizer)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {"particles": [m.state_dict() for m in self.members()]}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:  # type: ignore[override]
        for member, member_state in zip(self.members(), state["particles"]):
            member.load_state_dict(member_state)
