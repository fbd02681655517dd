"""Stable Diffusion (1.x / 2.x incl. v-prediction / SDXL) as a frozen `DiffusionPrior`.

x0 is the VAE latent of the render (GUIDANCE.md section 0): render in [0,1] -> bilinear
resize to `resolution` -> `2*img-1` -> `vae.encode(...).latent_dist.mean * scaling_factor`.
The mean (not a sample) keeps encoding deterministic; gradients flow through the encoder.

Embeddings (`embed`) are plain tensors stackable along dim 0:

* SD 1.x / 2.x: the CLIP last hidden state, [B, L, D] (L = tokenizer.model_max_length).
* SDXL: [B, L + 1, D1 + D2]. Rows 0..L-1 are both encoders' penultimate hidden states
  concatenated on the feature axis (exactly the pipeline's `prompt_embeds`); row L holds the
  pooled `text_embeds` of the second encoder in its first P columns, zero-padded.
  `predict_eps` unpacks them. As in `StableDiffusionXLPipeline` (force_zeros_for_empty_prompt),
  an empty prompt embeds to all zeros.

`predict_eps` returns epsilon; v-prediction models are converted with
`eps = alpha_t * v + sigma_t * x_t`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.cameras import Cameras, OrbitSamplerConfig
from ...core.errors import UserError
from ...core.runtime import quiet_libraries
from ...core.types import RenderOutput
from ..base import PRIORS, GuidanceDefaults, LatentSpace, Prior, PriorConfig, VariationalConfig, noise_coefficients
from .loading import ModelKind, ModelLocation, check_tokenizer, load_pipeline, locate_model, model_key, resolve_dtype

if TYPE_CHECKING:
    from .sd_variational import SDVariationalModel

SD_MODEL = ModelKind("Stable Diffusion", "--prior", "use --prior toyworld", single_file=True)

# Latent-NeRF's linear latent -> RGB approximation for SD latents ([4, 3], RGB in [-1, 1]).
LATENT_RGB_FACTORS = torch.tensor(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
)


@dataclass
class StableDiffusionConfig(PriorConfig):
    """A Stable Diffusion checkpoint used as the frozen prior."""

    model: str = "stabilityai/stable-diffusion-2-1-base"
    """Hugging Face model id, local diffusers folder, or single-file .safetensors/.ckpt checkpoint."""
    allow_download: bool = False
    """Download from the Hugging Face Hub (default: local files and the local HF cache only)."""
    dtype: Literal["auto", "float16", "float32"] = "auto"
    """UNet/text-encoder dtype; auto = float16 on CUDA, float32 on CPU (the SDXL VAE stays float32)."""
    rgb_as_latents: bool = False
    """Latent-NeRF style: skip the VAE. A >=4-channel render's first 4 channels are the latent
    (bilinearly resized to the latent size); a 3-channel render is resized to the latent size and
    mapped [0,1] -> latent with the pseudo-inverse of Latent-NeRF's fixed latent->RGB matrix."""
    channels_last: bool = True
    """channels_last memory format for the UNet on CUDA."""
    compile: bool = False
    """torch.compile the UNet forward."""
    attention_slicing: bool = False
    """Slice attention to save memory (slower)."""
    vae_tiling: bool = False
    """Tiled VAE encode/decode to save memory."""
    cfg_scale: float = 100.0
    """Default classifier-free guidance scale for SDS and CSD's schedules (diffusers form e_u + s (e_c - e_u))."""
    cfg_scale_low: float = 7.5
    """Default CFG scale of VSD, ESD, ISM, TSM, CSM and DDS (their papers' 7.5)."""
    min_step: int = 20
    """Default smallest timestep."""
    max_step: float = 980
    """Default largest timestep."""
    controlnet: Optional[str] = None
    """A diffusers ControlNetModel (folder or Hub id) conditioning the UNet on each view's render (controlnet.py)."""
    controlnet_condition: tuple[str, ...] = ("depth",)
    """What the ControlNet sees of each render: depth, normal, or a list of rgb / alpha / depth / normal channels."""
    controlnet_scale: float = 1.0
    """Multiplier of the ControlNet's residuals."""

    def check(self) -> None:
        """The model (and ControlNet) on disk, or downloads allowed; nothing is loaded."""
        locate_model(self.model, self.allow_download, SD_MODEL)
        if self.controlnet:
            from .controlnet import condition_channels, locate_controlnet

            condition_channels(self.controlnet_condition)
            locate_controlnet(self.controlnet, self.allow_download)


