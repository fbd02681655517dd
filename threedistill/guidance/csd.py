"""Classifier Score Distillation (Yu et al.) and Classifier Score Matching (TV-3DG).

CSD (GUIDANCE.md section 5.1), all predictions on the same randomly noised x_t:

    grad = w(t) * (a_c e(x_t; y) + a_u e(x_t; neg) + a_n e(x_t; null) + a_eps eps)

with coefficients (a_c, a_u, a_n, a_eps) = (1, 0, -1, 0) by default, each a schedule (the
official csd-if config moves null -> uncond over the run). (s, 1 - s, 0, -1) is SDS with CFG s.

CSM (section 5.2, [inferred]: TV-3DG released no code; this is our design decision): SDS's
gradient splits as (e_u - eps) + s (e_c - e_u); CSM drops the difference term and replaces
the random noising by deterministic DDIM inversion of x0 to t with null-text predictions:

    x_t = DDIM-invert(x0 -> t, null);   grad = w(t) * s * (e(x_t; y) - e(x_t; neg))

s is the CFG scale (7.5 on SD, 1 on toyworld); the unconditional branch is the negative
prompt, as in CFG ("" when none is given, then identical to the null prompt).

On toyworld both need a softened posterior (`--prior.temperature`, default 100 for these
objectives): the exact posterior is one-hot except at very high noise, so e(y) - e(null)
carries almost no signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.objective import OBJECTIVES, Needs, ObjectiveOutput
from ..core.schedule import Schedule
from ..core.types import TextEmbeddings
from .base import BaseGuidanceConfig, Guidance, repeat_cams

SOFT_TOYWORLD: dict[str, dict[str, Any]] = {"toyworld": {"temperature": 100.0}}


@dataclass
class CSDConfig(BaseGuidanceConfig):
    """CSD: coefficients of the cond / negative / null predictions and of the noise."""

    cond_scale: Schedule = 1.0
    uncond_scale: Schedule = 0.0
    null_scale: Schedule = -1.0
    noise_scale: Schedule = 0.0

    PRIOR_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = SOFT_TOYWORLD


@dataclass
class CSMConfig(BaseGuidanceConfig):
    """CSM: classifier term on a deterministically inverted x_t."""

    inversion_stride: int = 200
    """Timesteps per DDIM inversion step from x0 to x_t."""

    PRIOR_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = SOFT_TOYWORLD


@OBJECTIVES.register("csd")
class CSDGuidance(Guidance):
    """CSD (see the module docstring): one batched prior call over the branches in use."""

    Config = CSDConfig
    config: CSDConfig
    needs = Needs(prior=True)  # its own mix of branches, not CFG-shaped: no Perp-Neg

    def distil(self, images: Tensor, cams: Cameras, emb: TextEmbeddings, step: int) -> ObjectiveOutput:
        x0, t, noise, x_t = self.noised_latents(images, step)
        c = self.config
        branches = [(self.schedule(c.cond_scale, step), emb.cond), (self.schedule(c.uncond_scale, step), emb.uncond),
                    (self.schedule(c.null_scale, step), emb.null)]
        used = [(a, e) for a, e in branches if a != 0.0]
        e_cond = None  # the x0 preview reads the conditional prediction when it is computed
        with torch.no_grad():
            combined = self.schedule(c.noise_scale, step) * noise
            if used:
                n = len(used)
                preds = self.prior.predict_eps(
                    torch.cat([x_t] * n), torch.cat([t] * n), torch.cat([e for _, e in used]), repeat_cams(cams, n)
                ).chunk(n)
                for (a, e), e_pred in zip(used, preds):
                    combined = combined + a * e_pred
                    e_cond = e_pred if e is emb.cond else e_cond
            grad = self.weight(t, x0.ndim) * combined
        return self.output(x0, grad, step, t, images, denoised=None if e_cond is None else (x_t, e_cond))


@OBJECTIVES.register("csm")
class CSMGuidance(Guidance):
    """CSM (see the module docstring)."""

    Config = CSMConfig
    config: CSMConfig
    uses_low_cfg = True

    def distil(self, images: Tensor, cams: Cameras, emb: TextEmbeddings, step: int) -> ObjectiveOutput:
        x0 = self.prior.encode(images)
        t = self.sample_timesteps(x0.shape[0], step, x0.device)
        with torch.no_grad():
            x_t = self.ddim_invert(x0.detach(), t, emb.null, cams, self.config.inversion_stride)
            e_u, delta = self.guidance_delta(x_t, t, emb, cams)  # e_c - e_u (or Perp-Neg's direction)
            grad = self.weight(t, x0.ndim) * self.cfg_scale * delta
        return self.output(x0, grad, step, t, images, denoised=(x_t, e_u + self.cfg_scale * delta))
