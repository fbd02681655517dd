"""Building one stage's components from its (validated) config: device, sampler, representation,
objective, prompts and the hybrid 4D image objective."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import RunConfig
from ..core.cameras import CameraSampler, FixedViewSampler, OrbitSampler
from ..core.errors import UserError
from ..core.objective import OBJECTIVES, Objective
from ..guidance.sds import SDSConfig, SDSGuidance
from ..priors.base import DiffusionPrior, Prior
from ..priors.prompts import PromptEmbedder
from ..representations.base import REPRESENTATIONS, Representation
from ..representations.convert import PreviousAsset, representation_from
from ..representations.deformation import Deformed
from ..representations.particles import Particles
from ..scene.loading import Scene
from ..scene.views import SceneViewSampler, scene_for
from .priors import PriorPool, image_prior_of, uses_image_objective


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; an explicit cuda without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


def load_stage_scene(cfg: RunConfig) -> Optional[Scene]:
    """The posed images of `sampler.scene` (None without one)."""
    return scene_for(cfg.sampler) if cfg.sampler.scene else None


def make_sampler(cfg: RunConfig, scene: Optional[Scene], device: torch.device) -> CameraSampler:
    """The stage's camera sampler: the scene's views when it has one, the objective's fixed training views
    when it has them (the explicit 4D pipeline), else the random orbit."""
    if scene is not None:
        return SceneViewSampler(scene, cfg.sampler.batch_size, device)
    views = cfg.guidance.training_views(cfg.sampler)
    if views is not None:
        return FixedViewSampler(views, cfg.sampler.batch_size, device)
    return OrbitSampler(cfg.sampler, device, group=cfg.prior.view_group())


def clip_frames(cfg: RunConfig) -> int:
    """Frames per training clip: 1 for a static stage, else `motion.frames` or the video prior's."""
    if not cfg.dynamic:
        return 1
    frames = cfg.motion.frames or cfg.prior.clip_frames()
    if frames is None:
        raise UserError(f"--dynamic needs a video prior (toyworld-video, video-sd), not --prior {cfg.component_names().prior}")
    return frames


def build_representation(cfg: RunConfig, generator: torch.Generator, previous: Optional[PreviousAsset] = None) -> Representation:
    """The stage's representation: new particles, or the previous result converted; wrapped in a
    deformation field for a dynamic stage (carrying a previous 4D stage's motion over)."""
    names = cfg.component_names()
    backend = cfg.render.backend
    if previous is not None:
        members = [representation_from(previous, names.representation, cfg.representation, generator, backend)]
    else:
        cls = REPRESENTATIONS[names.representation]
        members = [cls.build(cfg.representation, generator, backend) for _ in range(cfg.guidance.particle_count())]
    if cfg.dynamic:  # 4D: the static asset plus a motion field, zero unless a 4D stage continues
        members = [Deformed(m, cfg.deformation, generator) for m in members]
        source = previous.representation if previous is not None else None
        if isinstance(source, Deformed):
            members[0].field.load_state_dict(source.field.state_dict())  # type: ignore[union-attr]
    return members[0] if len(members) == 1 else Particles(members)


def build_objective(cfg: RunConfig, prior: Optional[Prior], generator: torch.Generator) -> Objective:
    """The stage's objective (its prior is None when the objective needs none)."""
    cls = OBJECTIVES[cfg.component_names().guidance]
    return cls(cfg.guidance, prior, cfg.steps, generator)


def build_prompts(cfg: RunConfig, prior: DiffusionPrior, text: Optional[str] = None) -> PromptEmbedder:
    """Per-view embeddings of `text` (default: the stage's prompt) with the stage's prompt settings."""
    return PromptEmbedder(prior, cfg.prompt if text is None else text, cfg.negative_prompt, config=cfg.prompts)


@dataclass
class ImageObjective:
    """A second objective of a stage with its own prompt embeddings: per-frame SDS from a video prior's image
    counterpart (4D), or a text prior's SDS next to an image-conditioned prior (Magic123)."""

    objective: Objective
    prompts: PromptEmbedder


def load_image_prior(cfg: RunConfig, pool: PriorPool) -> tuple[Prior, PromptEmbedder]:
    """The image counterpart of a dynamic stage's video prior (with the objective's overrides) and the
    prompt's embeddings for it (`ObjectiveConfig.image_prior_settings`; the plan checked that it exists)."""
    counterpart = image_prior_of(cfg, cfg.guidance.image_prior_settings())
    if counterpart is None:
        raise UserError(f"--prior {cfg.component_names().prior} has no image counterpart; use toyworld-video or video-sd")
    prior = pool.get(*counterpart, cfg.sampler)
    return prior, build_prompts(cfg, prior)


def build_image_objective(cfg: RunConfig, pool: PriorPool, generator: torch.Generator) -> Optional[ImageObjective]:
    """None unless `motion.image_weight` is on (the plan checked the counterpart exists)."""
    if not uses_image_objective(cfg):
        return None
    counterpart = image_prior_of(cfg)
    if counterpart is None:
        raise UserError("--motion.image-weight needs a video prior with an image counterpart (toyworld-video, video-sd)")
    name, config = counterpart
    prior = pool.get(name, config, cfg.sampler)
    objective = SDSGuidance(SDSConfig(), prior, cfg.steps, generator)
    return ImageObjective(objective, build_prompts(cfg, prior))


def build_text_objective(cfg: RunConfig, pool: PriorPool, generator: torch.Generator, prompt: str) -> Optional[ImageObjective]:
    """Magic123's text-prior SDS of an image-to-3D stage (`reference.text_prior`), on `prompt`; None when off."""
    chosen = cfg.reference.text_prior_config() if cfg.image else None
    if chosen is None:
        return None
    name, config = chosen
    prior = pool.get(name, config, cfg.sampler)
    objective = SDSGuidance(SDSConfig(), prior, cfg.steps, generator)
    return ImageObjective(objective, build_prompts(cfg, prior, prompt))
