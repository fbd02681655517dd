"""Domain Score Distillation (DreamPolish; GUIDANCE.md 13.2): a documented reconstruction.

DreamPolish released no code. Its abstract says classifier-free guidance and variational-
distribution guidance are two distinct parts of the gradient and both are needed. VSD's gradient
already splits that way, CFG(e) - e_phi = s (e_y - e_neg) + (e_neg - e_phi), so DSD weights the
two parts with separate schedules on VSD's machinery (the variational model, its updates, particles):

    grad = w(t) [ l_c (e(x_t; y) - e(x_t; neg)) + l_v (e(x_t; neg) - e_phi(x_t; y, c)) ]

l_c = s, l_v = 1 is VSD exactly (tests/test_guidance_second_wave.py). Our defaults: l_c = s (the
prior's low CFG scale, 7.5 on SD, 1 on toyworld); l_v ramps 0 -> 1 over the first 20% of the run,
so the shape forms under the classifier part while the variational model learns the renders, whose
score is meaningless at first. With Perp-Neg the classifier part is Perp-Neg's direction.
DreamPolish's polish stage (NeuS -> DMTet under a normal-estimation diffusion model) needs models
that are not available and is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor

from ..core.cameras import Cameras
from ..core.objective import OBJECTIVES
from ..core.schedule import Schedule
from ..core.types import TextEmbeddings
from .vsd import VSDConfig, VSDGuidance


@dataclass
class DSDConfig(VSDConfig):
    """DSD: VSD's settings plus a schedule for each part of the gradient."""

    classifier_weight: Optional[Schedule] = None
    """l_c, the weight of e_y - e_neg (None: the CFG scale s, as in VSD)."""
    variational_weight: Schedule = field(default_factory=lambda: [(0.0, 0.0), (0.2, 1.0)])
    """l_v, the weight of e_neg - e_phi (1: VSD's; default ramps 0 -> 1 over the first 20% of the run)."""


@OBJECTIVES.register("dsd")
class DSDGuidance(VSDGuidance):
    """DSD (see the module docstring)."""

    Config = DSDConfig  # type: ignore[assignment]
    config: DSDConfig

    def part_weights(self, step: int) -> tuple[float, float]:
        """(l_c, l_v) at this optimisation step."""
        c = self.config
        l_c = self.cfg_scale if c.classifier_weight is None else self.schedule(c.classifier_weight, step)
        return l_c, self.schedule(c.variational_weight, step)

    def score_difference(self, x_t: Tensor, t: Tensor, emb: TextEmbeddings, cams: Cameras, step: int) -> tuple[Tensor, Tensor]:
        e_u, delta = self.guidance_delta(x_t, t, emb, cams)
        e_phi = self.variational_eps(x_t, t, emb.plain_or_cond, cams)
        l_c, l_v = self.part_weights(step)
        return l_c * delta + l_v * (e_u - e_phi), e_u + self.cfg_scale * delta
