"""x0-reconstruction guidance (MVDream, GUIDANCE.md section 13.6; Isotropic3D uses the same loss).

Instead of SDS's `w(t) (e_hat - eps)`, the target is the denoised estimate itself:

    x0_hat  = (x_t - sigma_t e_hat) / alpha_t,        e_hat = CFG(e(x_t; y), e(x_t; neg), s)
    x0_hat <- r * x0_hat * std(x0_hat_y) / std(x0_hat) + (1 - r) * x0_hat        (std rescale)
    loss    = 0.5 |x0 - sg(x0_hat)|^2 / B,  i.e. grad on x0 = x0 - x0_hat

x0_hat_y is the estimate from the conditional prediction alone (no CFG); the standard deviations
are taken over each group of views a multi-view prior scores together (`prior.view_group`: 4
for MVDream, one image otherwise), so a high CFG scale (MVDream: 50) cannot blow up the target's
contrast. r = `std_rescale` (0.5; 0 turns the rescale off). There is no w(t): x0 - x0_hat is
(sigma_t / alpha_t) (e_hat - eps), SDS with weight sigma_t / alpha_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.errors import UserError
from ..core.objective import OBJECTIVES, ObjectiveOutput
from ..core.types import TextEmbeddings
from ..priors.base import predict_x0
from .base import BaseGuidanceConfig, Guidance, cfg_combine


@dataclass
class ReconConfig(BaseGuidanceConfig):
    """MVDream-threestudio's `recon_loss` with `recon_std_rescale`."""

    std_rescale: float = 0.5
    """r: how much of the target's contrast is brought back to that of the unguided estimate (0: none, 1: all)."""

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.std_rescale <= 1.0:
            raise UserError(f"--guidance.std-rescale must be in [0, 1], got {self.std_rescale}")


def rescale_std(x0_hat: Tensor, x0_cond: Tensor, group: int, amount: float) -> Tensor:
    """amount * x0_hat * std(x0_cond) / std(x0_hat) + (1 - amount) * x0_hat, the deviations over each
    group of `group` consecutive rows (all their channels and pixels)."""
    if amount == 0.0:
        return x0_hat
    if x0_hat.shape[0] % group:
        group = 1
    shape = (x0_hat.shape[0] // group, -1)
    factor = (x0_cond.reshape(shape).std(dim=1) + 1e-8) / (x0_hat.reshape(shape).std(dim=1) + 1e-8)
    factor = factor.repeat_interleave(group).view((-1,) + (1,) * (x0_hat.ndim - 1))
    return amount * x0_hat * factor + (1.0 - amount) * x0_hat


@OBJECTIVES.register("recon")
class ReconGuidance(Guidance):
    """The x0-reconstruction loss with std rescale (see the module docstring)."""

    Config = ReconConfig
    config: ReconConfig

    def distil(self, images: Tensor, cams: Cameras, emb: TextEmbeddings, step: int) -> ObjectiveOutput:
        x0, t, _, x_t = self.noised_latents(images, step)
        with torch.no_grad():
            ac = self.prior.alphas_cumprod
            if self.cfg_scale == 1.0:
                e_c = e_hat = self.prior.predict_eps(x_t, t, emb.cond, cams)
            else:
                e_c, e_u = self.cond_and_uncond_eps(x_t, t, emb, cams)
                e_hat = cfg_combine(e_c, e_u, self.cfg_scale)
            x0_hat = predict_x0(ac, x_t, e_hat, t)
            x0_hat = rescale_std(x0_hat, predict_x0(ac, x_t, e_c, t), self.prior.view_group, self.config.std_rescale)
            grad = x0.detach() - x0_hat
        return self.output(x0, grad, step, t, images)
