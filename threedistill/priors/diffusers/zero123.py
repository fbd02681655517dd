"""Zero-1-to-3 / Stable Zero123 (Liu et al. 2023) as a frozen image-conditioned prior: `--prior zero123`.

It is a Stable Diffusion UNet with 8 input channels (GUIDANCE.md section 13.7): the noisy latent
and the reference image's VAE latent (the distribution's mode, unscaled, as the original model
reads it), with cross-attention on one token: the CLIP image embedding of the reference
concatenated with the camera relative to the reference view,

    [d_polar (radians), sin d_azimuth, cos d_azimuth, d_distance]                    (Zero123, XL)
    [d_polar (radians), sin d_azimuth, cos d_azimuth, polar of the reference (radians)]  (Stable Zero123)

projected 772 -> 768 by a linear layer. The unconditional branch zeroes both the token and the
latent (as Zero123 was trained). d_polar = -(elevation - reference elevation), as threestudio's
zero123 guidance computes it.

Models (`--prior.model`, default `ashawkey/zero123-xl-diffusers`): the public diffusers-format
conversions, loaded component by component through priors/diffusers/loading.py (offline unless
`allow_download`): `vae`, `image_encoder` (CLIPVisionModelWithProjection), `unet`, `scheduler` and
the projection, named `clip_camera_projection` (`proj`, ashawkey/zero123-xl-diffusers and
ashawkey/stable-zero123-diffusers, pipeline Zero123Pipeline) or `cc_projection` (`projection`,
kxic/zero123-xl-diffusers, pipeline Zero1to3StableDiffusionPipeline).

The prior is conditioned once per stage on the run's reference image (`condition_on_image`);
its text embeddings only say conditional (any text) or unconditional (the empty text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ...core.cameras import Cameras, OrbitSamplerConfig
from ...core.errors import UserError
from ...core.runtime import quiet_libraries
from ...core.types import ReferenceImage
from ..base import PRIORS, GuidanceDefaults, Prior, PriorConfig
from .loading import ModelKind, ModelLocation, load_pipeline, locate_model, model_key, resolve_dtype
from .mvdream import load_strict

PIPELINE_CLASSES = ("Zero123Pipeline", "Zero1to3StableDiffusionPipeline")
ZERO123_MODEL = ModelKind("Zero123", "--prior", "use --prior sd with --prompt TEXT, or --prior toyworld", pipeline_classes=PIPELINE_CLASSES,
                          class_hint=" (a diffusers-format Zero123 folder, e.g. ashawkey/zero123-xl-diffusers)")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_TEXT = "the reference image"
"""What the stage's prompt becomes: any non-empty text is the conditional branch."""


class CLIPCameraProjection(ModelMixin, ConfigMixin):
    """The 772 -> 768 projection in ashawkey's layout (`clip_camera_projection`, weights `proj.*`)."""

    config_name = "config.json"  # type: ignore[assignment]

    @register_to_config
    def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class CCProjection(ModelMixin, ConfigMixin):
    """The same projection in kxic's layout (`cc_projection`, weights `projection.*`)."""

    config_name = "config.json"  # type: ignore[assignment]

    @register_to_config
    def __init__(self, in_channel: int = 772, out_channel: int = 768) -> None:
        super().__init__()
        self.projection = nn.Linear(in_channel, out_channel)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(x)


PROJECTIONS: dict[str, type[ModelMixin]] = {"clip_camera_projection": CLIPCameraProjection, "cc_projection": CCProjection}


@dataclass
class Zero123Config(PriorConfig):
    """A diffusers-format Zero123 / Stable Zero123 checkpoint, conditioned on the run's `--image`."""

    model: str = "ashawkey/zero123-xl-diffusers"
    """Hugging Face model id or local diffusers-format Zero123 folder."""
    allow_download: bool = False
    """Download from the Hugging Face Hub (default: local files and the local HF cache only)."""
    dtype: Literal["auto", "float16", "float32"] = "auto"
    """UNet / image-encoder dtype; auto = float16 on CUDA, float32 on CPU (the VAE stays float32)."""
    camera_embedding: Literal["auto", "zero123", "stable-zero123"] = "auto"
    """The 4th camera number: zero123 = distance change, stable-zero123 = the reference's polar angle
    (auto: stable-zero123 when the model's name contains 'stable')."""
    cfg_scale: float = 3.0
    """Default CFG scale over the image condition (threestudio's zero123 guidance: 3)."""
    min_step: int = 20
    """Default smallest timestep."""
    max_step: float = 980
    """Default largest timestep."""

    def check(self) -> None:
        locate_model(self.model, self.allow_download, ZERO123_MODEL)

    def stable(self) -> bool:
        return self.camera_embedding == "stable-zero123" or (self.camera_embedding == "auto" and "stable" in self.model.lower())


def _load(location: ModelLocation) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    index = location.index or DiffusionPipeline.load_config(location.source, local_files_only=location.local_files_only)
    names = [name for name in PROJECTIONS if name in index]
    if not names:
        raise ValueError(f"its model_index.json lists no camera projection ({' or '.join(PROJECTIONS)})")

    def sub(cls: Any, name: str) -> Any:
        return cls.from_pretrained(location.source, subfolder=name, local_files_only=location.local_files_only)

    return {"vae": sub(AutoencoderKL, "vae"), "image_encoder": sub(CLIPVisionModelWithProjection, "image_encoder"),
            "unet": load_strict(UNet2DConditionModel, location, "unet"), "scheduler": sub(DDIMScheduler, "scheduler"),
            "projection": load_strict(PROJECTIONS[names[0]], location, names[0])}


