"""Delta Denoising Score (Hertz et al.; GUIDANCE.md section 7.1): edit toward a target prompt.

With one t and one eps shared by both branches:

    z_t^tgt = alpha_t z_tgt + sigma_t eps,   z_t^src = alpha_t z_src + sigma_t eps
    grad    = w(t) * (CFG(e(z_t^tgt; y_tgt)) - CFG(e(z_t^src; y_src)))

z_src is the source content in the prior's space (for a 3D edit: the original scene's render
from the same camera, cached per view). Defaults follow the official notebook: t in [50, 950],
w = 1, CFG 7.5 on SD (1 on toyworld). Identical source and target give exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.objective import OBJECTIVES, Needs, ObjectiveOutput
from ..core.schedule import Schedule
from ..core.types import TextEmbeddings
from ..priors.base import add_noise
from .base import BaseGuidanceConfig, Guidance, Weighting


@dataclass
class DDSConfig(BaseGuidanceConfig):
    """DDS: the official notebook's timestep range and uniform weighting."""

    min_step: Optional[Schedule] = 50.0
    max_step: Optional[Schedule] = 949.0
    weighting: Weighting = "uniform"


@OBJECTIVES.register("dds")
class DDSGuidance(Guidance):
    """DDS; call `edit_loss` with latents, or `edit_renders` with renders and the source.

    It needs a source to edit, so `threedistill run` refuses it (`threedistill edit-image` and
    the scene objective `scene-dds` use it)."""

    Config = DDSConfig
    config: DDSConfig
    needs = Needs(prior=True, source_image=True, perp_neg=True)
    uses_low_cfg = True

    def edit_loss(
        self, z_tgt: Tensor, z_src: Tensor, emb_tgt: TextEmbeddings, emb_src: TextEmbeddings,
        cams: Optional[Cameras], step: int, images: Optional[Tensor] = None,
    ) -> ObjectiveOutput:
        """Loss on z_tgt (prior space, with grad) whose gradient is the DDS direction."""
        t = self.sample_timesteps(z_tgt.shape[0], step, z_tgt.device)
        noise = self.sample_noise(z_tgt)
        abar = self.prior.alphas_cumprod
        with torch.no_grad():
            zt_tgt = add_noise(abar, z_tgt.detach(), noise, t)
            zt_src = add_noise(abar, z_src.detach().to(z_tgt), noise, t)
            e_tgt = self.guided_eps(zt_tgt, t, emb_tgt, cams)
            e_src = self.guided_eps(zt_src, t, emb_src, cams)
            grad = self.weight(t, z_tgt.ndim) * (e_tgt - e_src)
        return self.output(z_tgt, grad, step, t, images, denoised=(zt_tgt, e_tgt))

    def edit_renders(
        self, images: Tensor, cams: Cameras, emb: TextEmbeddings, step: int, source_x0: Tensor, source_emb: TextEmbeddings,
    ) -> ObjectiveOutput:
        """DDS on renders: `source_x0` is the source content of the same views in the prior's space."""
        return self.edit_loss(self.prior.encode(images), source_x0, emb, source_emb, cams, step, images)
