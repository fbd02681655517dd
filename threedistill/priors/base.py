"""The diffusion-prior contract and the noise-schedule helpers every objective shares.

- `DiffusionPrior`: the few operations score distillation needs (what objectives call).
- `Prior` / `PriorConfig`: the base class and settings of every registered prior (`PRIORS`),
  with what the run plan reads before loading one: whether it scores clips, provides a
  variational model or ground truth, and `PriorConfig.check` (settings and model files,
  located offline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..core.cameras import Cameras, OrbitSamplerConfig
from ..core.registry import Registry
from ..core.types import ReferenceImage, RenderOutput, TextEmbeddings


@dataclass
class GuidanceDefaults:
    """Guidance settings that depend on the prior (overridable per run)."""

    cfg_scale: float
    min_step: "float | list[tuple[float, float]]"
    max_step: "float | list[tuple[float, float]]"
    view_dependent_prompts: bool = False
    cfg_scale_low: Optional[float] = None
    """CFG scale of objectives whose target is itself a model prediction (VSD, ESD, ISM, TSM,
    DDS; 7.5 in their papers). None: the same as `cfg_scale`."""


@dataclass(frozen=True)
class LatentSpace:
    """The image a prior's x0 is, for fields that render x0 directly (latent editing, scene/latent.py):
    `encode` maps renders [B,3,H,W] to x0 [B,channels,size,size] and `decode` maps x0 back to pixels."""

    channels: int
    size: int
    """Side of the square x0 image (SD: the UNet's latent size; a pixel-space prior: its resolution)."""
    downscale: int
    """Decoded pixels per x0 pixel along a side (SD: the VAE's 8, toyworld-sd's 4; pixel space: 1)."""


@runtime_checkable
class DiffusionPrior(Protocol):
    """A frozen 2D (or video) diffusion model seen through the few operations score distillation needs."""

    num_train_timesteps: int
    alphas_cumprod: Tensor  # [T] on the prior's device
    resolution: int  # pixel resolution renders are resized to before encoding
    defaults: GuidanceDefaults
    device: torch.device
    view_group: int
    """Views scored jointly (MVDream: 4 views of one object, one timestep per group); 1 for image priors."""

    @property
    def model_id(self) -> Optional[str]:
        """A string naming the model's weights (text-embedding cache key), None for priors that need no cache."""
        ...

    def encode(self, images: Tensor) -> Tensor:
        """Differentiable map from renders [B,3,H,W] in [0,1] (video: clips [B,F,3,H,W]) to the diffusion space x0."""
        ...

    def decode(self, x0: Tensor) -> Tensor:
        """Map x0 back to images [B,3,h,w] in [0,1]."""
        ...

    def embed(self, texts: list[str]) -> Tensor:
        """Embeddings [len(texts), ...] of prompts; cached by the caller (priors/prompts.py)."""
        ...

    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras: Optional[Cameras] = None) -> Tensor:
        """Epsilon prediction for noisy x_t at integer timesteps t [B] (no grad)."""
        ...

    def variational_model(self, config: VariationalConfig) -> "VariationalModel":
        """VSD's score model of the rendered distribution (priors whose class sets `provides_variational_model`)."""
        ...


@dataclass
class VariationalConfig:
    """How VSD/ESD's variational score model is built and trained (GUIDANCE.md section 2)."""

    lr: float = 1e-4
    """Learning rate of its own optimiser (SD: AdamW over the LoRA and camera-embedding weights)."""
    lora_rank: int = 4
    """SD: rank of the LoRA adapters on every attention's to_q/to_k/to_v/to_out."""
    camera_dropout: float = 0.1
    """Probability that a training sample's camera is dropped (c = none), so the unconditional branch is learnt."""
    buffer_size: int = 256
    """toyworld: how many recent detached renders the exact variational denoiser averages over."""
    train_steps: int = 1
    """Variational updates per optimisation step."""


@runtime_checkable
class VariationalModel(Protocol):
    """VSD's score model of the *rendered* distribution, trained alongside the 3D model.

    Built by `prior.variational_model(config)`. `cameras=None` is the camera-unconditional
    branch c = none (ESD's entropy term).
    """

    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras: Optional[Cameras]) -> Tensor:
        """Epsilon of the rendered distribution at x_t (no grad)."""
        ...

    def update(self, x0: Tensor, emb: Tensor, cameras: Cameras, generator: torch.Generator) -> dict[str, float]:
        """Learn from detached renders x0 (in the prior's space) with their cameras; returns logs."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (weights, optimiser, buffers)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""
        ...


@dataclass
class PriorConfig:
    """Base of every prior's settings."""

    def clip_frames(self) -> Optional[int]:
        """Frames per clip of a video prior (None: an image prior)."""
        return None

    def view_group(self) -> int:
        """Views the prior scores jointly, drawn by the sampler as one group (same elevation, evenly
        spaced azimuths; MVDream: 4); 1 for priors that score each view alone."""
        return 1

    def check(self) -> None:
        """Raise a UserError for a bad setting or a model file that is not on disk, without loading
        anything (called when the run plan is validated, before any work)."""


