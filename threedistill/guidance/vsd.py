"""Variational Score Distillation (ProlificDreamer) and Entropic Score Distillation.

GUIDANCE.md sections 2 and 6:

    e_pre = CFG(e(x_t; y_view), e(x_t; neg), s)                the frozen prior, view-dependent prompt
    e_phi = lambda * e_var(x_t; y, c = none) + (1 - lambda) * e_var(x_t; y, c)
    grad  = w(t) * (e_pre - e_phi)

e_var is the variational score model of the distribution of current renders, built by the
prior (`prior.variational_model`): LoRA + camera embedding on Stable Diffusion, the exact
buffer denoiser on toyworld. It learns from each step's detached renders after the gradient
is computed (on the very first step, before, so it has something to predict from).
VSD is lambda = 0; ESD's lambda is `entropy_weight` (threestudio's guidance_scale_lora = 1 - lambda).
Several particles (`particles`, independent 3D models run by the trainer) share one variational
model: each particle's renders are part of the distribution the others are pushed away from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.errors import UserError
from ..core.objective import OBJECTIVES, Needs, ObjectiveOutput
from ..core.types import TextEmbeddings
from ..priors.base import DiffusionPrior, VariationalConfig
from .base import BaseGuidanceConfig, Guidance


@dataclass
class VSDConfig(BaseGuidanceConfig):
    """VSD: prior CFG 7.5 on SD (1 on toyworld), w = 1 - abar."""

    particles: int = 1
    """Independent 3D models optimised together, sharing one variational model."""
    variational: VariationalConfig = field(default_factory=VariationalConfig)

    def particle_count(self) -> int:
        return self.particles

    def entropy(self) -> float:
        """lambda, the weight of the camera-unconditional variational score (0: VSD)."""
        return 0.0

    def check(self) -> None:
        super().check()
        if self.particles < 1:
            raise UserError(f"--guidance.particles must be at least 1, got {self.particles}")
        if not 0.0 <= self.entropy() <= 1.0:
            raise UserError(f"--guidance.entropy-weight must be in [0, 1], got {self.entropy()}")


@dataclass
class ESDConfig(VSDConfig):
    """ESD: VSD plus the entropy term."""

    entropy_weight: float = 0.5
    """lambda: weight of the camera-unconditional variational score (0 = VSD; the ESD README uses 0.5)."""

    def entropy(self) -> float:
        return self.entropy_weight


@OBJECTIVES.register("vsd")
class VSDGuidance(Guidance):
    """VSD / ESD (see the module docstring)."""

    Config = VSDConfig
    config: VSDConfig
    needs = Needs(prior=True, variational_model=True, particles=True, perp_neg=True)
    uses_low_cfg = True

    def __init__(self, config: VSDConfig, prior: DiffusionPrior, total_steps: int, generator: torch.Generator) -> None:
        super().__init__(config, prior, total_steps, generator)
        self.entropy_weight = config.entropy()
        self.variational = prior.variational_model(config.variational)
        self._trained = False

    def variational_eps(self, x_t: Tensor, t: Tensor, plain: Tensor, cams: Cameras) -> Tensor:
        """lambda * e_var(c = none) + (1 - lambda) * e_var(c); one branch when lambda is 0 or 1."""
        lam = self.entropy_weight
        if lam == 0.0:
            return self.variational.predict_eps(x_t, t, plain, cams)
        if lam == 1.0:
            return self.variational.predict_eps(x_t, t, plain, None)
        e_cam = self.variational.predict_eps(x_t, t, plain, cams)
        return lam * self.variational.predict_eps(x_t, t, plain, None) + (1.0 - lam) * e_cam

    def _train_variational(self, x0: Tensor, plain: Tensor, cams: Cameras) -> dict[str, float]:
        self._trained = True
        return self.variational.update(x0.detach(), plain, cams, self.generator)

    def score_difference(self, x_t: Tensor, t: Tensor, emb: TextEmbeddings, cams: Cameras, step: int) -> tuple[Tensor, Tensor]:
        """(the gradient before w(t), the guided eps of the x0 preview): VSD's e_pre - e_phi."""
        e_pre = self.guided_eps(x_t, t, emb, cams)
        return e_pre - self.variational_eps(x_t, t, emb.plain_or_cond, cams), e_pre

    def distil(self, images: Tensor, cams: Cameras, emb: TextEmbeddings, step: int) -> ObjectiveOutput:
        x0, t, noise, x_t = self.noised_latents(images, step)
        plain = emb.plain_or_cond
        logs: dict[str, float] = {}
        if not self._trained:
            logs = self._train_variational(x0, plain, cams)
            first = True
        else:
            first = False
        with torch.no_grad():
            score, e_pre = self.score_difference(x_t, t, emb, cams, step)
            grad = self.weight(t, x0.ndim) * score
        if not first:
            logs = self._train_variational(x0, plain, cams)
        return self.output(x0, grad, step, t, images, denoised=(x_t, e_pre), **logs)

    def state_dict(self) -> dict[str, Any]:
        return {"variational": self.variational.state_dict(), "trained": self._trained}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "variational" in state:
            self.variational.load_state_dict(state["variational"])
            self._trained = bool(state.get("trained", True))


@OBJECTIVES.register("esd")
class ESDGuidance(VSDGuidance):
    """ESD: VSD whose variational score mixes in the camera-unconditional branch (`entropy_weight`)."""

    Config = ESDConfig  # type: ignore[assignment]
    config: ESDConfig
