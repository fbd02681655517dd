"""MVDream (Shi et al. 2023) as a frozen multi-view prior: `--prior mvdream`.

The model is a diffusers-format MVDream folder or Hub id (default
`ashawkey/mvdream-sd2.1-diffusers`): model_index.json names an `MVDreamPipeline` with `vae`
(AutoencoderKL), `text_encoder` / `tokenizer` (SD 2.1's CLIP), `scheduler` (DDIM) and `unet`, a
`MultiViewUNetModel` (mv_unet.py, our implementation of its layout). The folders are loaded one
by one through priors/diffusers/loading.py (offline unless `allow_download`, one-line errors
naming the model); the UNet's weights must match its config exactly (no missing or unexpected
key).

Everything else is the Stable Diffusion prior's (stable_diffusion.py): 256 px renders through the
VAE encoder with gradients, CLIP text embeddings, CFG in the guidance. What differs:

* the prior scores groups of `views` (4) renders of one object jointly: `view_group` tells the
  sampler to draw groups at one elevation, 360/views degrees of azimuth apart
  (core/cameras.py), and the guidance to draw one timestep per group;
* each view's camera goes into the UNet: its camera-to-world matrix in threestudio's convention
  (OpenGL camera axes, z-up world, which is ours up to the camera axes), translation normalised
  to unit length, flattened to 16 numbers (MVDream-threestudio's `rotation` camera condition).
  Without cameras (predict_eps(cameras=None)) the camera embedding is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from ...core.cameras import Cameras, OrbitSamplerConfig
from ...core.errors import UserError
from ..base import PRIORS
from .loading import ModelKind, ModelLocation, load_pipeline, locate_model, model_key
from .stable_diffusion import StableDiffusionConfig, StableDiffusionPrior

PIPELINE_CLASS = "MVDreamPipeline"
MVDREAM_MODEL = ModelKind("MVDream", "--prior", "use --prior sd or toyworld", pipeline_classes=(PIPELINE_CLASS,),
                          class_hint=" (a diffusers-format MVDream folder, e.g. ashawkey/mvdream-sd2.1-diffusers)")


@dataclass
class MVDreamConfig(StableDiffusionConfig):
    """A diffusers-format MVDream checkpoint; the Stable Diffusion prior's settings plus the view group."""

    model: str = "ashawkey/mvdream-sd2.1-diffusers"
    """Hugging Face model id or local diffusers-format MVDream folder."""
    views: int = 4
    """Views scored jointly (the model was trained on 4; the sampler draws groups of this many)."""
    cfg_scale: float = 50.0
    """Default CFG scale (MVDream-threestudio: 50)."""

    def view_group(self) -> int:
        return self.views

    def check(self) -> None:
        """The settings, and the model on disk (or downloads allowed); nothing is loaded."""
        if self.views < 1:
            raise UserError(f"--prior.views must be >= 1, got {self.views}")
        for flag, value in (("rgb-as-latents", self.rgb_as_latents), ("attention-slicing", self.attention_slicing),
                            ("controlnet", self.controlnet)):
            if value:
                raise UserError(f"--prior.{flag} is not supported by --prior mvdream; drop it")
        locate_model(self.model, self.allow_download, MVDREAM_MODEL)


def load_strict(cls: Any, location: ModelLocation, subfolder: str) -> Any:
    """`cls.from_pretrained(subfolder)` that refuses weights whose names or shapes differ from the config's model."""
    model, info = cls.from_pretrained(location.source, subfolder=subfolder, local_files_only=location.local_files_only,
                                      output_loading_info=True, low_cpu_mem_usage=False)
    for problem in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = info.get(problem) or []
        if keys:
            first = keys[0] if isinstance(keys[0], str) else keys[0][0]
            raise ValueError(f"its {subfolder} weights do not fit the {subfolder} config: {len(keys)} "
                             f"{problem.replace('_', ' ')} (e.g. {first})")
    return model


def _load(location: ModelLocation) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from .mv_unet import MultiViewUNetModel

    def sub(cls: Any, name: str) -> Any:
        return cls.from_pretrained(location.source, subfolder=name, local_files_only=location.local_files_only)

    return {"unet": load_strict(MultiViewUNetModel, location, "unet"), "vae": sub(AutoencoderKL, "vae"),
            "text_encoder": sub(CLIPTextModel, "text_encoder"), "tokenizer": sub(CLIPTokenizer, "tokenizer"),
            "scheduler": sub(DDIMScheduler, "scheduler")}


def camera_condition(cams: Cameras) -> Tensor:
    """MVDream's camera input [B,16]: c2w with OpenGL camera axes (ours are OpenCV: y and z flipped), the
    position normalised to the unit sphere, flattened row by row."""
    c2w = cams.c2w.clone().float()
    c2w[:, :3, 1:3] = -c2w[:, :3, 1:3]
    c2w[:, :3, 3] = torch.nn.functional.normalize(c2w[:, :3, 3], dim=-1)
    return c2w.flatten(1)


@PRIORS.register("mvdream")
class MVDreamPrior(StableDiffusionPrior):
    """The multi-view UNet + SD 2.1's VAE and text encoder behind `DiffusionPrior` (see the module docstring)."""

    Config = MVDreamConfig
    config: MVDreamConfig
    provides_variational_model = False

    def __init__(self, config: MVDreamConfig, sampler_config: Optional[OrbitSamplerConfig] = None,
                 device: torch.device | str = "cpu") -> None:
        config.check()
        parts = load_pipeline(config.model, config.allow_download, MVDREAM_MODEL, _load)
        self._setup(parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["scheduler"], config, device,
                    None, None, model_id=model_key(config.model), force_zeros_for_empty_prompt=False)
        self.view_group = config.views

    @classmethod
    def from_components(cls, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any,
                        config: Optional[StableDiffusionConfig] = None, device: torch.device | str = "cpu",
                        text_encoder_2: Any = None, tokenizer_2: Any = None) -> "MVDreamPrior":
        """Wrap already-built components (tests, benchmarks)."""
        config = config if isinstance(config, MVDreamConfig) else MVDreamConfig()
        self = cls.__new__(cls)
        self._setup(unet, vae, text_encoder, tokenizer, scheduler, config, device, None, None, model_id=None,
                    force_zeros_for_empty_prompt=False)
        self.view_group = config.views
        return self

    def _latent_size(self, unet: Any) -> int:
        return int(unet.config["image_size"])

    @property
    def model_id(self) -> str:
        return f"mvdream:{self._model_id}"

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras: Optional[Cameras] = None) -> Tensor:
        """Epsilon for groups of `views` latents [(B V),4,h,w] (one UNet call; no grad)."""
        views = self.view_group
        if x_t.shape[0] % views:
            raise ValueError(f"--prior mvdream scores groups of {views} views, got a batch of {x_t.shape[0]}")
        x = x_t.to(self.device, self.dtype)
        camera = camera_condition(cameras).to(self.device, self.dtype) if cameras is not None else None
        out = self._unet_forward(x, t.to(self.device), encoder_hidden_states=emb.to(self.device, self.dtype), camera=camera,
                                 num_frames=views).sample.float()
        return self.output_to_eps(out, x_t, t).to(x_t.dtype)
