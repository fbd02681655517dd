"""Machinery every objective shares: timesteps, weighting, CFG, the loss trick, clipping.

Conventions (DESIGN.md section 4):
- CFG is `e_u + s * (e_c - e_u)` (diffusers form).
- Loss trick: `target = (x - g).detach(); loss = 0.5 * sum((x - target)^2) / B`, so
  d loss / d x = g / B. `nan_to_num` runs before clipping.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.errors import UserError
from ..core.objective import Needs, Objective, ObjectiveConfig, ObjectiveOutput
from ..core.schedule import Schedule, evaluate_schedule, validate_schedule
from ..core.types import RenderOutput, TextEmbeddings
from ..priors.base import DiffusionPrior, add_noise, ddim_step, noise_coefficients, predict_x0

Weighting = Literal["sds", "uniform", "fantasia3d", "lucid"]


@dataclass
class BaseGuidanceConfig(ObjectiveConfig):
    """Settings shared by all score-distillation objectives. `None` takes the prior's default."""

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
    pixel_grad_clip: Optional[float] = None
    """Per-pixel clip of the gradient reaching the renders: each pixel's RGB gradient is scaled so
    its largest channel is at most this (Dreamer-XL uses 0.05 for Gaussians; None: off)."""
    image_term_weight: float = 0.0
    """HiFA's image-space term, added to the objective's: the gradient on the renders
    weight * w(t) (alpha_t / sigma_t) (render - decode(x0_hat)), x0_hat the prior's one-step estimate
    from the guided eps (hifa preset: 0.01; 0: off)."""
    sqrt_anneal: bool = False
    """HiFA's deterministic timestep anneal: every view takes
    t = min_step + (max_step - min_step) (1 - sqrt(step / steps)) instead of a random t."""
    image_space: bool = False
    """Take the loss on the renders against the decoded target, 0.5 |render - decode(x0 - g)|^2
    (HiFA's image-space term), instead of pushing g back through the encoder; a small or
    non-smooth VAE encoder turns g into high-frequency noise on the renders. Image priors only
    (clips keep the latent loss)."""

    def check(self) -> None:
        """Every schedule field is a number or a list of (step, value) points."""
        try:
            for f in dataclasses.fields(self):
                value = getattr(self, f.name)
                if "Schedule" in str(f.type) and value is not None:
                    validate_schedule(f"guidance.{f.name}", value)
        except ValueError as exc:
            raise UserError(f"{exc}; e.g. 980 or [[0, 980], [0.5, 500]]") from None


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


def clean_gradient(grad: Tensor, clip: Optional[float] = None) -> Tensor:
    """nan_to_num(grad), then clamped to [-clip, clip] when a clip is given (detached)."""
    grad = torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
    return grad if clip is None else grad.clamp(-clip, clip)


def reparameterised_loss(x: Tensor, grad: Tensor, clip: Optional[float] = None) -> Tensor:
    """Loss whose gradient w.r.t. x is nan_to_num(grad), clipped, divided by the batch size."""
    target = (x - clean_gradient(grad, clip)).detach()
    return 0.5 * ((x - target) ** 2).sum() / x.shape[0]