def _is_sdxl_checkpoint(path: Path) -> bool:
    """SDXL single-file checkpoints carry a second text encoder under conditioner.embedders.1."""
    if path.suffix != ".safetensors":
        return "xl" in path.name.lower()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return any(k.startswith("conditioner.embedders.1") for k in f.keys())


def _load(location: ModelLocation) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if location.is_file:
        cls = StableDiffusionXLPipeline if _is_sdxl_checkpoint(Path(location.source)) else StableDiffusionPipeline
        kwargs = {} if cls is StableDiffusionXLPipeline else {"safety_checker": None, "requires_safety_checker": False}
        return cls.from_single_file(location.source, local_files_only=location.local_files_only, **kwargs)
    class_name = location.class_name
    if not class_name:  # a Hub id to download: read its index first
        from diffusers import DiffusionPipeline

        class_name = DiffusionPipeline.load_config(location.source, local_files_only=location.local_files_only).get("_class_name", "")
    if "XL" in class_name:
        return StableDiffusionXLPipeline.from_pretrained(location.source, local_files_only=location.local_files_only)
    return StableDiffusionPipeline.from_pretrained(location.source, local_files_only=location.local_files_only, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)


def load_sd_pipeline(config: StableDiffusionConfig) -> Any:
    """The diffusers pipeline named by `config.model` (priors/diffusers/loading.py); failures are one-line UserErrors."""
    return load_pipeline(config.model, config.allow_download, SD_MODEL, _load)


def vae_latent_channels(model: str) -> int:
    """Latent channels of the VAE of a local diffusers folder (its vae/config.json), else SD's 4."""
    import json

    config = Path(model) / "vae" / "config.json"
    try:
        return int(json.loads(config.read_text()).get("latent_channels", 4)) if config.is_file() else 4
    except (OSError, ValueError, TypeError):
        return 4


