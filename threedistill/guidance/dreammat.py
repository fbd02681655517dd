"""DreamMat's classifier-style score for PBR materials (GUIDANCE.md 13.10).

    g = w(t) [c_y e(x_t; y) + s_u(step) e(x_t; neg) + s_n(step) e(x_t; "")],   w(t) = 1 - abar_t

with c_y = 1.05, s_u annealed -1 -> -0.5 and s_n 0 -> -0.5 over steps 0-2000 (schedules), and no
-eps term: the coefficients sum to 0.05, so g is mostly the classifier direction e_y - e_neg
(early) and e_y - (e_neg + e_0) / 2 (late). t ~ U[0.2, 0.8] (x 1000) before `t_switch`, then
U[0.02, 0.5]; `--guidance.min-step / max-step` replace that phase schedule. The three branches
go through one prior call, so a ControlNet prior (`--prior.controlnet`, its condition rendered
from the mesh, e.g. DreamMat's 22 channels `depth normal light`) conditions all of them. The loss
is the shared reparameterised loss (guidance/base.py) on the encoded renders.

DreamMat distils a material for a fixed mesh: use it with `--representation mesh
--representation.material pbr --representation.optimise texture`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.errors import UserError
from ..core.objective import OBJECTIVES, Needs, ObjectiveOutput
from ..core.schedule import Schedule, evaluate_schedule
from ..core.types import TextEmbeddings
from .base import BaseGuidanceConfig, Guidance, repeat_cams

UNCOND_SCALE: Schedule = [(0, -1.0), (2000, -0.5)]
"""DreamMat's s_u: -1 -> -0.5 over steps 0-2000."""
NULL_SCALE: Schedule = [(0, 0.0), (2000, -0.5)]
"""DreamMat's s_n: 0 -> -0.5 over steps 0-2000."""


@dataclass
class DreamMatConfig(BaseGuidanceConfig):
    """DreamMat's defaults (configs/dreammat.yaml of zzzyuqing/DreamMat, GUIDANCE.md 13.10)."""

    PRIOR_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {"toyworld": {"temperature": 100.0}}

    cond_scale: float = 1.05
    """c_y, the weight of the prompt's prediction."""
    uncond_scale: Optional[Schedule] = None
    """s_u(step), the weight of the negative prompt's prediction (steps: absolute, or fractions of the
    run); None: DreamMat's [(0, -1), (2000, -0.5)]."""
    null_scale: Optional[Schedule] = None
    """s_n(step), the weight of the empty prompt's prediction; None: DreamMat's [(0, 0), (2000, -0.5)]."""
    t_switch: float = 500
    """The step (absolute, or a fraction of the run in (0, 1)) where t's range changes."""
    early_t: tuple[float, float] = (0.2, 0.8)
    """t / 1000 range before t_switch."""
    late_t: tuple[float, float] = (0.02, 0.5)
    """t / 1000 range from t_switch on."""

    def check(self) -> None:
        super().check()
        for name, (lo, hi) in (("early-t", self.early_t), ("late-t", self.late_t)):
            if not 0.0 <= lo <= hi < 1.0:
                raise UserError(f"--guidance.{name} must be two fractions 0 <= lo <= hi < 1, got {lo} {hi}; e.g. 0.2 0.8")
        if self.t_switch < 0:
            raise UserError(f"--guidance.t-switch must be >= 0 (a step, or a fraction of the run), got {self.t_switch}")


@OBJECTIVES.register("dreammat")
class DreamMatGuidance(Guidance):
    """DreamMat's scheduled classifier-style score (see the module docstring)."""

    Config = DreamMatConfig
    config: DreamMatConfig
    needs = Needs(prior=True, pbr_material=True)

    def coefficients(self, step: int) -> tuple[float, float, float]:
        """(c_y, s_u, s_n) at this optimisation step."""
        cfg = self.config
        s_u = evaluate_schedule(UNCOND_SCALE if cfg.uncond_scale is None else cfg.uncond_scale, step, self.total_steps)
        s_n = evaluate_schedule(NULL_SCALE if cfg.null_scale is None else cfg.null_scale, step, self.total_steps)
        return cfg.cond_scale, s_u, s_n

    def step_range(self, step: int) -> tuple[int, int]:
        """DreamMat's two-phase t range, unless min_step / max_step are given."""
        cfg = self.config
        if cfg.min_step is not None or cfg.max_step is not None:
            return super().step_range(step)
        switch = cfg.t_switch * self.total_steps if 0.0 < cfg.t_switch < 1.0 else cfg.t_switch
        lo, hi = cfg.early_t if step < switch else cfg.late_t
        T = self.prior.num_train_timesteps
        return int(round(lo * T)), min(int(round(hi * T)), T - 1)

    def distil(self, images: Tensor, cams: Cameras, emb: TextEmbeddings, step: int) -> ObjectiveOutput:
        x0, t, _, x_t = self.noised_latents(images, step)
        c_y, s_u, s_n = self.coefficients(step)
        with torch.no_grad():
            texts = torch.cat([emb.cond, emb.uncond, emb.null])
            e_y, e_neg, e_null = self.prior.predict_eps(torch.cat([x_t] * 3), t.repeat(3), texts, repeat_cams(cams, 3)).chunk(3)
            grad = self.weight(t, x0.ndim) * (c_y * e_y + s_u * e_neg + s_n * e_null)
        return self.output(x0, grad, step, t, images, s_u=s_u, s_n=s_n)