class Guidance(Objective):
    """Base class of score distillation: resolves prior-dependent defaults and draws timesteps.

    Subclasses implement `distil(images, cams, emb, step)`; the contract's `__call__` hands it
    the renders and embeddings (the full render output is not needed).
    """

    config: BaseGuidanceConfig
    needs = Needs(prior=True, perp_neg=True)
    uses_low_cfg: bool = False
    """True for objectives whose target is a model prediction (default CFG: the prior's cfg_scale_low)."""

    def __init__(self, config: BaseGuidanceConfig, prior: DiffusionPrior, total_steps: int, generator: torch.Generator) -> None:
        super().__init__(config, prior, total_steps, generator)
        config.check()
        self.config = config
        self.prior = prior
        d = prior.defaults
        default_cfg = d.cfg_scale_low if self.uses_low_cfg and d.cfg_scale_low is not None else d.cfg_scale
        self.cfg_scale = default_cfg if config.cfg_scale is None else config.cfg_scale
        self.min_step_schedule = d.min_step if config.min_step is None else config.min_step
        self.max_step_schedule = d.max_step if config.max_step is None else config.max_step

    def __call__(self, images: Tensor, cams: Cameras, emb: Optional[TextEmbeddings], step: int,
                 out: Optional[RenderOutput] = None) -> ObjectiveOutput:
        if emb is None:
            raise ValueError(f"{type(self).__name__} needs the prompt's embeddings")
        return self.distil(images, cams, emb, step)

    def distil(self, images: Tensor, cams: Cameras, emb: TextEmbeddings, step: int) -> ObjectiveOutput:
        """The score-distillation loss on the renders (or clips) `images`."""
        raise NotImplementedError(f"{type(self).__name__} distils nothing by itself")

    def schedule(self, value: Schedule, step: int) -> float:
        """A schedule field's value at this optimisation step."""
        return evaluate_schedule(value, step, self.total_steps)

    def step_range(self, step: int) -> tuple[int, int]:
        """Integer bounds [lo, hi] of t at this optimisation step."""
        T = self.prior.num_train_timesteps
        lo = int(round(evaluate_schedule(self.min_step_schedule, step, self.total_steps)))
        hi = int(round(evaluate_schedule(self.max_step_schedule, step, self.total_steps)))
        lo = min(max(lo, 0), T - 1)
        return lo, min(max(hi, lo), T - 1)

    def sample_timesteps(self, batch: int, step: int, device: torch.device) -> Tensor:
        """t ~ U{lo, ..., hi}, independently per view (per group of views for a multi-view prior, whose
        views of one object share their noise level), from the run's generator (`sqrt_anneal`: HiFA's deterministic t)."""
        lo, hi = self.step_range(step)
        if self.config.sqrt_anneal:
            progress = min(max(step / max(self.total_steps, 1), 0.0), 1.0)
            annealed = int(round(lo + (hi - lo) * (1.0 - math.sqrt(progress))))
            return torch.full((batch,), annealed, dtype=torch.long, device=device)
        group = self.prior.view_group if batch % self.prior.view_group == 0 else 1
        t = torch.randint(lo, hi + 1, (batch // group,), generator=self.generator)
        return t.repeat_interleave(group).to(device)

    def sample_noise(self, like: Tensor) -> Tensor:
        """Standard normal noise shaped like `like`, from the run's generator."""
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype).to(like.device)

    def noised_latents(self, images: Tensor, step: int,
                       noise_like: Optional[Callable[[Tensor], Tensor]] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A step's start: x0 = encode(images) (with gradients), t, the noise (`sample_noise`, or
        `noise_like(x0)`), and x_t = add_noise(x0, noise, t) (without gradients)."""
        x0 = self.prior.encode(images)
        t = self.sample_timesteps(x0.shape[0], step, x0.device)
        noise = (noise_like or self.sample_noise)(x0)
        with torch.no_grad():
            x_t = add_noise(self.prior.alphas_cumprod, x0.detach(), noise, t)
        return x0, t, noise, x_t

    def clip_value(self, step: int) -> Optional[float]:
        if self.config.grad_clip is None:
            return None
        return evaluate_schedule(self.config.grad_clip, step, self.total_steps)

    def guided_eps(self, x_t: Tensor, t: Tensor, emb: TextEmbeddings, cams: Optional[Cameras]) -> Tensor:
        """CFG epsilon e_u + s * delta with one prior call (the cond branch alone when s == 1 without Perp-Neg)."""
        if emb.negatives is None:
            if self.cfg_scale == 1.0:
                return self.prior.predict_eps(x_t, t, emb.cond, cams)
            e_c, e_u = self.cond_and_uncond_eps(x_t, t, emb, cams)
            return cfg_combine(e_c, e_u, self.cfg_scale)
        e_u, delta = self.guidance_delta(x_t, t, emb, cams)
        return e_u + self.cfg_scale * delta

    def guidance_delta(self, x_t: Tensor, t: Tensor, emb: TextEmbeddings, cams: Optional[Cameras]) -> tuple[Tensor, Tensor]:
        """(e_u, delta) with CFG = e_u + s * delta: delta = e_c - e_u, or with Perp-Neg's negatives
        e_pos + sum_i w_i perp(e_neg_i - e_u, e_pos), e_pos = e_c - e_u; one batched prior call of 2 + K branches."""
        if emb.negatives is None or emb.negative_weights is None:
            e_c, e_u = self.cond_and_uncond_eps(x_t, t, emb, cams)
            return e_u, e_c - e_u
        n = 2 + emb.negatives.shape[1]
        texts = torch.cat([emb.cond, emb.uncond, *emb.negatives.unbind(1)])
        eps = self.prior.predict_eps(torch.cat([x_t] * n), t.repeat(n), texts, repeat_cams(cams, n)).chunk(n)
        e_c, e_u = eps[0], eps[1]
        return e_u, perp_neg_delta(e_c - e_u, [e - e_u for e in eps[2:]], emb.negative_weights)

    def cond_and_uncond_eps(self, x_t: Tensor, t: Tensor, emb: TextEmbeddings, cams: Optional[Cameras]) -> tuple[Tensor, Tensor]:
        """(e(x_t; y), e(x_t; neg)) from one batched prior call."""
        both = self.prior.predict_eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([emb.cond, emb.uncond]), repeat_cams(cams))
        e_c, e_u = both.chunk(2)
        return e_c, e_u

    def weight(self, t: Tensor, ndim: int) -> Tensor:
        w = weighting(self.config.weighting, self.prior.alphas_cumprod, t)
        return w.view((-1,) + (1,) * (ndim - 1))

    def ddim_invert(self, x0: Tensor, t: Tensor, emb: Tensor, cams: Optional[Cameras], stride: int) -> Tensor:
        """Deterministic DDIM inversion from x0 (taken as x at t = 0) up to per-view timesteps t.

        Steps of `stride` timesteps with the prior's prediction under `emb` (the null prompt for
        ISM/TSM/CSM); rows that reached their t stay put. ceil(max(t) / stride) prior calls.
        """
        x = x0
        cur = torch.zeros_like(t)
        while bool((cur < t).any()):
            nxt = torch.minimum(cur + stride, t)
            eps = self.prior.predict_eps(x, cur, emb, cams)
            x = ddim_step(self.prior.alphas_cumprod, x, eps, cur, nxt)
            cur = nxt
        return x

    def output(self, x0: Tensor, grad: Tensor, step: int, t: Tensor, images: Optional[Tensor] = None,
               denoised: Optional[tuple[Tensor, Tensor]] = None, **logs: float) -> ObjectiveOutput:
        """The loss for gradient `grad` (before grad_scale) on x0, with the shared logs.

        With `pixel_grad_clip` set, a hook on `images` (the renders) clips each pixel's gradient.
        `denoised` = (x_t, the guided eps at t) gives the output its x0 preview (decoded only when
        asked for: the live viewer shows it).
        """
        grad = self.config.grad_scale * grad
        if self.config.pixel_grad_clip is not None and images is not None and images.requires_grad:
            images.register_hook(pixelwise_clip(self.config.pixel_grad_clip))
        if self.config.image_space and images is not None and images.ndim == 4:
            loss = self.image_space_loss(images, x0, grad, step)
        else:
            loss = reparameterised_loss(x0, grad, self.clip_value(step))
        if self.config.image_term_weight and denoised is not None and images is not None and images.ndim == 4:
            loss = loss + self.image_term_loss(images, denoised, t)
        base = {"t_mean": float(t.float().mean()), "grad_norm": float(grad.norm() / x0.shape[0])}
        return ObjectiveOutput(loss=loss, logs={**base, **logs}, preview=self._preview(denoised, t))

    def _preview(self, denoised: Optional[tuple[Tensor, Tensor]], t: Tensor) -> Optional[Callable[[], Tensor]]:
        """Tweedie's x0 from (x_t, eps) decoded to images, deferred (None for clips: previews are of images)."""
        if denoised is None or denoised[0].ndim != 4:
            return None
        x_t, eps = denoised

        def decode() -> Tensor:
            with torch.no_grad():
                return self.prior.decode(predict_x0(self.prior.alphas_cumprod, x_t, eps, t)).float().clamp(0, 1)
        return decode

    def image_space_loss(self, images: Tensor, x0: Tensor, grad: Tensor, step: int) -> Tensor:
        """0.5 |render - decode(x0 - g)|^2 / B at the decoded target's resolution (`image_space`)."""
        with torch.no_grad():
            target = self.prior.decode((x0 - clean_gradient(grad, self.clip_value(step))).detach()).to(images.dtype)
        renders = resized_like(images[:, :3], target)
        return 0.5 * ((renders - target) ** 2).sum() / images.shape[0]

    def image_term_loss(self, images: Tensor, denoised: tuple[Tensor, Tensor], t: Tensor) -> Tensor:
        """HiFA's image-space term (`image_term_weight`): gradient weight * grad_scale * w(t) (alpha_t / sigma_t)
        (render - decode(x0_hat)) / B on the renders, at the decoded image's resolution."""
        x_t, eps = denoised
        with torch.no_grad():
            target = self.prior.decode(predict_x0(self.prior.alphas_cumprod, x_t, eps, t)).to(images.dtype)
            alpha, sigma = noise_coefficients(self.prior.alphas_cumprod, t, 4)
            scale = self.config.image_term_weight * self.config.grad_scale * self.weight(t, 4) * alpha / sigma
        renders = resized_like(images[:, :3], target)
        return reparameterised_loss(renders, scale.to(renders) * (renders.detach() - target))


