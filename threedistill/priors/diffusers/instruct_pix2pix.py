"""InstructPix2Pix as the image editor of Instruct-NeRF2NeRF's iterative dataset update (`--method in2n`).

One update (`InstructPix2PixEditor.edit`), as in Instruct-NeRF2NeRF (Haque et al. 2023):

1. the current render is encoded to VAE latents (distribution mean, scaled by the VAE factor);
2. noise is added at an integer timestep t ~ U[lower, upper] * num_train_timesteps
   (in2n: 0.70 / 0.98 of the 1000 training steps);
3. DDIM (eta = 0) denoises from t to 0 in `steps` evenly spaced steps. The UNet input is the
   noisy latent concatenated with the ORIGINAL image's latents (8 channels; the conditioning
   latent is the unscaled VAE mode, as in diffusers' pipeline). Guidance is InstructPix2Pix's
   two-scale classifier-free guidance over a 3-way batch (text+image, image only, neither):
   `e = e_none + s_text (e_text_image - e_image) + s_image (e_image - e_none)`;
4. the final latent is decoded to an image in [0,1].

in2n bends the scheduler's `num_train_timesteps` to start the DDIM schedule at t; here the
schedule is built directly from `threedistill.priors.base` (`add_noise`, `ddim_step`,
`predict_x0`) with the pipeline's own `alphas_cumprod`, so t is exactly the one drawn.
Images whose sides are not multiples of the UNet's total downsampling are resized to the next
multiple for the edit and back afterwards.

Loading goes through `diffusers.StableDiffusionInstructPix2PixPipeline` (local diffusers folder
or hub id, local files only unless `allow_download`), with the same one-line errors and
silenced library chatter as the Stable Diffusion prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.errors import UserError
from ..base import add_noise, ddim_step, noise_coefficients, predict_x0
from .loading import ModelKind, ModelLocation, check_tokenizer, load_pipeline, locate_model, resolve_dtype

FLAG = "--guidance"
"""CLI prefix of `InstructPix2PixConfig`'s fields, used in error messages."""
PIPELINE_CLASS = "StableDiffusionInstructPix2PixPipeline"
IP2P_MODEL = ModelKind("InstructPix2Pix", FLAG, pipeline_classes=(PIPELINE_CLASS,), class_hint=" (an InstructPix2Pix model)")


@dataclass
class InstructPix2PixConfig:
    """The InstructPix2Pix model and the settings of one Instruct-NeRF2NeRF dataset update."""

    model: str = "timbrooks/instruct-pix2pix"
    """Hugging Face model id or local diffusers InstructPix2Pix folder."""
    allow_download: bool = False
    """Download from the Hugging Face Hub (default: local files and the local HF cache only)."""
    dtype: Literal["auto", "float16", "float32"] = "auto"
    """UNet/text-encoder dtype; auto = float16 on CUDA, float32 on CPU (the VAE stays float32)."""
    guidance_scale: float = 7.5
    """Text classifier-free guidance scale."""
    image_guidance_scale: float = 1.5
    """Image classifier-free guidance scale."""
    steps: int = 20
    """DDIM steps from the drawn t down to 0."""
    lower_bound: float = 0.70
    """Smallest noise level, as a fraction of the training timesteps (in2n: 0.70)."""
    upper_bound: float = 0.98
    """Largest noise level, as a fraction of the training timesteps (in2n: 0.98)."""

    def check(self) -> None:
        """The settings, and the model on disk (or downloads allowed); nothing is loaded."""
        self.check_settings()
        locate_model(self.model, self.allow_download, IP2P_MODEL)

    def check_settings(self) -> None:
        if not 0.0 <= self.lower_bound <= self.upper_bound < 1.0 or self.steps < 1:
            raise UserError(f"InstructPix2Pix needs 0 <= lower_bound <= upper_bound < 1 and steps >= 1, got "
                            f"{self.lower_bound}, {self.upper_bound}, {self.steps}; fix {FLAG}.lower-bound/upper-bound/steps")