class Prior:
    """Base class of every registered prior (`PRIORS`): built as `cls(config, sampler_config, device)`.

    The class attributes are what the run plan knows before it loads a prior.
    """

    Config: ClassVar[type[PriorConfig]]
    is_video: ClassVar[bool] = False
    """It scores clips [B,F,...] (dynamic stages) instead of images."""
    has_ground_truth: ClassVar[bool] = False
    """It knows its data exactly (toyworld): runs on it are scored against ground truth (eval/scoring.py)."""
    provides_variational_model: ClassVar[bool] = False
    """`variational_model(config)` works (VSD, ESD)."""
    reads_image: ClassVar[bool] = False
    """It can be conditioned on the reference image of an image-to-3D run (`condition_on_image`)."""
    samples_clips: ClassVar[bool] = False
    """`sample_clips` works: it generates clips at given cameras (the explicit 4D pipeline)."""
    needs_image: ClassVar[bool] = False
    """It is conditioned on an image and cannot run without one (zero123)."""

    num_train_timesteps: int
    alphas_cumprod: Tensor
    resolution: int
    defaults: GuidanceDefaults
    device: torch.device
    view_group: int = 1

    def __init__(self, config: PriorConfig, sampler_config: OrbitSamplerConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)

    # the DiffusionPrior operations (see there)
    @property
    def model_id(self) -> Optional[str]:
        return None

    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, x0: Tensor) -> Tensor:
        raise NotImplementedError

    def embed(self, texts: list[str]) -> Tensor:
        raise NotImplementedError

    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras: Optional[Cameras] = None) -> Tensor:
        raise NotImplementedError

    def variational_model(self, config: VariationalConfig) -> VariationalModel:
        raise NotImplementedError(f"{type(self).__name__} provides no variational model")

    def sample_clips(self, prompt: str, emb: TextEmbeddings, cams: Cameras, generator: torch.Generator,
                     sampling_steps: int) -> tuple[Tensor, Optional[Tensor]]:
        """Video priors whose class sets `samples_clips`: one clip per camera of `cams` (K cameras, each at
        `time` 0; `emb` one row per camera) -> (clips [K,F,3,H,W] in [0,1] at the cameras' size, their
        foreground masks [K,F,1,H,W] where the prior knows them, else None)."""
        raise NotImplementedError(f"{type(self).__name__} does not sample clips")

    def observe_render(self, out: RenderOutput, cams: Cameras) -> None:
        """Called by the loop with every step's renders before the objective scores them: a prior conditioned on
        the renders themselves (SD with a ControlNet) makes its condition here; the others ignore it."""

    def condition_on_image(self, reference: ReferenceImage) -> str:
        """Condition the prior on an image-to-3D run's image (priors whose class sets `reads_image`); returns the
        text the run's prompt embeddings are then made of (toyworld: the object it identified; zero123: a marker)."""
        raise NotImplementedError(f"{type(self).__name__} is not conditioned on images")

    @classmethod
    def latent_channels(cls, config: PriorConfig) -> Optional[int]:
        """Channels of this prior's x0 image when a field can render it for latent editing (`LatentSpace`),
        known before loading; None: its x0 is no single image a field renders (video clips, multi-view groups,
        image-conditioned or cascaded models)."""
        return None

    def latent_space(self) -> LatentSpace:
        """The loaded prior's x0 image (priors whose `latent_channels` is not None)."""
        raise NotImplementedError(f"{type(self).__name__} has no latent image a field renders")

    @classmethod
    def sharing_key(cls, config: PriorConfig, sampler_config: OrbitSamplerConfig) -> str:
        """Stages whose priors have the same key share one loaded prior (engine/priors.py): its settings."""
        return repr(config)

    @classmethod
    def check_prompt(cls, config: PriorConfig, prompt: str) -> None:
        """Raise a UserError when this prior cannot read `prompt` (toyworld: not in its catalogue)."""


PRIORS: Registry[Prior] = Registry("prior")

PIXEL_PRIOR_OF = {"sd": "deepfloyd-if"}
"""A stage's `pixel_prior: true` swaps a latent prior for its pixel-space counterpart (StableDreamer's
IF geometry stage before SD's latent stage); priors not named here keep their own."""
"""Every prior `--prior NAME` can choose."""


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """Stable Diffusion's noise schedule: scaled-linear betas, cumulative product of alphas."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def noise_coefficients(alphas_cumprod: Tensor, t: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
    """alpha_t = sqrt(abar_t) and sigma_t = sqrt(1 - abar_t), shaped to broadcast over x."""
    abar = alphas_cumprod.to(t.device)[t.long()]
    shape = (-1,) + (1,) * (ndim - 1)
    return abar.sqrt().view(shape), (1.0 - abar).sqrt().view(shape)


def add_noise(alphas_cumprod: Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Forward diffusion x_t = alpha_t x0 + sigma_t eps."""
    a, s = noise_coefficients(alphas_cumprod, t, x0.ndim)
    return a * x0 + s * noise


def predict_x0(alphas_cumprod: Tensor, x_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """Tweedie's estimate x0 = (x_t - sigma_t eps) / alpha_t."""
    a, s = noise_coefficients(alphas_cumprod, t, x_t.ndim)
    return (x_t - s * eps) / a


def ddim_step(alphas_cumprod: Tensor, x: Tensor, eps: Tensor, t_from: Tensor, t_to: Tensor) -> Tensor:
    """Deterministic DDIM move (eta = 0) of x from t_from to t_to with the same eps.

    Forward in t it is DDIM inversion, backward it is DDIM sampling. t_to = t_from leaves x
    unchanged exactly (the rows are copied, not recomputed).
    """
    a_from, s_from = noise_coefficients(alphas_cumprod, t_from, x.ndim)
    a_to, s_to = noise_coefficients(alphas_cumprod, t_to, x.ndim)
    moved = a_to * (x - s_from * eps) / a_from + s_to * eps
    same = (t_from == t_to).view((-1,) + (1,) * (x.ndim - 1)).to(x.device)
    return torch.where(same, x, moved)