def resized_like(renders: Tensor, target: Tensor) -> Tensor:
    """Renders [B,3,H,W] bilinearly resized (antialiased when shrinking) to the target's size; differentiable."""
    if renders.shape[-2:] == target.shape[-2:]:
        return renders
    down = renders.shape[-1] > target.shape[-1]
    return torch.nn.functional.interpolate(renders, size=target.shape[-2:], mode="bilinear", align_corners=False, antialias=down)


def perpendicular_component(a: Tensor, b: Tensor) -> Tensor:
    """a - (<a, b> / |b|^2) b per sample (dim 0), the inner product over all other dims; a where b = 0."""
    dims = tuple(range(1, a.ndim))
    coef = (a * b).sum(dim=dims, keepdim=True) / (b * b).sum(dim=dims, keepdim=True).clamp_min(1e-30)
    return a - coef * b


def perp_neg_delta(e_pos: Tensor, e_negs: list[Tensor], weights: Tensor) -> Tensor:
    """Perp-Neg's guidance direction e_pos + sum_i w_i perp(e_neg_i, e_pos); weights [B,K] (GUIDANCE.md 13.3)."""
    delta = e_pos
    shape = (-1,) + (1,) * (e_pos.ndim - 1)
    for i, e_neg in enumerate(e_negs):
        delta = delta + weights[:, i].to(e_pos).view(shape) * perpendicular_component(e_neg, e_pos)
    return delta


def pixelwise_clip(clip: float) -> Any:
    """A gradient hook on renders [B,C,H,W]: every pixel's gradient scaled so max_c |g_c| <= clip."""

    def hook(g: Tensor) -> Tensor:
        scale = (clip / g.abs().clamp_min(1e-30)).clamp(max=1.0).amin(dim=1, keepdim=True)
        return g * scale

    return hook


def repeat_cams(cams: Optional[Cameras], n: int = 2) -> Optional[Cameras]:
    """The camera batch repeated n times (one copy per stacked prediction branch)."""
    if cams is None:
        return None
    idx = torch.arange(len(cams)).repeat(n).to(cams.device)
    return cams[idx]

