"""Stage I of explicit 4D ("generate"): one clip per training camera, sampled from the video prior once
and cached in the run folder.

The clips live in `RUN_DIR/generated/<key>.pt` (core/tensor_cache.py: checked on every read) with a
contact sheet `RUN_DIR/generated/contact_sheet.png` (one row per camera, one column per frame). The
key names everything the sample depends on (prompt, prior and its settings, cameras, clip length,
sampling steps, seed), so a resumed run, and the run's later stages, read the same clips instead of
sampling again; a run with other settings samples its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.objective import StageContext
from ..core.tensor_cache import TensorCache, shape_problem
from ..export.images import save_image_grid
from ..priors.base import Prior
from .losses import estimated_masks

CACHE_FOLDER = "generated"
CONTACT_SHEET = "contact_sheet.png"


@dataclass
class GeneratedClips:
    """Clips [K,F,3,H,W] in [0,1] at the K training cameras, their foreground masks [K,F,1,H,W] (the prior's
    where it knows them, else estimated from the background colour: losses.estimated_masks), and whether
    they were read from the cache."""

    clips: Tensor
    masks: Tensor
    cached: bool = False


def generation_key(prior: Prior, prompt: str, cams: Cameras, frames: int, sampling_steps: int, seed: int) -> str:
    """A digest of everything the generated clips depend on."""
    h = hashlib.sha1()
    h.update(f"{type(prior).__name__}|{prior.model_id}|{prior.config!r}|{prompt}|{frames}|{sampling_steps}|{seed}|"
             f"{cams.width}x{cams.height}".encode())
    for t in (cams.c2w, cams.fov_y):
        h.update(t.detach().double().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


def generated_clips(context: StageContext, prior: Prior, prompt: str, embed: Callable[[Cameras], object], cams: Cameras,
                    frames: int, sampling_steps: int, seed: int) -> GeneratedClips:
    """The clips of `cams` from the run folder's cache, or sampled now (`Prior.sample_clips`), cached and
    shown on a contact sheet. `embed(cams)` gives the prompt's per-camera embeddings (view-dependent)."""
    key = generation_key(prior, prompt, cams, frames, sampling_steps, seed)
    K, H, W = len(cams), cams.height, cams.width
    shapes: dict[str, tuple[int, ...]] = {"clips": (K, frames, 3, H, W), "masks": (K, frames, 1, H, W)}
    cache: Optional[TensorCache] = None
    if context.run_dir is not None:
        cache = TensorCache(context.run_dir / CACHE_FOLDER, "generated clips")
        found = cache.load(key, {"key": key, "prompt": prompt}, lambda t: shape_problem(t, shapes))
        if found is not None:
            context.log(f"generate: read {K} clips of {frames} frames from {cache.path(key).relative_to(context.run_dir)}")
            return GeneratedClips(found["clips"].float(), found["masks"].float(), cached=True)
    generator = torch.Generator().manual_seed(seed)
    emb = embed(cams)
    clips, masks = prior.sample_clips(prompt, emb, cams, generator, sampling_steps)  # type: ignore[arg-type]
    clips = clips.float().clamp(0.0, 1.0)
    if masks is None:
        masks = estimated_masks(clips.flatten(0, 1)).unflatten(0, (K, frames))
    result = GeneratedClips(clips, masks.float())
    if cache is not None and context.run_dir is not None:
        cache.save(key, {"key": key, "prompt": prompt}, {"clips": result.clips.half(), "masks": result.masks.half()})
        sheet = save_image_grid(context.run_dir / CACHE_FOLDER / CONTACT_SHEET, clips.flatten(0, 1), nrow=frames)
        context.log(f"generate: sampled {K} clips of {frames} frames from the video prior at the training cameras; "
                    f"cached in {cache.path(key).relative_to(context.run_dir)}, contact sheet {sheet.relative_to(context.run_dir)}")
        result = GeneratedClips(result.clips.half().float(), result.masks.half().float())  # what a resume reads
    return result

