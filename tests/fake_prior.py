"""A diffusion prior whose epsilon predictions are known in closed form (for guidance tests)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from threedistill.priors.base import GuidanceDefaults, scaled_linear_alphas_cumprod


class KnownEpsPrior:
    """encode = identity; eps(x_t, t, emb) = emb_value * ones + slope * x_t.

    Embeddings are scalars, so cond / uncond / null predictions differ in a known way.
    """

    num_train_timesteps = 1000
    resolution = 8

    def __init__(self, slope: float = 0.0, defaults: Optional[GuidanceDefaults] = None) -> None:
        self.alphas_cumprod = scaled_linear_alphas_cumprod()
        self.slope = slope
        self.defaults = defaults or GuidanceDefaults(cfg_scale=1.0, min_step=20, max_step=980)
        self.calls = 0

    def encode(self, images: Tensor) -> Tensor:
        return images

    def decode(self, x0: Tensor) -> Tensor:
        return x0

    def embed(self, texts: list[str]) -> Tensor:
        return torch.tensor([float(len(t)) for t in texts])

    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras=None) -> Tensor:
        self.calls += 1
        return emb.view(-1, *([1] * (x_t.ndim - 1))).to(x_t) + self.slope * x_t
