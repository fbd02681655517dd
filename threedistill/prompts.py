"""View-dependent prompt embeddings (cond / uncond / null), computed once per run."""

from __future__ import annotations

from typing import Optional

import torch

from .cameras import VIEW_LABELS, Cameras, view_direction_labels
from .priors.base import DiffusionPrior, TextEmbeddings


def view_prompt(prompt: str, label: str) -> str:
    """threestudio-style suffix: 'a corgi, side view'."""
    return f"{prompt}, {label} view"


class PromptEmbedder:
    """Embeds the run's prompt once per view label and hands out per-camera batches."""

    def __init__(self, prior: DiffusionPrior, prompt: str, negative_prompt: str = "", view_dependent: Optional[bool] = None) -> None:
        self.prompt = prompt
        self.view_dependent = prior.defaults.view_dependent_prompts if view_dependent is None else view_dependent
        texts = [view_prompt(prompt, label) for label in VIEW_LABELS] if self.view_dependent else [prompt]
        cond = prior.embed(texts)
        self._cond = {label: cond[i if self.view_dependent else 0] for i, label in enumerate(VIEW_LABELS)}
        self._uncond = prior.embed([negative_prompt])[0]
        self._null = prior.embed([""])[0]

    def for_cameras(self, cams: Cameras) -> TextEmbeddings:
        """Embeddings for each camera of a batch (one row per view)."""
        labels = view_direction_labels(cams)
        cond = torch.stack([self._cond[label] for label in labels])
        B = len(labels)
        return TextEmbeddings(
            cond=cond,
            uncond=self._uncond.unsqueeze(0).expand(B, *self._uncond.shape).clone(),
            null=self._null.unsqueeze(0).expand(B, *self._null.shape).clone(),
        )
