"""Score Distillation Sampling (DreamFusion; GUIDANCE.md section 1).

grad_x0 = w(t) * (CFG(e(x_t; y), e(x_t; neg), s) - eps),  x_t = alpha_t x0 + sigma_t eps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.objective import OBJECTIVES, ObjectiveOutput
from ..core.types import TextEmbeddings
from .base import BaseGuidanceConfig, Guidance


@dataclass
class SDSConfig(BaseGuidanceConfig):
    """SDS: the defaults of threestudio's stable-diffusion-guidance, in the diffusers CFG form."""


@OBJECTIVES.register("sds")
class SDSGuidance(Guidance):
    """Plain SDS."""

    Config = SDSConfig
    config: SDSConfig

    def distil(self, images: Tensor, cams: Cameras, emb: TextEmbeddings, step: int) -> ObjectiveOutput:
        x0, t, noise, x_t = self.noised_latents(images, step)
        with torch.no_grad():
            eps_hat = self.guided_eps(x_t, t, emb, cams)
            grad = self.weight(t, x0.ndim) * (eps_hat - noise)
        return self.output(x0, grad, step, t, images, denoised=(x_t, eps_hat))
