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
from .perp_neg import perp_neg_weights
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
    perp_neg: bool = False
    """Perp-Neg (threestudio): per view, a positive blended from the front/side/back phrases and the
    other views as negatives whose guidance is projected perpendicular to the positive's (implies view
    phrases; objectives whose CFG is e_u + s (e_c - e_u): sds, vsd, esd, ism, tsm, csm, bsd, dsd)."""
    perp_neg_f_fs: tuple[float, float, float] = (4.0, 0.5, -2.426)
    """Perp-Neg falloff (a, b, c) of f(r) = a e^(-b r) + c: front negative on front-side views."""
    perp_neg_f_sf: tuple[float, float, float] = (4.0, 0.5, -2.426)
    """Side negative on front-side views."""
    perp_neg_f_sb: tuple[float, float, float] = (1.0, 0.5, -0.606)
    """Side negative on side-back views."""
    perp_neg_f_fsb: tuple[float, float, float] = (1.0, 0.5, 0.967)
    """Front negative on side-back views."""
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
        self.view_dependent = self.view_dependent or self.config.perp_neg
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
        """Embeddings for each camera of a batch (one row per view; Perp-Neg's negatives with `perp_neg`)."""
        B = len(cams)
        uncond = self._uncond.unsqueeze(0).expand(B, *self._uncond.shape).clone()
        emb = TextEmbeddings(
            cond=self.view_embeddings(cams),
            uncond=uncond,
            null=self._null.unsqueeze(0).expand(B, *self._null.shape).clone(),
            plain=self._plain.unsqueeze(0).expand(B, *self._plain.shape).clone(),
        )
        return self._with_perp_neg(emb, cams) if self.config.perp_neg else emb

    def _with_perp_neg(self, emb: TextEmbeddings, cams: Cameras) -> TextEmbeddings:
        """Perp-Neg's positive, negatives [B,2,...] and weights [B,2] (priors/perp_neg.py)."""
        c = self.config
        pos, neg_idx, neg_w = perp_neg_weights(cams, c, c.perp_neg_f_fs, c.perp_neg_f_sf, c.perp_neg_f_sb, c.perp_neg_f_fsb)
        views = self._views
        if views.is_floating_point():
            emb.cond = torch.tensordot(pos.to(views.device, views.dtype), views, dims=1)
        negatives = views[neg_idx.to(views.device)]
        idle = (neg_w == 0).all(dim=1).to(views.device)  # overhead: placeholder rows of the negative prompt
        negatives[idle] = emb.uncond[idle].unsqueeze(1).expand_as(negatives[idle])
        emb.negatives = negatives
        dtype = views.dtype if views.is_floating_point() else torch.float32
        emb.negative_weights = neg_w.to(views.device, dtype)
        return emb