@PRIORS.register("sd")
class StableDiffusionPrior(Prior):
    """Frozen Stable Diffusion UNet + VAE + CLIP text encoder(s) behind `DiffusionPrior`."""

    Config = StableDiffusionConfig
    config: StableDiffusionConfig
    provides_variational_model = True

    def __init__(self, config: StableDiffusionConfig, sampler_config: Optional[OrbitSamplerConfig] = None,
                 device: torch.device | str = "cpu") -> None:
        pipe = load_sd_pipeline(config)
        self._setup(
            pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, config, device,
            getattr(pipe, "text_encoder_2", None), getattr(pipe, "tokenizer_2", None),
            model_id=model_key(config.model),
            force_zeros_for_empty_prompt=bool(getattr(pipe.config, "force_zeros_for_empty_prompt", True)),
        )
        if config.controlnet:
            from .controlnet import load_controlnet

            self.controlnet: Any = self._freeze(load_controlnet(config.controlnet, config.allow_download, config.controlnet_condition),
                                           self.dtype)

    @classmethod
    def from_components(
        cls, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any,
        config: Optional[StableDiffusionConfig] = None, device: torch.device | str = "cpu",
        text_encoder_2: Any = None, tokenizer_2: Any = None,
    ) -> "StableDiffusionPrior":
        """Wrap already-built diffusers/transformers components (tests, benchmarks)."""
        self = cls.__new__(cls)
        self._setup(unet, vae, text_encoder, tokenizer, scheduler, config or StableDiffusionConfig(), device,
                    text_encoder_2, tokenizer_2, model_id=None, force_zeros_for_empty_prompt=True)
        return self

    # ------------------------------------------------------------------ set-up
    def _setup(
        self, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any, config: StableDiffusionConfig,
        device: torch.device | str, text_encoder_2: Any, tokenizer_2: Any, model_id: Optional[str],
        force_zeros_for_empty_prompt: bool,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.is_sdxl = text_encoder_2 is not None or getattr(unet.config, "addition_embed_type", None) == "text_time"
        if self.is_sdxl and text_encoder_2 is None:
            raise UserError(f"SDXL model {model_id or 'components'} has no second text encoder; pass a complete SDXL pipeline")
        for tok in (tokenizer, tokenizer_2):
            if tok is not None:
                check_tokenizer(tok, model_id or "the model", "--prior")
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.vae_dtype = torch.float32 if self.is_sdxl else self.dtype
        self.unet = self._freeze(unet, self.dtype)
        self.vae = self._freeze(vae, self.vae_dtype)
        self.text_encoders = [self._freeze(e, self.dtype) for e in (text_encoder, text_encoder_2) if e is not None]
        self.tokenizers = [t for t in (tokenizer, tokenizer_2) if t is not None]
        self.scheduler = scheduler
        self.force_zeros_for_empty_prompt = self.is_sdxl and force_zeros_for_empty_prompt
        self.v_prediction = scheduler.config.get("prediction_type", "epsilon") == "v_prediction"
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().float().to(self.device)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_size = self._latent_size(unet)
        self.resolution = self.latent_size * self.vae_scale_factor
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215))
        self.defaults = GuidanceDefaults(cfg_scale=config.cfg_scale, min_step=config.min_step, max_step=config.max_step,
                                         view_dependent_prompts=True, cfg_scale_low=config.cfg_scale_low)
        self._model_id = model_id or self._fingerprint()
        self.controlnet = None
        self._condition: Optional[Tensor] = None
        self._apply_performance_options()

    def _latent_size(self, unet: Any) -> int:
        """The latent side the UNet was trained at."""
        return int(unet.config.sample_size)

    def _freeze(self, module: Any, dtype: torch.dtype) -> Any:
        with quiet_libraries("diffusers"):  # casting fp16 weights to fp32 on the CPU is intended
            module = module.to(self.device, dtype=dtype)
        module.requires_grad_(False)
        return module.eval()

    def _apply_performance_options(self) -> None:
        cfg = self.config
        if self.device.type == "cuda" and cfg.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if cfg.attention_slicing:
            self.unet.set_attention_slice("auto")
        if cfg.vae_tiling:
            self.vae.enable_tiling()
        self._unet_forward = torch.compile(self.unet) if cfg.compile else self.unet

    def _fingerprint(self) -> str:
        """Identify components built in memory by their text encoders' names and first weights."""
        h = hashlib.sha1()
        for enc in self.text_encoders:
            h.update(str(getattr(enc.config, "_name_or_path", "")).encode())
            w = enc.get_input_embeddings().weight.detach().flatten()[:4096].float().cpu()
            h.update(w.numpy().tobytes())
        return f"components:{h.hexdigest()[:16]}"

    @property
    def model_id(self) -> str:
        """A string identifying the model (resolved local path, hub id, or component fingerprint)."""
        kind = "sdxl" if self.is_sdxl else ("sd-v" if self.v_prediction else "sd")
        return f"{kind}:{self._model_id}"

    # ------------------------------------------------------------------ text
    def _tokens(self, tokenizer: Any, texts: list[str]) -> Tensor:
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> Tensor:
        """Prompt embeddings [len(texts), L, D] (SDXL: [len, L+1, D], see the module docstring)."""
        if not self.is_sdxl:
            return self.text_encoders[0](self._tokens(self.tokenizers[0], texts))[0].float()
        hidden, pooled = [], None
        for enc, tok in zip(self.text_encoders, self.tokenizers):
            out = enc(self._tokens(tok, texts), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's projected pooled output (text_embeds)
        h = torch.cat(hidden, dim=-1).float()
        assert pooled is not None
        if pooled.shape[-1] > h.shape[-1]:
            raise UserError(f"SDXL model {self._model_id}: pooled embedding wider than the token embeddings; unsupported")
        row = F.pad(pooled.float(), (0, h.shape[-1] - pooled.shape[-1])).unsqueeze(1)
        emb = torch.cat([h, row], dim=1)
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([not t.strip() for t in texts], device=emb.device)
            emb = torch.where(empty.view(-1, 1, 1), torch.zeros_like(emb), emb)
        return emb

    def _unpack(self, emb: Tensor) -> tuple[Tensor, Optional[dict[str, Tensor]]]:
        """Split an embedding batch into UNet encoder_hidden_states and SDXL added_cond_kwargs."""
        emb = emb.to(self.device, self.dtype)
        if not self.is_sdxl:
            return emb, None
        pooled_dim = int(self.text_encoders[-1].config.projection_dim)
        hidden, pooled = emb[:, :-1], emb[:, -1, :pooled_dim]
        size = float(self.resolution)
        time_ids = torch.tensor([size, size, 0.0, 0.0, size, size], device=self.device, dtype=self.dtype)
        return hidden, {"text_embeds": pooled, "time_ids": time_ids.expand(emb.shape[0], 6)}

    # ------------------------------------------------------------------ latents
    @classmethod
    def latent_channels(cls, config: PriorConfig) -> Optional[int]:
        """The VAE's latent channels (its vae/config.json when the model is a local folder, else SD's 4); None for
        the subclasses whose x0 is not one image (video clips, MVDream's view groups)."""
        if cls.is_video or config.view_group() > 1:
            return None
        assert isinstance(config, StableDiffusionConfig)
        return vae_latent_channels(config.model)

    def latent_space(self) -> LatentSpace:
        """The VAE latent: `latent_channels` x the UNet's sample size, `vae_scale_factor` pixels per latent pixel."""
        return LatentSpace(channels=int(self.vae.config.latent_channels), size=self.latent_size, downscale=self.vae_scale_factor)

    def _to_resolution(self, images: Tensor, size: int) -> Tensor:
        if images.shape[-2:] == (size, size):
            return images
        down = images.shape[-1] > size or images.shape[-2] > size
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=down)

    def encode(self, images: Tensor) -> Tensor:
        """Renders [B,C,H,W] in [0,1] -> latents [B,4,h,w] in images' dtype (differentiable)."""
        if self.config.rgb_as_latents:
            return self._rgb_as_latents(images)
        x = self._to_resolution(images[:, :3], self.resolution) * 2.0 - 1.0
        dist = self.vae.encode(x.to(self.vae_dtype)).latent_dist
        return (dist.mean * self.scaling_factor).to(images.dtype)

    def _rgb_as_latents(self, images: Tensor) -> Tensor:
        x = self._to_resolution(images, self.latent_size)
        if x.shape[1] >= 4:
            return x[:, :4]
        m = torch.linalg.pinv(LATENT_RGB_FACTORS).to(x.device, x.dtype)  # [3, 4]
        return torch.einsum("bchw,cl->blhw", x * 2.0 - 1.0, m)

    @torch.no_grad()
    def decode(self, x0: Tensor) -> Tensor:
        """Latents -> images [B,3,resolution,resolution] in [0,1]."""
        img = self.vae.decode(x0.to(self.device, self.vae_dtype) / self.scaling_factor).sample
        return ((img.float() + 1.0) * 0.5).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ denoiser
    def unet_output(self, unet: Any, x_t: Tensor, t: Tensor, emb: Tensor, extra: Optional[dict[str, Any]] = None) -> Tensor:
        """`unet`'s native prediction (epsilon, or v for v-prediction models) for x_t at timesteps t [B].

        Float32, differentiable through `unet` (the caller picks no_grad or not). `unet` is this
        prior's UNet (or its compiled forward) or a UNet of the same architecture (VSD's LoRA copy);
        `emb` is in `embed`'s packed format.
        """
        hidden, added = self._unpack(emb)
        x = x_t.to(self.device, self.dtype)
        if self.device.type == "cuda" and self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        kwargs = {"added_cond_kwargs": added} if added is not None else {}
        return unet(x, t.to(self.device), encoder_hidden_states=hidden, **kwargs, **(extra or {})).sample.float()

    def output_to_eps(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Epsilon from a native UNet prediction `out` (v-prediction: eps = alpha_t v + sigma_t x_t)."""
        if not self.v_prediction:
            return out
        a, s = noise_coefficients(self.alphas_cumprod, t.to(self.device), x_t.ndim)
        return a * out + s * x_t.to(out.device).float()

    def observe_render(self, out: RenderOutput, cams: Cameras) -> None:
        """With a ControlNet: this step's condition image, made from the renders (controlnet.py)."""
        if self.controlnet is not None:
            from .controlnet import render_condition

            self._condition = render_condition(out, cams, self.config.controlnet_condition, self.resolution).to(self.device, self.dtype)

    def _controlnet_residuals(self, x_t: Tensor, t: Tensor, emb: Tensor) -> dict[str, Any]:
        """The UNet's extra residuals from the ControlNet on the latest renders (empty without one)."""
        cond = self._condition
        if self.controlnet is None or cond is None or x_t.shape[0] % cond.shape[0]:
            return {}
        hidden, added = self._unpack(emb)
        image = cond.repeat(x_t.shape[0] // cond.shape[0], 1, 1, 1)
        kwargs = {"added_cond_kwargs": added} if added is not None else {}
        down, mid = self.controlnet(x_t.to(self.device, self.dtype), t.to(self.device), encoder_hidden_states=hidden, controlnet_cond=image,
                                    conditioning_scale=self.config.controlnet_scale, return_dict=False, **kwargs)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras: Optional[Cameras] = None) -> Tensor:
        """Epsilon for x_t at integer timesteps t [B]: one UNet call for the whole batch (no grad)."""
        out = self.unet_output(self._unet_forward, x_t, t, emb, self._controlnet_residuals(x_t, t, emb))
        return self.output_to_eps(out, x_t, t).to(x_t.dtype)

    def variational_model(self, config: VariationalConfig) -> "SDVariationalModel":
        """VSD's variational score model: a LoRA + camera-conditioned copy of this UNet (sd_variational.py)."""
        from .sd_variational import SDVariationalModel

        return SDVariationalModel(self, config)