@PRIORS.register("zero123")
class Zero123Prior(Prior):
    """The Zero123 UNet, VAE, CLIP image encoder and camera projection behind `DiffusionPrior` (module docstring)."""

    Config = Zero123Config
    config: Zero123Config
    reads_image = True
    needs_image = True

    def __init__(self, config: Zero123Config, sampler_config: Optional[OrbitSamplerConfig] = None,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(config, sampler_config or OrbitSamplerConfig(), device)
        parts = load_pipeline(config.model, config.allow_download, ZERO123_MODEL, _load)
        channels = int(parts["unet"].config.in_channels)
        if channels != 8:
            raise UserError(f"'{config.model}' is not a Zero123 model (its UNet takes {channels} input channels, not 8); "
                            f"{ZERO123_MODEL.fix()}")
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.unet = self._freeze(parts["unet"], self.dtype)
        self.vae = self._freeze(parts["vae"], torch.float32)
        self.image_encoder = self._freeze(parts["image_encoder"], self.dtype)
        self.projection = self._freeze(parts["projection"], self.dtype)
        scheduler = parts["scheduler"]
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().float().to(self.device)
        self.scaling_factor = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.resolution = int(self.unet.config.sample_size) * 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.defaults = GuidanceDefaults(cfg_scale=config.cfg_scale, min_step=config.min_step, max_step=config.max_step,
                                         view_dependent_prompts=False, cfg_scale_low=config.cfg_scale)
        self._name = model_key(config.model)
        self._image: Optional[tuple[Tensor, Tensor, Cameras]] = None

    def _freeze(self, module: Any, dtype: torch.dtype) -> Any:
        with quiet_libraries("diffusers"):
            module = module.to(self.device, dtype=dtype)
        module.requires_grad_(False)
        return module.eval()

    # ------------------------------------------------------------------ the reference image
    def condition_on_image(self, reference: ReferenceImage) -> str:
        """Its CLIP embedding and VAE latent (both once) and its camera, which novel views are relative to."""
        with torch.no_grad():
            rgb = reference.rgb.to(self.device, torch.float32)
            size = int(self.image_encoder.config.image_size)
            clip_in = F.interpolate(rgb, size=(size, size), mode="bicubic", align_corners=True).clamp(0, 1)
            mean, std = (torch.tensor(v, device=self.device).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
            embedding = self.image_encoder((clip_in - mean) / std).image_embeds.float()[:, None]  # [1,1,D]
            latent = self.vae.encode(self._resize(rgb) * 2.0 - 1.0).latent_dist.mode().float()
        self._image = (embedding, latent, reference.cameras.to(self.device))
        return IMAGE_TEXT

    def _resize(self, images: Tensor) -> Tensor:
        if images.shape[-2:] == (self.resolution, self.resolution):
            return images
        down = images.shape[-1] > self.resolution
        return F.interpolate(images, size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=down)

    def relative_camera(self, cams: Cameras) -> Tensor:
        """[B,4] camera numbers relative to the reference view (see the module docstring)."""
        if self._image is None:
            raise UserError("--prior zero123 is conditioned on an image; pass --image PATH")
        ref = self._image[2]
        d_polar = torch.deg2rad(-(cams.elevation.float() - ref.elevation.float()))
        d_azimuth = torch.deg2rad(cams.azimuth.float() - ref.azimuth.float())
        last = torch.deg2rad(90.0 - ref.elevation.float()).expand_as(d_polar) if self.config.stable() else \
            cams.distance.float() - ref.distance.float()
        return torch.stack([d_polar, torch.sin(d_azimuth), torch.cos(d_azimuth), last], dim=-1)

    # ------------------------------------------------------------------ DiffusionPrior
    def embed(self, texts: list[str]) -> Tensor:
        """1 (conditional) for any text, 0 (unconditional) for the empty text."""
        return torch.tensor([1.0 if t.strip() else 0.0 for t in texts], device=self.device)

    def encode(self, images: Tensor) -> Tensor:
        """Renders [B,3,H,W] in [0,1] -> VAE latents (mean, scaled), differentiably."""
        dist = self.vae.encode(self._resize(images[:, :3]) * 2.0 - 1.0).latent_dist
        return (dist.mean * self.scaling_factor).to(images.dtype)

    @torch.no_grad()
    def decode(self, x0: Tensor) -> Tensor:
        img = self.vae.decode(x0.to(self.device, torch.float32) / self.scaling_factor).sample
        return ((img + 1.0) * 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras: Optional[Cameras] = None) -> Tensor:
        """Epsilon for novel views `cameras` of the reference object; rows whose embedding is 0 are unconditional."""
        if cameras is None:
            raise ValueError("zero123 predicts novel views: pass their cameras")
        if self._image is None:
            raise UserError("--prior zero123 is conditioned on an image; pass --image PATH")
        embedding, latent, _ = self._image
        cond = (emb.to(self.device).reshape(len(emb), -1)[:, :1] > 0.5).to(torch.float32)  # [B,1]
        pose = self.relative_camera(cameras.to(self.device))
        token = torch.cat([embedding.expand(len(pose), 1, -1), pose[:, None]], dim=-1)
        token = self.projection(token.to(self.dtype)).float() * cond[:, :, None]
        concat = latent.expand(len(pose), -1, -1, -1) * cond[:, :, None, None]
        x = torch.cat([x_t.to(self.device, torch.float32), concat], dim=1).to(self.dtype)
        out = self.unet(x, t.to(self.device), encoder_hidden_states=token.to(self.dtype)).sample.float()
        return out.to(x_t.dtype)
