"""Machinery every objective shares: timesteps, weighting, CFG, the loss trick, clipping.

Conventions (DESIGN.md section 4):
- CFG is `e_u + s * (e_c - e_u)` (diffusers form).
- Loss trick: `target = (x - g).detach(); loss = 0.5 * sum((x - target)^2) / B`, so
  d loss / d x = g / B. `nan_to_num` runs before clipping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch
from torch import Tensor

from ..cameras import Cameras
from ..priors.base import DiffusionPrior, TextEmbeddings
from ..errors import UserError
from ..schedule import Schedule, evaluate_schedule, validate_schedule

Weighting = Literal["sds", "uniform", "fantasia3d", "lucid"]


@dataclass
class GuidanceOutput:
    """A scalar loss whose gradient w.r.t. the renders is the objective's, plus logs."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class BaseGuidanceConfig:
    """Settings shared by all objectives. `None` takes the prior's default."""

    cfg_scale: Optional[float] = None
    """Classifier-free guidance scale s in e_u + s (e_c - e_u) (prior default: toyworld 1, SD 100)."""
    min_step: Optional[Schedule] = None
    """Lower bound of t (integer in [0,1000)); a constant or (step, value) points."""
    max_step: Optional[Schedule] = None
    """Upper bound of t; e.g. [(0, 980), (0.5, 500)] anneals over the first half."""
    weighting: Weighting = "sds"
    """w(t): sds = 1-abar, uniform = 1, fantasia3d = sqrt(abar)(1-abar), lucid = sqrt((1-abar)/abar)."""
    grad_clip: Optional[Schedule] = None
    """Element-wise clamp of the gradient in the prior's space (None: off)."""
    grad_scale: float = 1.0
    """Multiplier of the whole gradient."""


def weighting(name: str, alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """w(t) for a batch of integer timesteps."""
    abar = alphas_cumprod.to(t.device)[t.long()]
    if name == "sds":
        return 1.0 - abar
    if name == "uniform":
        return torch.ones_like(abar)
    if name == "fantasia3d":
        return abar.sqrt() * (1.0 - abar)
    if name == "lucid":
        return ((1.0 - abar) / abar).sqrt()
    raise ValueError(f"unknown weighting '{name}'; valid: sds, uniform, fantasia3d, lucid")


def cfg_combine(e_cond: Tensor, e_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance in the diffusers form."""
    return e_uncond + scale * (e_cond - e_uncond)


def reparameterised_loss(x: Tensor, grad: Tensor, clip: Optional[float] = None) -> Tensor:
    """Loss whose gradient w.r.t. x is nan_to_num(grad), clipped, divided by the batch size."""
    grad = torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
    if clip is not None:
        grad = grad.clamp(-clip, clip)
    target = (x - grad).detach()
    return 0.5 * ((x - target) ** 2).sum() / x.shape[0]


class Guidance:
    """Base class: resolves prior-dependent defaults and draws timesteps."""

    config: BaseGuidanceConfig

    def __init__(self, config: BaseGuidanceConfig, prior: DiffusionPrior, total_steps: int, generator: torch.Generator) -> None:
        self.config = config
        self.generator = generator
        self.prior = prior
        self.total_steps = total_steps
        d = prior.defaults
        self.cfg_scale = d.cfg_scale if config.cfg_scale is None else config.cfg_scale
        self.min_step_schedule = d.min_step if config.min_step is None else config.min_step
        self.max_step_schedule = d.max_step if config.max_step is None else config.max_step
        try:
            for name in ("min_step", "max_step", "grad_clip"):
                value = getattr(config, name)
                if value is not None:
                    validate_schedule(f"guidance.{name}", value)
        except ValueError as exc:
            raise UserError(f"{exc}; e.g. 980 or [[0, 980], [0.5, 500]]") from None

    def step_range(self, step: int) -> tuple[int, int]:
        """Integer bounds [lo, hi] of t at this optimisation step."""
        T = self.prior.num_train_timesteps
        lo = int(round(evaluate_schedule(self.min_step_schedule, step, self.total_steps)))
        hi = int(round(evaluate_schedule(self.max_step_schedule, step, self.total_steps)))
        lo = min(max(lo, 0), T - 1)
        return lo, min(max(hi, lo), T - 1)

    def sample_timesteps(self, batch: int, step: int, device: torch.device) -> Tensor:
        """t ~ U{lo, ..., hi}, independently per view, from the run's generator."""
        lo, hi = self.step_range(step)
        return torch.randint(lo, hi + 1, (batch,), generator=self.generator).to(device)

    def sample_noise(self, like: Tensor) -> Tensor:
        """Standard normal noise shaped like `like`, from the run's generator."""
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype).to(like.device)

    def clip_value(self, step: int) -> Optional[float]:
        if self.config.grad_clip is None:
            return None
        return evaluate_schedule(self.config.grad_clip, step, self.total_steps)

    def guided_eps(self, x_t: Tensor, t: Tensor, emb: TextEmbeddings, cams: Optional[Cameras]) -> Tensor:
        """CFG epsilon with one prior call for cond and uncond (skipped when s == 1)."""
        if self.cfg_scale == 1.0:
            return self.prior.predict_eps(x_t, t, emb.cond, cams)
        both = self.prior.predict_eps(
            torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([emb.cond, emb.uncond]), _repeat_cams(cams)
        )
        e_c, e_u = both.chunk(2)
        return cfg_combine(e_c, e_u, self.cfg_scale)

    def weight(self, t: Tensor, ndim: int) -> Tensor:
        w = weighting(self.config.weighting, self.prior.alphas_cumprod, t)
        return w.view((-1,) + (1,) * (ndim - 1))

    def after_step(self, step: int) -> None:
        """Hook for objectives with their own trainable parts (VSD's score model)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _repeat_cams(cams: Optional[Cameras]) -> Optional[Cameras]:
    if cams is None:
        return None
    idx = torch.cat([torch.arange(len(cams)), torch.arange(len(cams))]).to(cams.device)
    return cams[idx]

