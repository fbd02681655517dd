"""View-dependent prompt embeddings (cond / uncond / null), computed once per run.

Each distinct text is embedded once; for priors with a `model_id` the embeddings are also
cached on disk (one `.pt` file per (model id, text), checked on every read: core/tensor_cache.py) so later runs skip the text encoder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
from torch import Tensor

from ..core.cameras import VIEW_LABELS, Cameras, ViewLabelConfig, view_label_indices, view_phrase, wrapped_abs_azimuth
from ..core.errors import UserError
from ..core.types import TextEmbeddings
from .base import DiffusionPrior
from ..core.runtime import default_cache_dir
from ..core.tensor_cache import TensorCache


@dataclass
class PromptConfig(ViewLabelConfig):
    """How the run's prompt becomes per-view embeddings (thresholds in degrees)."""

    view_dependent: Optional[bool] = None
    """Append front/side/back/overhead view phrases (None: the prior's default)."""
    form: Literal["suffix", "prefix"] = "suffix"
    """'a corgi, side view' (suffix) or 'side view of a corgi' (prefix)."""
    interpolate: bool = False
    """LucidDreamer-style: blend front/side/back embeddings by azimuth instead of hard labels."""
    cache_dir: Optional[str] = None
    """Embedding cache root (default: $THREEDISTILL_CACHE or ~/.cache/threedistill); files go in `embeddings/`."""


def interpolation_weights(cams: Cameras, config: PromptConfig) -> Tensor:
    """Weights [B, len(VIEW_LABELS)] over the view embeddings (LucidDreamer interpolation).

    front -> side linearly over |azimuth| 0..90, side -> back over 90..180; cameras above
    the overhead threshold take the overhead embedding alone.
    """
    az = wrapped_abs_azimuth(cams).cpu()
    front, side, back, overhead = (VIEW_LABELS.index(v) for v in ("front", "side", "back", "overhead"))
    w = torch.zeros(len(az), len(VIEW_LABELS), dtype=torch.float64)
    near = az <= 90.0
    r_front = 1.0 - az / 90.0
    r_side = 1.0 - (az - 90.0) / 90.0
    w[:, front] = torch.where(near, r_front, 0.0)
    w[:, side] = torch.where(near, 1.0 - r_front, r_side)
    w[:, back] = torch.where(near, 0.0, 1.0 - r_side)
    up = cams.elevation.double().cpu() > config.overhead_threshold
    w[up] = 0.0
    w[up, overhead] = 1.0
    return w


class PromptEmbedder:
    """Embeds the run's prompt once per view label and hands out per-camera batches."""

    def __init__(
        self,
        prior: DiffusionPrior,
        prompt: str,
        negative_prompt: str = "",
        view_dependent: Optional[bool] = None,
        config: Optional[PromptConfig] = None,
    ) -> None:
        self.prior = prior
        self.prompt = prompt
        self.config = config or PromptConfig()
        if view_dependent is None:
            view_dependent = self.config.view_dependent
        self.view_dependent = prior.defaults.view_dependent_prompts if view_dependent is None else view_dependent
        self.model_id: Optional[str] = prior.model_id
        self.cache_dir = Path(self.config.cache_dir or default_cache_dir()) / "embeddings"
        self.cache = TensorCache(self.cache_dir, "text-embedding cache")
        self.cache_hits = 0

        view_texts = [view_phrase(prompt, label, self.config.form) for label in VIEW_LABELS] if self.view_dependent else [prompt]
        table = self._embed_distinct(view_texts + [prompt, negative_prompt, ""])
        self._views = torch.stack([table[t] for t in view_texts])  # [len(VIEW_LABELS) or 1, ...]
        self._plain = table[prompt]
        self._uncond = table[negative_prompt]
        self._null = table[""]
        if self.view_dependent and self.config.interpolate and not self._views.is_floating_point():
            raise UserError("prompt interpolation needs a prior with continuous text embeddings; turn interpolate off")

    # ------------------------------------------------------------------ embedding + cache
    def _cache_key(self, text: str) -> str:
        return hashlib.sha1(f"{self.model_id}\n{text}".encode()).hexdigest()

    def _load(self, text: str) -> Optional[Tensor]:
        """A cached embedding, or None when absent or damaged (then it is recomputed; core/tensor_cache.py)."""
        if self.model_id is None:
            return None
        found = self.cache.load(self._cache_key(text), {"model": self.model_id, "text": text})
        if found is None or "embedding" not in found:
            return None
        self.cache_hits += 1
        return found["embedding"]

    def _save(self, text: str, emb: Tensor) -> None:
        if self.model_id is not None:
            self.cache.save(self._cache_key(text), {"model": self.model_id, "text": text}, {"embedding": emb})

    def _embed_distinct(self, texts: list[str]) -> dict[str, Tensor]:
        """Embedding of each distinct text: from the disk cache, else one `prior.embed` call."""
        table: dict[str, Tensor] = {}
        for text in dict.fromkeys(texts):
            cached = self._load(text)
            if cached is not None:
                table[text] = cached
        missing = [t for t in dict.fromkeys(texts) if t not in table]
        device = torch.device(self.prior.device)
        if missing:
            computed = self.prior.embed(missing)
            device = computed.device
            for text, emb in zip(missing, computed):
                table[text] = emb
                self._save(text, emb)
        return {text: emb.to(device) for text, emb in table.items()}

    # ------------------------------------------------------------------ per-camera batches
    def view_embeddings(self, cams: Cameras) -> Tensor:
        """Conditional embeddings, one row per camera."""
        if not self.view_dependent:
            return self._views.expand(len(cams), *self._views.shape[1:]).clone()
        if self.config.interpolate:
            w = interpolation_weights(cams, self.config).to(self._views.device, self._views.dtype)
            return torch.tensordot(w, self._views, dims=1)
        return self._views[view_label_indices(cams, self.config).to(self._views.device)]

    def for_cameras(self, cams: Cameras) -> TextEmbeddings:
        """Embeddings for each camera of a batch (one row per view)."""
        B = len(cams)
        return TextEmbeddings(
            cond=self.view_embeddings(cams),
            uncond=self._uncond.unsqueeze(0).expand(B, *self._uncond.shape).clone(),
            null=self._null.unsqueeze(0).expand(B, *self._null.shape).clone(),
            plain=self._plain.unsqueeze(0).expand(B, *self._plain.shape).clone(),
        )
