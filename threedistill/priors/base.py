"""The diffusion-prior interface and the noise-schedule helpers every objective shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..cameras import Cameras


@dataclass
class TextEmbeddings:
    """Prompt embeddings travelling together, one row per view: never split positionally."""

    cond: Tensor
    uncond: Tensor
    null: Tensor

    def index(self, idx: Tensor | slice) -> "TextEmbeddings":
        return TextEmbeddings(self.cond[idx], self.uncond[idx], self.null[idx])


@dataclass
class GuidanceDefaults:
    """Guidance settings that depend on the prior (overridable per run)."""

    cfg_scale: float
    min_step: int
    max_step: "float | list[tuple[float, float]]"
    view_dependent_prompts: bool = False


@runtime_checkable
class DiffusionPrior(Protocol):
    """A frozen 2D diffusion model seen through the few operations score distillation needs."""

    num_train_timesteps: int
    alphas_cumprod: Tensor  # [T] on the prior's device
    resolution: int  # pixel resolution renders are resized to before encoding
    defaults: GuidanceDefaults

    def encode(self, images: Tensor) -> Tensor:
        """Differentiable map from renders [B,3,H,W] in [0,1] to the diffusion space x0."""

    def decode(self, x0: Tensor) -> Tensor:
        """Map x0 back to images [B,3,h,w] in [0,1]."""

    def embed(self, texts: list[str]) -> Tensor:
        """Embeddings [len(texts), ...] of prompts; cached by the caller (prompts.py)."""

    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras: Optional[Cameras] = None) -> Tensor:
        """Epsilon prediction for noisy x_t at integer timesteps t [B] (no grad)."""


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """Stable Diffusion's noise schedule: scaled-linear betas, cumulative product of alphas."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def noise_coefficients(alphas_cumprod: Tensor, t: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
    """alpha_t = sqrt(abar_t) and sigma_t = sqrt(1 - abar_t), shaped to broadcast over x."""
    abar = alphas_cumprod.to(t.device)[t.long()]
    shape = (-1,) + (1,) * (ndim - 1)
    return abar.sqrt().view(shape), (1.0 - abar).sqrt().view(shape)


def add_noise(alphas_cumprod: Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Forward diffusion x_t = alpha_t x0 + sigma_t eps."""
    a, s = noise_coefficients(alphas_cumprod, t, x0.ndim)
    return a * x0 + s * noise


def predict_x0(alphas_cumprod: Tensor, x_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """Tweedie's estimate x0 = (x_t - sigma_t eps) / alpha_t."""
    a, s = noise_coefficients(alphas_cumprod, t, x_t.ndim)
    return (x_t - s * eps) / a
