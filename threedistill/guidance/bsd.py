"""Balanced Score Distillation (PlacidDreamer; GUIDANCE.md 13.1).

Two objectives at once, combined per view at the min-norm point of the segment between them
(the two-objective Pareto solution of multiple-gradient descent):

    c = k (e(x_t; y) - e(x_t; neg))        classifier term (k = `classifier_scale`, 15 in the code)
    d = e(x_t; neg)                         smoothing term
    a = clip(<d - c, d> / |d - c|^2, 0, 1)
    grad = lambda_g sqrt(abar_t) (a c + (1 - a) d)        lambda_g = `grad_scale` (0.1)

`auto` is PlacidDreamer's `train_step_BSD_auto`: c = e_y - e_neg, d = 1.25 (e_neg - eps) and
w = |e_neg - eps| sqrt(1 - abar_t) / 50 (the norm over the view's whole latent).

PlacidDreamer's defaults: t ~ U[20, t_max] with t_max annealed 980 -> 500 over its 1500-of-5000
warm-up (0.3 of the run), and offset noise eps + 0.1 n_c (one normal draw per channel; the code
draws it once per batch, we draw it per view so views stay independent). With Perp-Neg the
classifier term is k times Perp-Neg's direction.
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
from .base import BaseGuidanceConfig, Guidance


@dataclass
class BSDConfig(BaseGuidanceConfig):
    """BSD: PlacidDreamer's train_step_BSD settings (configs/cactus.yaml)."""

    classifier_scale: float = 15.0
    """k, the classifier term's multiplier (PlacidDreamer's code: 15; its README's --lambda_ 18 is unused)."""
    grad_scale: float = 0.1
    """lambda_g, the whole gradient's multiplier (0.1 in configs/cactus.yaml)."""
    auto: bool = False
    """PlacidDreamer's auto-weighted variant (train_step_BSD_auto; see the module docstring)."""
    offset_noise: float = 0.1
    """Per-channel offset added to the injected noise, eps + offset * n_c (0: plain noise)."""
    min_step: Schedule = 20.0
    max_step: Schedule = field(default_factory=lambda: [(0.0, 980.0), (0.3, 500.0)])

    PRIOR_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {"toyworld": {"temperature": 100.0}}
    """The exact posterior's e_y - e_neg is ~0 except at very high noise (CSD's finding), so toyworld
    softens it as for csd (docs/benchmarks.md)."""


def min_norm_weight(c: Tensor, d: Tensor) -> Tensor:
    """a in [0, 1] minimising |a c + (1 - a) d| per sample (dim 0): clip(<d - c, d> / |d - c|^2, 0, 1), shaped [B,1,...]."""
    dims = tuple(range(1, c.ndim))
    diff = d - c
    a = (diff * d).sum(dim=dims, keepdim=True) / (diff * diff).sum(dim=dims, keepdim=True).clamp_min(1e-30)
    return a.clamp(0.0, 1.0)


@OBJECTIVES.register("bsd")
class BSDGuidance(Guidance):
    """BSD (see the module docstring)."""

    Config = BSDConfig
    config: BSDConfig
    uses_low_cfg = True  # s only shapes the x0 preview (PlacidDreamer's: 7.5)

    def offset_noise(self, like: Tensor) -> Tensor:
        """eps + offset * n, n one standard normal per (view, channel)."""
        noise = self.sample_noise(like)
        if self.config.offset_noise == 0.0:
            return noise
        shape = like.shape[:2] + (1,) * (like.ndim - 2)
        offset = torch.randn(shape, generator=self.generator, dtype=like.dtype).to(like.device)
        return noise + self.config.offset_noise * offset

    def balanced(self, e_u: Tensor, delta: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(the gradient before grad_scale, the mixing weight a [B]) from e_neg, the guidance direction and the noise."""
        abar = self.prior.alphas_cumprod.to(t.device)[t.long()].view((-1,) + (1,) * (e_u.ndim - 1))
        if self.config.auto:
            c, d = delta, 1.25 * (e_u - noise)
            w = (e_u - noise).flatten(1).norm(dim=1).view_as(abar) * (1.0 - abar).sqrt() / 50.0
        else:
            c, d = self.config.classifier_scale * delta, e_u
            w = abar.sqrt()
        a = min_norm_weight(c, d)
        return w * (a * c + (1.0 - a) * d), a.flatten()

    def distil(self, images: Tensor, cams: Cameras, emb: TextEmbeddings, step: int) -> ObjectiveOutput:
        x0, t, noise, x_t = self.noised_latents(images, step, self.offset_noise)
        with torch.no_grad():
            e_u, delta = self.guidance_delta(x_t, t, emb, cams)
            grad, a = self.balanced(e_u, delta, noise, t)
            e_hat = e_u + self.cfg_scale * delta
        return self.output(x0, grad, step, t, images, denoised=(x_t, e_hat), bsd_mix=float(a.mean()))
