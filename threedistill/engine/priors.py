"""The run's priors: each loaded once, when the first stage that needs it starts, and shared.

Two stages share a loaded prior when it has the same name and the same sharing key (its
settings; toyworld also the training-camera ranges its references are drawn from), so a
reconstruct-then-edit run loads Stable Diffusion only when the edit starts, and a staged
Stable Diffusion run loads it once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from ..core.cameras import OrbitSamplerConfig
from ..core.motion import IMAGE_PRIOR_OF
from ..core.objective import OBJECTIVES
from ..core.schedule import evaluate_schedule
from ..config import RunConfig
from ..priors.base import PRIORS, Prior, PriorConfig


class PriorPool:
    """Loaded priors of one run, by name and sharing key."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._loaded: dict[str, Prior] = {}

    def get(self, name: str, config: PriorConfig, sampler: OrbitSamplerConfig) -> Prior:
        """The prior `name` with `config`, loaded on first use."""
        cls = PRIORS[name]
        key = f"{name}|{cls.sharing_key(config, sampler)}"
        if key not in self._loaded:
            self._loaded[key] = cls(config, sampler, self.device)
        return self._loaded[key]

    def __len__(self) -> int:
        return len(self._loaded)


def stage_needs_prior(cfg: RunConfig) -> bool:
    """The stage's objective reads its prior, or the prior scores it against ground truth."""
    names = cfg.component_names()
    return OBJECTIVES[names.guidance].needs.prior or PRIORS[names.prior].has_ground_truth


def uses_image_objective(cfg: RunConfig) -> bool:
    """A dynamic stage whose hybrid per-frame image objective (`motion.image_weight`) is on."""
    weight = cfg.motion.image_weight
    return cfg.dynamic and not (isinstance(weight, (int, float)) and weight == 0)


def image_prior_of(cfg: RunConfig, overrides: Optional[dict[str, Any]] = None) -> Optional[tuple[str, PriorConfig]]:
    """The image counterpart of a dynamic stage's video prior and its config: the video prior's
    settings of the same names, except the model and the clip length, then `overrides` (fields of
    the image prior's config, e.g. its model; None: no counterpart)."""
    name = IMAGE_PRIOR_OF.get(cfg.component_names().prior)
    if name is None:
        return None
    image_config = PRIORS.config_type(name)
    own = {f.name: getattr(cfg.prior, f.name) for f in dataclasses.fields(cfg.prior)}
    shared = {f.name: own[f.name] for f in dataclasses.fields(image_config) if f.name in own and f.name not in ("model", "frames")}
    fields = {f.name for f in dataclasses.fields(image_config)}
    shared.update({k: v for k, v in (overrides or {}).items() if k in fields})
    config: PriorConfig = image_config(**shared)
    return name, config


def image_weight(cfg: RunConfig, step: int) -> float:
    """The hybrid objective's weight at `step`."""
    return evaluate_schedule(cfg.motion.image_weight, step, cfg.steps)
