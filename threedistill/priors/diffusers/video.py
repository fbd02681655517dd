"""A diffusers text-to-video model (UNet3DConditionModel: ModelScope, zeroscope) as a frozen video prior.

It follows the clip convention of every video prior (`frames`, `is_video = True`):

* `encode(clips [B,F,3,H,W] in [0,1]) -> x0 [B,F,4,h,w]`: each frame goes through the VAE as
  in the image prior (stable_diffusion.py: resize to `resolution`, `2*img-1`, latent mean times
  the scaling factor), differentiably.
* `decode(x0 [B,F,4,h,w]) -> [B,F,3,resolution,resolution]`.
* `predict_eps(x_t [B,F,4,h,w], t [B], emb [B,L,D], cameras)` permutes to the UNet3D layout
  [B,4,F,h,w] and back; cameras are ignored (the model is not camera-aware). CFG is left to
  the guidance, as for SD; v-prediction outputs are converted to epsilon.

Loading, embeddings (CLIP last hidden state, as `TextToVideoSDPipeline` does) and the offline
behaviour are the Stable Diffusion prior's: a local diffusers folder or a Hub id looked up in
the local Hugging Face cache only unless `allow_download`, every failure one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NoReturn, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.cameras import Cameras, OrbitSamplerConfig
from ...core.types import TextEmbeddings
from ...core.errors import UserError
from ..base import PRIORS, PriorConfig, VariationalConfig
from .loading import ModelKind, ModelLocation, load_pipeline, locate_model, model_key
from .stable_diffusion import StableDiffusionPrior

PIPELINE_CLASS = "TextToVideoSDPipeline"
UNET_CLASS = "UNet3DConditionModel"
VIDEO_MODEL = ModelKind("text-to-video", "--prior", "use --prior toyworld-video", pipeline_classes=(PIPELINE_CLASS,),
                        class_hint=" (UNet3DConditionModel); for image models use --prior sd")


@dataclass
class VideoDiffusionConfig(PriorConfig):
    """A diffusers text-to-video checkpoint (UNet3DConditionModel) used as the frozen video prior."""

    model: str = "damo-vilab/text-to-video-ms-1.7b"
    """Hugging Face model id (e.g. cerspense/zeroscope_v2_576w) or local diffusers folder."""
    allow_download: bool = False
    """Download from the Hugging Face Hub (default: local files and the local HF cache only)."""
    dtype: Literal["auto", "float16", "float32"] = "auto"
    """UNet/VAE/text-encoder dtype; auto = float16 on CUDA, float32 on CPU."""
    frames: int = 8
    """Clip length F the prior is queried with."""
    resolution: int = 256
    """Square pixel size frames are resized to before encoding (ModelScope: 256; must divide by the VAE factor)."""
    rgb_as_latents: bool = False
    """Skip the VAE: frames are resized to the latent size and used as latents (see the SD prior)."""
    vae_tiling: bool = False
    """Tiled VAE encode/decode to save memory."""
    compile: bool = False
    """torch.compile the UNet forward."""
    cfg_scale: float = 100.0
    """Default classifier-free guidance scale of SDS (4D-fy's video SDS uses 100)."""
    cfg_scale_low: float = 7.5
    """Default CFG scale of objectives whose target is a model prediction (VSD, ISM, ...)."""
    min_step: int = 20
    """Default smallest timestep."""
    max_step: float = 980
    """Default largest timestep."""

    def clip_frames(self) -> Optional[int]:
        return self.frames

    def check(self) -> None:
        """The model is on disk (or downloads are allowed); nothing is loaded."""
        locate_model(self.model, self.allow_download, VIDEO_MODEL)


def _load(location: ModelLocation) -> Any:
    from diffusers import TextToVideoSDPipeline

    return TextToVideoSDPipeline.from_pretrained(location.source, local_files_only=location.local_files_only)


def load_video_pipeline(config: VideoDiffusionConfig) -> Any:
    """The `TextToVideoSDPipeline` named by `config.model`; every failure is a one-line UserError."""
    return load_pipeline(config.model, config.allow_download, VIDEO_MODEL, _load)


@PRIORS.register("video-sd")
class VideoDiffusionPrior(StableDiffusionPrior):
    """Frozen UNet3DConditionModel + VAE + CLIP text encoder behind the clip convention (module docstring)."""

    Config = VideoDiffusionConfig  # type: ignore[assignment]
    is_video = True
    provides_variational_model = False
    config: VideoDiffusionConfig  # type: ignore[assignment]

    def __init__(self, config: VideoDiffusionConfig, sampler_config: Optional[OrbitSamplerConfig] = None,
                 device: torch.device | str = "cpu") -> None:
        pipe = load_video_pipeline(config)
        self._setup_video(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, config, device, model_key(config.model))

    @classmethod
    def from_components(  # type: ignore[override]
        cls, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any,
        config: Optional[VideoDiffusionConfig] = None, device: torch.device | str = "cpu",
    ) -> "VideoDiffusionPrior":
        """Wrap already-built diffusers/transformers components (tests, benchmarks)."""
        self = cls.__new__(cls)
        self._setup_video(unet, vae, text_encoder, tokenizer, scheduler, config or VideoDiffusionConfig(), device, None)
        return self

    def _setup_video(self, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any,
                     config: VideoDiffusionConfig, device: torch.device | str, model_id: Optional[str]) -> None:
        if type(unet).__name__ != UNET_CLASS:
            raise UserError(f"text-to-video model {model_id or 'components'} has a {type(unet).__name__}, not a {UNET_CLASS}; "
                            f"{VIDEO_MODEL.fix()}")
        if config.frames < 1:
            raise UserError(f"--prior.frames must be >= 1, got {config.frames}")
        self._setup(unet, vae, text_encoder, tokenizer, scheduler, config, device, None, None,  # type: ignore[arg-type]
                    model_id=model_id, force_zeros_for_empty_prompt=False)
        if config.resolution % self.vae_scale_factor:
            raise UserError(f"--prior.resolution {config.resolution} must be a multiple of the VAE factor {self.vae_scale_factor}")
        self.frames = config.frames
        self.resolution = config.resolution
        self.latent_size = config.resolution // self.vae_scale_factor

    def _apply_performance_options(self) -> None:
        if self.config.vae_tiling:
            self.vae.enable_tiling()
        self._unet_forward = torch.compile(self.unet) if self.config.compile else self.unet

    @property
    def model_id(self) -> str:
        """A string identifying the model (resolved local path, hub id, or component fingerprint)."""
        return f"t2v:{self._model_id}"

    # ------------------------------------------------------------------ latents
    def encode(self, images: Tensor) -> Tensor:
        """Clips [B,F,3,H,W] in [0,1] -> latents [B,F,4,h,w] (per-frame VAE, differentiable)."""
        B, Fr = images.shape[:2]
        return super().encode(images.flatten(0, 1)).unflatten(0, (B, Fr))

    @torch.no_grad()
    def decode(self, x0: Tensor) -> Tensor:
        """Latents [B,F,4,h,w] -> clips [B,F,3,resolution,resolution] in [0,1]."""
        B, Fr = x0.shape[:2]
        return super().decode(x0.flatten(0, 1)).unflatten(0, (B, Fr))

    # ------------------------------------------------------------------ denoiser
    def unet_output(self, unet: Any, x_t: Tensor, t: Tensor, emb: Tensor, extra: Optional[dict[str, Any]] = None) -> Tensor:
        """The UNet3D's native prediction for clips x_t [B,F,4,h,w] at timesteps t [B], in the clip layout (float32)."""
        hidden, _ = self._unpack(emb)
        x = x_t.to(self.device, self.dtype).permute(0, 2, 1, 3, 4)  # [B,C,F,h,w]
        out = unet(x, t.to(self.device), encoder_hidden_states=hidden).sample
        return out.permute(0, 2, 1, 3, 4).float()

    # ------------------------------------------------------------------ sampling (explicit 4D)
    samples_clips = True

    @torch.no_grad()
    def sample_clips(self, prompt: str, emb: TextEmbeddings, cams: Cameras, generator: torch.Generator,
                     sampling_steps: int) -> tuple[Tensor, Optional[Tensor]]:
        """DDIM sampling (diffusers' DDIMScheduler on this model's schedule, eta 0) of one clip per camera with
        CFG `cfg_scale_low` on `emb` (view-dependent prompts: the camera enters only through the text),
        decoded and resized to the cameras' size; no masks (the model does not give them)."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.scheduler.config, prediction_type="epsilon")
        scheduler.set_timesteps(sampling_steps)
        K = len(cams)
        shape = (K, self.frames, int(self.unet.config.in_channels), self.latent_size, self.latent_size)
        x = torch.randn(shape, generator=generator).to(self.device)
        cond = torch.cat([emb.uncond, emb.cond]).to(self.device)
        scale = float(self.config.cfg_scale_low)
        for t in scheduler.timesteps:
            steps = torch.full((2 * K,), int(t), dtype=torch.long, device=self.device)
            e_u, e_c = self.predict_eps(torch.cat([x, x]), steps, cond).chunk(2)
            x = scheduler.step(e_u + scale * (e_c - e_u), t, x).prev_sample
        clips = self.decode(x).float().cpu()
        frames = F.interpolate(clips.flatten(0, 1), size=(cams.height, cams.width), mode="bilinear", align_corners=False, antialias=True)
        return frames.clamp(0.0, 1.0).unflatten(0, (K, self.frames)), None

    def variational_model(self, config: VariationalConfig) -> NoReturn:  # type: ignore[override]
        """Not supported: VSD/ESD's LoRA model is built for image UNets."""
        raise UserError("VSD/ESD need a variational model, which the text-to-video prior does not provide yet; "
                        "use an objective such as sds, or --prior toyworld-video")
