"""Interval Score Matching (LucidDreamer) and Trajectory Score Matching (Dreamer XL).

GUIDANCE.md sections 3 and 4. With s = max(t - delta_t, 0):

    x_s  = DDIM inversion of x0 up to s with null-text predictions   (deterministic)
    e_s  = e(x_s, s, null);   x_t = DDIM step x_s -> t with e_s       (path A)
    ISM: target = e_s
    TSM: mu = round(s + (t - s) sqrt(1 - gamma^2)); x_mu = DDIM step x_s -> mu with e_s (path B);
         target = e(x_mu, mu, null)
    grad = w(t) * (CFG(e(x_t; y), e(x_t; neg), s_cfg) - target),   w = sqrt((1 - abar) / abar)

Differences from LucidDreamer's code, by design: the inversion starts from x0 itself at t = 0
(LucidDreamer adds a tiny amount of offset noise at its first DDIM timestep), so x_t depends
only on the render and t. gamma = 1 gives mu = s and reuses e_s, so TSM equals ISM exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.objective import OBJECTIVES, ObjectiveOutput
from ..core.schedule import Schedule
from ..core.types import TextEmbeddings
from ..priors.base import ddim_step
from .base import BaseGuidanceConfig, Guidance, Weighting


@dataclass
class ISMConfig(BaseGuidanceConfig):
    """ISM: CFG 7.5 on SD (1 on toyworld), w = sqrt((1-abar)/abar), delta_t 100 -> 80."""

    weighting: Weighting = "lucid"
    delta_t: Schedule = field(default_factory=lambda: [(0.0, 100.0), (0.3, 80.0)])
    """Interval t - s; LucidDreamer anneals 100 -> 80 over its 1500-of-5000-step warm-up."""
    inversion_stride: int = 200
    """Timesteps per DDIM inversion step from x0 to x_s (LucidDreamer's xs_delta_t)."""

    PRIOR_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {"toyworld": {"data_noise": 4.0}}
    """toyworld's exact denoiser memorises its references, so DDIM inversion from a render does not
    come back to it; blurred data (sigma_d = 4) make it ~ the identity at low noise (docs/benchmarks.md)."""


@dataclass
class TSMConfig(ISMConfig):
    """TSM: ISM's schedule with a second inversion path."""

    gamma: float = 0.3
    """Where the target's path stops between s (gamma = 1, ISM) and t (gamma = 0)."""


@OBJECTIVES.register("ism")
class ISMGuidance(Guidance):
    """ISM (see the module docstring); TSMGuidance only moves where the target sits."""

    Config = ISMConfig
    config: ISMConfig
    uses_low_cfg = True

    def target_timestep(self, s: Tensor, t: Tensor) -> Tensor:
        """ISM's target sits at s."""
        return s

    def distil(self, images: Tensor, cams: Cameras, emb: TextEmbeddings, step: int) -> ObjectiveOutput:
        x0 = self.prior.encode(images)
        t = self.sample_timesteps(x0.shape[0], step, x0.device)
        delta = int(round(self.schedule(self.config.delta_t, step)))
        s = (t - delta).clamp_min(0)
        abar = self.prior.alphas_cumprod
        with torch.no_grad():
            x_s = self.ddim_invert(x0.detach(), s, emb.null, cams, self.config.inversion_stride)
            e_s = self.prior.predict_eps(x_s, s, emb.null, cams)
            x_t = ddim_step(abar, x_s, e_s, s, t)
            mu = self.target_timestep(s, t)
            if bool((mu == s).all()):
                target = e_s
            else:
                x_mu = ddim_step(abar, x_s, e_s, s, mu)
                target = self.prior.predict_eps(x_mu, mu, emb.null, cams)
            e_cfg = self.guided_eps(x_t, t, emb, cams)
            grad = self.weight(t, x0.ndim) * (e_cfg - target)
        return self.output(x0, grad, step, t, images, denoised=(x_t, e_cfg), s_mean=float(s.float().mean()))


@OBJECTIVES.register("tsm")
class TSMGuidance(ISMGuidance):
    """TSM: the target is evaluated on path B at mu."""

    Config = TSMConfig
    config: TSMConfig

    def target_timestep(self, s: Tensor, t: Tensor) -> Tensor:
        gamma = float(self.config.gamma)
        return torch.round(s + (t - s).double() * (1.0 - gamma * gamma) ** 0.5).long()
