"""toyworld-sd: the Stable Diffusion prior with a small model trained on toyworld, scored against ground truth.

Every Stable Diffusion code path runs unchanged (`StableDiffusionPrior`: VAE encoder with
gradients, the CLIP text encoder, the UNet, CFG, VSD's LoRA copy); the model is the one
`tools/train_toyworld_sd.py` made (shipped in `model/`, or `--prior.model PATH` to another).
Because its data are toyworld's renders, runs are scored as toyworld runs are (mask IoU,
PSNR, back-view PSNR, modes, chamfer), and prompts must name catalogue objects.

Its defaults are `sd`'s except one: SDS's CFG scale is 7.5, not 100. On this small model CFG 100
over-saturates and grows a second head on the duck (mask IoU 0.74 against 0.78 at 7.5, 400
steps; docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ...core.cameras import Cameras, OrbitSamplerConfig
from ...core.mesh_file import ColouredMesh
from ...core.types import ReferenceImage, RenderOutput
from ..base import PRIORS, PriorConfig
from ..diffusers.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior
from ..toyworld.materials import render_material_truth
from ..toyworld.prior import catalogue_modes, render_ground_truth

SHIPPED_MODEL = Path(__file__).resolve().parent / "model"
"""The model `tools/train_toyworld_sd.py` trained (its training.json and loss curve beside it)."""
BUILTIN = "builtin"


@dataclass
class ToyworldSDConfig(StableDiffusionConfig):
    """Stable Diffusion settings, with the toyworld-trained model and its own defaults."""

    model: str = BUILTIN
    """'builtin' (the shipped toyworld-sd model), or a local diffusers folder of another one."""
    cfg_scale: float = 7.5
    """SDS's (and CSD's) default CFG scale: 7.5, not SD's 100, which over-saturates this small model."""

    def located(self) -> StableDiffusionConfig:
        """The same settings as a plain StableDiffusionConfig, `model` resolved to a path."""
        values = {f.name: getattr(self, f.name) for f in fields(StableDiffusionConfig)}
        values["model"] = str(SHIPPED_MODEL) if self.model == BUILTIN else self.model
        return StableDiffusionConfig(**values)

    def check(self) -> None:
        self.located().check()


@PRIORS.register("toyworld-sd")
class ToyworldSDPrior(StableDiffusionPrior):
    """`StableDiffusionPrior` on the toyworld-sd model, with toyworld's ground truth (eval/scoring.py)."""

    Config = ToyworldSDConfig  # type: ignore[assignment]
    has_ground_truth = True
    reads_image = True

    def __init__(self, config: ToyworldSDConfig, sampler_config: Optional[OrbitSamplerConfig] = None,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(config.located(), sampler_config, device)  # type: ignore[arg-type]
        self.config = config
        self._model_id = f"{self._model_id}:{self._fingerprint()}"  # a retrained model in the same folder embeds anew

    @classmethod
    def latent_channels(cls, config: PriorConfig) -> Optional[int]:
        """The shipped (or given) model's VAE latent channels."""
        assert isinstance(config, ToyworldSDConfig)
        return super().latent_channels(config.located())

    @classmethod
    def check_prompt(cls, config: PriorConfig, prompt: str) -> None:
        """Prompts name catalogue objects: runs are scored against them."""
        catalogue_modes(prompt)

    def condition_on_image(self, reference: ReferenceImage) -> str:
        """Image-to-3D, scored: the catalogue object the image shows becomes the prompt (toyworld/identify.py)."""
        from ..toyworld.identify import identify_catalogue_object

        return identify_catalogue_object(reference, self.device)

    def modes(self, prompt: str) -> list[ColouredMesh]:
        """The catalogue object(s) the prompt names, view phrase ignored."""
        return catalogue_modes(prompt)

    def render_ground_truth(self, mesh: ColouredMesh, cams: Cameras) -> RenderOutput:
        return render_ground_truth(mesh, cams, self.device)

    def material_truth(self, mesh: ColouredMesh, cams: Cameras) -> tuple[Tensor, Tensor]:
        """The mesh's unshaded [albedo, roughness, metallic] maps and alpha (toyworld/materials.py)."""
        return render_material_truth(mesh, cams, self.device)