def _load(location: ModelLocation) -> Any:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    return StableDiffusionInstructPix2PixPipeline.from_pretrained(
        location.source, local_files_only=location.local_files_only, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def load_ip2p_pipeline(config: InstructPix2PixConfig) -> Any:
    """`config.model` as a StableDiffusionInstructPix2PixPipeline; every failure is a one-line UserError."""
    pipe = load_pipeline(config.model, config.allow_download, IP2P_MODEL, _load)
    channels = int(pipe.unet.config.in_channels)
    if channels != 8:
        raise UserError(f"'{config.model}' is not an InstructPix2Pix model (its UNet takes {channels} input channels, "
                        f"not 8); {IP2P_MODEL.fix()}, e.g. timbrooks/instruct-pix2pix")
    return pipe


class InstructPix2PixEditor:
    """Frozen InstructPix2Pix components (UNet, VAE, text encoder, tokenizer, noise schedule) editing renders."""

    def __init__(self, pipe: Any, config: InstructPix2PixConfig, device: torch.device | str = "cpu") -> None:
        """Wrap a loaded pipeline's components (use `load` to load one from `config.model`)."""
        self.config = config
        self.device = torch.device(device)
        config.check_settings()
        check_tokenizer(pipe.tokenizer, config.model, FLAG)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.unet = self._freeze(pipe.unet, self.dtype)
        self.vae = self._freeze(pipe.vae, torch.float32)
        self.text_encoder = self._freeze(pipe.text_encoder, self.dtype)
        self.tokenizer = pipe.tokenizer
        sched = pipe.scheduler.config
        self.num_train_timesteps = int(sched.num_train_timesteps)
        self.alphas_cumprod = pipe.scheduler.alphas_cumprod.detach().float().to(self.device)
        self.v_prediction = sched.get("prediction_type", "epsilon") == "v_prediction"
        self.scaling_factor = float(getattr(pipe.vae.config, "scaling_factor", 0.18215))
        vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.size_multiple = vae_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        self._embeddings: dict[str, Tensor] = {}

    @classmethod
    def load(cls, config: InstructPix2PixConfig, device: torch.device | str = "cpu") -> "InstructPix2PixEditor":
        """Load `config.model` (local folder or hub id) onto `device`; failures are one-line UserErrors."""
        return cls(load_ip2p_pipeline(config), config, device)

    def _freeze(self, module: Any, dtype: torch.dtype) -> Any:
        module = module.to(self.device, dtype=dtype)
        module.requires_grad_(False)
        return module.eval()

    @torch.no_grad()
    def _embed(self, instruction: str) -> Tensor:
        """[cond, uncond, uncond] text embeddings [3, L, D] for the 3-way guidance batch (cached)."""
        if instruction not in self._embeddings:
            tokens = self.tokenizer([instruction, ""], padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt").input_ids.to(self.device)
            cond, uncond = self.text_encoder(tokens)[0]
            self._embeddings[instruction] = torch.stack([cond, uncond, uncond])
        return self._embeddings[instruction]

    def _resize(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(images.shape[-2:]) == size:
            return images
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)

    def _eps(self, x_t: Tensor, t: Tensor, cond_latents: Tensor, emb: Tensor) -> Tensor:
        """Guided epsilon for x_t [B,4,h,w] at timestep t (one UNet call over the 3B batch)."""
        B = x_t.shape[0]
        x3 = torch.cat([x_t] * 3)
        image3 = torch.cat([cond_latents, cond_latents, torch.zeros_like(cond_latents)])
        hidden = emb.repeat_interleave(B, dim=0)
        t3 = t.expand(3 * B).to(self.device)
        out = self.unet(torch.cat([x3, image3], dim=1).to(self.dtype), t3, encoder_hidden_states=hidden).sample.float()
        if self.v_prediction:
            a, s = noise_coefficients(self.alphas_cumprod, t3, x3.ndim)
            out = a * out + s * x3
        e_text, e_image, e_none = out.chunk(3)
        cfg = self.config
        return e_none + cfg.guidance_scale * (e_text - e_image) + cfg.image_guidance_scale * (e_image - e_none)

    @torch.no_grad()
    def edit(self, image: Tensor, original: Tensor, instruction: str, generator: torch.Generator) -> Tensor:
        """One Instruct-NeRF2NeRF update: `image` [B,3,H,W] (current renders) edited toward `instruction`,
        conditioned on `original` [B,3,H,W] (the captured views); returns [B,3,H,W] in [0,1] on image's device.

        `generator` (a CPU generator) draws t and the noise.
        """
        if image.shape != original.shape or image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image {tuple(image.shape)} and original {tuple(original.shape)} must both be [B,3,H,W]")
        H, W = image.shape[-2:]
        m = self.size_multiple
        size = (m * math.ceil(H / m), m * math.ceil(W / m))
        x = self._resize(image.float().to(self.device), size) * 2.0 - 1.0
        cond = self._resize(original.float().to(self.device), size) * 2.0 - 1.0
        latents = self.vae.encode(x).latent_dist.mean * self.scaling_factor
        cond_latents = self.vae.encode(cond).latent_dist.mode()

        cfg = self.config
        n = self.num_train_timesteps
        lo, hi = int(cfg.lower_bound * n), int(cfg.upper_bound * n)
        t_start = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        timesteps = torch.linspace(t_start, 0, cfg.steps + 1).round().long().unique_consecutive()
        x_t = add_noise(self.alphas_cumprod, latents, noise, timesteps[:1].to(self.device))
        emb = self._embed(instruction).to(self.dtype)
        for t, t_next in zip(timesteps[:-1], timesteps[1:]):
            t_b, t_next_b = t.view(1).to(self.device), t_next.view(1).to(self.device)
            eps = self._eps(x_t, t_b, cond_latents, emb)
            x_t = ddim_step(self.alphas_cumprod, x_t, eps, t_b, t_next_b) if t_next > 0 else \
                predict_x0(self.alphas_cumprod, x_t, eps, t_b)
        decoded = self.vae.decode(x_t / self.scaling_factor).sample
        edited = ((decoded.float() + 1.0) * 0.5).clamp(0.0, 1.0)
        return self._resize(edited, (H, W)).clamp(0.0, 1.0).to(image.device)
