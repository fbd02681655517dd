"""DeepFloyd IF stage I as a frozen pixel-space prior: `--prior deepfloyd-if`.

IF's first stage denoises 64x64 RGB images directly (no VAE): x0 is the render resized to the
UNet's `sample_size` (64) and mapped to [-1, 1], so the gradient reaches the renders without an
encoder's Jacobian (StableDreamer uses it for geometry). The text goes through a T5 encoder
(IF-I-XL: T5-v1.1-XXL, 4096 wide, 77 tokens with the attention mask, as IFPipeline encodes
prompts without caption cleaning); the UNet predicts epsilon and a learned variance on 6 channels,
of which the first 3 are epsilon. Guidance defaults follow threestudio's deep-floyd guidance:
CFG 20, t in [20, 980], SDS weighting.

Loading is `diffusers.IFPipeline` (`--prior.model`, default `DeepFloyd/IF-I-XL-v1.0`) through
priors/diffusers/loading.py: offline unless `allow_download`, one-line errors naming the model;
the safety checker, feature extractor and watermarker are not loaded and may be missing from the
download. **Licence**: IF's weights are gated on the Hugging Face Hub: accepting DeepFloyd's
licence and logging in (`huggingface-cli login`) before downloading is the user's business;
threedistill never downloads them unless told to (`--prior.allow-download`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.cameras import Cameras, OrbitSamplerConfig
from ...core.runtime import quiet_libraries
from ..base import PRIORS, GuidanceDefaults, Prior, PriorConfig
from .loading import ModelKind, ModelLocation, check_tokenizer, load_pipeline, locate_model, model_key, resolve_dtype

IF_OPTIONAL = ("safety_checker", "feature_extractor", "watermarker")
IF_MODEL = ModelKind("DeepFloyd IF", "--prior", "use --prior sd or toyworld", pipeline_classes=("IFPipeline",),
                     class_hint=" (IF stage I, e.g. DeepFloyd/IF-I-XL-v1.0)", optional_components=IF_OPTIONAL,
                     access_note=" after accepting DeepFloyd's licence on its Hugging Face page and `huggingface-cli login`")


@dataclass
class DeepFloydIFConfig(PriorConfig):
    """DeepFloyd IF stage I (pixel space, 64 px) used as the frozen prior."""

    model: str = "DeepFloyd/IF-I-XL-v1.0"
    """Hugging Face model id or local diffusers IF stage-I folder (its licence is gated on the Hub)."""
    allow_download: bool = False
    """Download from the Hugging Face Hub (default: local files and the local HF cache only)."""
    variant: Optional[str] = None
    """Weight file variant to load (e.g. fp16 when only `*.fp16.safetensors` were downloaded)."""
    dtype: Literal["auto", "float16", "float32"] = "auto"
    """UNet / T5 dtype; auto = float16 on CUDA, float32 on CPU."""
    cfg_scale: float = 20.0
    """Default CFG scale (threestudio's deep-floyd guidance: 20)."""
    cfg_scale_low: float = 7.5
    """Default CFG scale of objectives whose target is a model prediction (ISM, TSM, CSM, DDS)."""
    min_step: int = 20
    """Default smallest timestep."""
    max_step: float = 980
    """Default largest timestep."""

    def check(self) -> None:
        locate_model(self.model, self.allow_download, IF_MODEL)


def _load(config: DeepFloydIFConfig) -> Any:
    def load(location: ModelLocation) -> Any:
        from diffusers import IFPipeline

        kwargs = {"variant": config.variant} if config.variant else {}
        return IFPipeline.from_pretrained(location.source, local_files_only=location.local_files_only, safety_checker=None,
                                          feature_extractor=None, watermarker=None, requires_safety_checker=False, **kwargs)

    return load


@PRIORS.register("deepfloyd-if")
class DeepFloydIFPrior(Prior):
    """IF stage I's UNet and T5 encoder behind `DiffusionPrior` (see the module docstring)."""

    Config = DeepFloydIFConfig
    config: DeepFloydIFConfig

    def __init__(self, config: DeepFloydIFConfig, sampler_config: Optional[OrbitSamplerConfig] = None,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(config, sampler_config or OrbitSamplerConfig(), device)
        pipe = load_pipeline(config.model, config.allow_download, IF_MODEL, _load(config))
        check_tokenizer(pipe.tokenizer, config.model, "--prior")
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.unet = self._freeze(pipe.unet)
        self.text_encoder = self._freeze(pipe.text_encoder)
        self.tokenizer = pipe.tokenizer
        scheduler = pipe.scheduler
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().float().to(self.device)
        self.resolution = int(self.unet.config.sample_size)
        self.channels = int(self.unet.config.in_channels)
        self.defaults = GuidanceDefaults(cfg_scale=config.cfg_scale, min_step=config.min_step, max_step=config.max_step,
                                         view_dependent_prompts=True, cfg_scale_low=config.cfg_scale_low)
        self._model_id = model_key(config.model)

    def _freeze(self, module: Any) -> Any:
        with quiet_libraries("diffusers"):
            module = module.to(self.device, dtype=self.dtype)
        module.requires_grad_(False)
        return module.eval()

    @property
    def model_id(self) -> str:
        return f"deepfloyd-if:{self._model_id}"

    @torch.no_grad()
    def embed(self, texts: list[str]) -> Tensor:
        """T5 last hidden states [len(texts), 77, D] with the padding masked, as IFPipeline encodes prompts."""
        tokens = self.tokenizer(texts, padding="max_length", max_length=77, truncation=True, add_special_tokens=True,
                                return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        return self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0].float()

    def encode(self, images: Tensor) -> Tensor:
        """Renders [B,3,H,W] in [0,1] -> x0 in [-1,1] at the UNet's resolution (differentiable)."""
        x = images[:, :3]
        if x.shape[-2:] != (self.resolution, self.resolution):
            down = x.shape[-1] > self.resolution
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=down)
        return x * 2.0 - 1.0

    @torch.no_grad()
    def decode(self, x0: Tensor) -> Tensor:
        return ((x0 + 1.0) * 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras: Optional[Cameras] = None) -> Tensor:
        """Epsilon (the first 3 of the UNet's 6 output channels; the rest is the learned variance)."""
        out = self.unet(x_t.to(self.device, self.dtype), t.to(self.device), encoder_hidden_states=emb.to(self.device, self.dtype)).sample
        return out[:, : self.channels].float().to(x_t.dtype)
