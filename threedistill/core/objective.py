"""The objective contract: what every `--guidance NAME` provides and declares it needs.

An objective turns one step's renders into a loss (docs/architecture.md, "One step"). Score
distillation objectives (guidance/) read a frozen diffusion prior; scene objectives (scene/)
read posed images. Each declares its needs in `Needs`, which the run plan checks once, before
the first step of the first stage (engine/validate.py), so the loop never probes an objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Protocol

import torch
from torch import Tensor

from .cameras import Cameras
from .registry import Registry
from .types import RenderOutput, TextEmbeddings


@dataclass(frozen=True)
class Needs:
    """What an objective needs from the run (checked by the plan before any work)."""

    prior: bool = True
    """A diffusion prior (the stage's `--prior`), and the prompt's embeddings every step."""
    variational_model: bool = False
    """A prior that can build a variational score model (VSD, ESD)."""
    scene: bool = False
    """Posed images to fit (`--sampler.scene`), handed over in `StageContext.scene`."""
    clips: bool = True
    """It can score video clips [B,F,3,H,W] from a video prior (dynamic stages)."""
    source_image: bool = False
    """It edits a given source image (DDS): `threedistill edit-image`, not `run`."""
    particles: bool = False
    """It can optimise several particles at once (`ObjectiveConfig.particle_count`)."""
    pbr_material: bool = False
    """It distils a PBR material: the stage's representation must be a mesh with `--material pbr`."""
    samples_clips: bool = False
    """A video prior that samples clips (`Prior.samples_clips`: toyworld-video, video-sd)."""
    perp_neg: bool = False
    """Its guidance is CFG-shaped, e_u + s (e_c - e_u), through `Guidance.guidance_delta`, so
    `--prompts.perp-neg` applies (guidance/base.py)."""
    latent: bool = False
    """It trains a latent field (a NeRF whose `latent_channels` are the prior's, scene/latent.py): the stage's
    views render at the size of the prior's x0 image (`Prior.latent_space`), its previews are decoded, and it is
    not scored against ground truth (its renders are not RGB)."""
    after_latent: bool = False
    """It starts from a latent stage's result (`StageContext.previous`, latent-distill): the stage before it trains
    a latent field."""


@dataclass
class ObjectiveOutput:
    """A scalar loss whose gradient w.r.t. the renders is the objective's, plus logs."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)
    preview: Optional[Callable[[], Tensor]] = None
    """The prior's one-step x0 prediction as images [B,3,H,W] in [0,1], computed only when called
    (the live viewer shows it); None where the objective has none."""


@dataclass
class ObjectiveConfig:
    """Base of every objective's settings."""

    PRIOR_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}
    """Prior settings this objective prefers, by prior name, applied where the run leaves them unset (None)."""

    def particle_count(self) -> int:
        """Independent 3D models optimised together (VSD's particles); 1 for most objectives."""
        return 1

    def texts(self) -> list[str]:
        """Texts other than the run's prompt that it embeds with the prior (checked by the plan)."""
        return []

    def check(self) -> None:
        """Raise a UserError for a setting that cannot work (called when the run plan is validated)."""

    def training_views(self, sampler: Any) -> Optional[Cameras]:
        """Fixed cameras the stage trains on (each carrying its `view` index; the sampler then draws every one
        once per epoch), from the stage's `OrbitSamplerConfig`; None: the sampler's random orbit or scene."""
        return None

    def image_prior_settings(self) -> Optional[dict[str, Any]]:
        """None: the stage needs no image prior besides its own. A dict: it needs the image counterpart of its
        video prior (toyworld-video -> toyworld, video-sd -> sd; `StageContext.image_prior`, checked by the
        plan), with these fields of that prior's config set (e.g. {"model": PATH})."""
        return None


class PosedImages(Protocol):
    """A scene's posed views, as scene objectives read them (scene/loading.py's `Scene`)."""

    images: Tensor  # [N,3,H,W] in [0,1]
    masks: Optional[Tensor]  # [N,1,H,W] or None
    cameras: Cameras

    def __len__(self) -> int: ...


@dataclass
class StageContext:
    """What an objective may read once, before the stage's first step (`Objective.prepare`)."""

    prompt: str
    negative_prompt: str
    device: torch.device
    scene: Optional[PosedImages]
    """The posed images of `--sampler.scene` (None when the stage has none)."""
    render: Callable[[Cameras], RenderOutput]
    """Renders the stage's representation as it starts (no gradients), on the solid background."""
    embed: Callable[[str], Any]
    """A `PromptEmbedder` for another text (e.g. DDS's source prompt) with the run's prompt settings."""
    previous: Optional[Callable[[Cameras], RenderOutput]] = None
    """Renders the result the stage started from as it was (the previous stage's representation, before any
    conversion; no gradients); None for a run's first stage and for a resumed stage."""
    views: Optional[Cameras] = None
    """The stage's fixed training cameras (`ObjectiveConfig.training_views`), None where it has none."""
    run_dir: Optional[Path] = None
    """The run folder: what an objective generates once and must not regenerate on resume is cached there."""
    log: Callable[[str], None] = print
    """A line into the run's log.txt."""
    image_prior: Optional[Callable[[], tuple[Any, Any]]] = None
    """Loads (once per run) the image counterpart of the stage's video prior and a `PromptEmbedder` of the
    prompt for it (`ObjectiveConfig.image_prior_settings`); None in stages without one."""


class Objective:
    """Base class of every objective: a loss on the step's renders (see the module docstring).

    Built as `cls(config, prior, total_steps, generator)`; `prior` is None when `needs.prior`
    is False. The loop calls `prepare` once, then per step `__call__` and `after_step`;
    `state_dict` goes into every checkpoint (tensors, numbers, strings and plain containers).
    """

    Config: ClassVar[type[ObjectiveConfig]]
    needs: ClassVar[Needs] = Needs()

    def __init__(self, config: ObjectiveConfig, prior: Any, total_steps: int, generator: torch.Generator) -> None:
        self.config = config
        self.total_steps = total_steps
        self.generator = generator

    def prepare(self, context: StageContext) -> None:
        """Read what the stage provides before its first step (scene objectives: the scene, source renders)."""

    def __call__(self, images: Tensor, cams: Cameras, emb: Optional[TextEmbeddings], step: int,
                 out: RenderOutput) -> ObjectiveOutput:
        """The loss of one step: `images` are the renders as the prior sees them ([B,3,H,W], or clips
        [B,F,3,H,W] for a video prior), `emb` one embedding row per image or clip (None without a
        prior), `out` the full render output of the B (x F) views."""
        raise NotImplementedError(f"{type(self).__name__} is not an objective of `threedistill run`")

    def after_step(self, step: int) -> None:
        """After the optimiser step (e.g. VSD trains its variational model)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""


OBJECTIVES: Registry[Objective] = Registry("guidance")
"""Every objective `--guidance NAME` can choose (score distillation and scene objectives)."""
