"""Latent-space scene editing (ED-NeRF; GUIDANCE.md sections 7.1 and 13.9): `threedistill edit --method latent-dds`.

Three stages, one objective each, on a NeRF whose `latent_channels` are the prior's (a latent
field: representations/nerf.py). The first two declare `Needs(latent=True)`, so the loop renders
their views at the size of the prior's x0 image (`Prior.latent_space`) and decodes their previews.

- `latent-fit` (reconstruct): 0.5 |z - E(x)|^2 per view between the field's latent render z and
  the prior's encoding E(x) of the view's image (plus the masks on alpha, as `photometric`). The
  images are encoded once, before the first step, and cached on disk (core/tensor_cache.py, keyed
  by the model and the images' digest; read back with `weights_only`).
- `latent-dds` (edit): DDS in x0 space between the latent render under the target prompt and the
  source field's latent render of the same view under `source_prompt`, one t and one eps shared
  (guidance/dds.py). The source field is the stage's start (the reconstruction), frozen: its
  render of every view is taken once when the stage starts. The step calls the UNet only; no
  VAE. The anchors are scene-dds's, in x0 space: `anchor_rgb` pulls the latent render toward the
  encodings of the original images (fading out), `anchor_alpha` keeps the source silhouette.
- `latent-distill`: an RGB NeRF, started from the latent field's geometry (`NeRF.continue_from`),
  fitted photometrically to the prior's decoding of the latent field's render of every scene
  view (decoded once, when the stage starts), and its alpha to the scene's masks (the edit keeps
  the silhouette; without masks, to the latent field's alpha), so the run ends with an ordinary
  asset: exports, previews and toyworld scores as every run's.

On a pixel-space prior (toyworld) x0 is the image itself in [-1, 1] (`LatentSpace` with
downscale 1): the same code runs, the field rendering 3 channels at the prior's resolution.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.objective import OBJECTIVES, Needs, ObjectiveOutput, PosedImages, StageContext
from ..core.runtime import default_cache_dir
from ..core.tensor_cache import TensorCache, digest
from ..core.types import RenderOutput, TextEmbeddings, render_in_chunks
from ..priors.base import Prior
from .objectives import (
    PhotometricConfig,
    PhotometricObjective,
    SceneDDSConfig,
    SceneDDSObjective,
    _resized,
    _scene,
    _views,
    squared_error,
)

LATENT_NEEDS = Needs(prior=True, scene=True, clips=False, latent=True)
CHUNK = 8
"""Views encoded or decoded at a time (SD's VAE at 512 px is large)."""


def latent_cameras(prior: Prior, cams: Cameras) -> Cameras:
    """The cameras rendering at the size of the prior's x0 image (the views a latent field renders)."""
    size = prior.latent_space().size
    return cams.with_size(size, size)


def encoding_cache(folder: Optional[str | Path] = None) -> TensorCache:
    """Where the encodings of scene images are kept (THREEDISTILL_CACHE/latents)."""
    return TensorCache(Path(folder or default_cache_dir()) / "latents", "latent encoding cache")


@torch.no_grad()
def encode_views(prior: Prior, images: Tensor, cache: Optional[TensorCache] = None) -> Tensor:
    """The prior's x0 of each image [N,3,H,W] -> [N,C,s,s] on the CPU, encoded once and then read from `cache`."""
    cache = cache or encoding_cache()
    space = prior.latent_space()
    model = prior.model_id or f"{type(prior).__name__}:{prior.resolution}"
    meta = {"model": model, "images": digest({"images": images}), "size": str(space.size), "channels": str(space.channels)}
    key = hashlib.sha1("\n".join(meta.values()).encode()).hexdigest()
    expected = (len(images), space.channels, space.size, space.size)

    def check(tensors: dict[str, Tensor]) -> Optional[str]:
        x0 = tensors.get("x0")
        return None if x0 is not None and tuple(x0.shape) == expected else "wrong shape"

    stored = cache.load(key, meta, check)
    if stored is not None:
        return stored["x0"]
    device = prior.alphas_cumprod.device
    x0 = torch.cat([prior.encode(images[i : i + CHUNK].to(device)).float().cpu() for i in range(0, len(images), CHUNK)])
    cache.save(key, meta, {"x0": x0})
    return x0


@torch.no_grad()
def decode_views(prior: Prior, x0: Tensor) -> Tensor:
    """Images [N,3,H,W] in [0,1] on the CPU of x0 [N,C,s,s], a few at a time."""
    device = prior.alphas_cumprod.device
    return torch.cat([prior.decode(x0[i : i + CHUNK].to(device)).float().cpu() for i in range(0, len(x0), CHUNK)])


class _DecodingPhotometric(PhotometricObjective):
    """A photometric objective that keeps the prior it encodes or decodes with."""

    def __init__(self, config: PhotometricConfig, prior: Prior, total_steps: int, generator: torch.Generator) -> None:
        super().__init__(config, prior, total_steps, generator)
        self.prior = prior


@dataclass
class LatentFitConfig(PhotometricConfig):
    """Reconstruction of a latent field from the encoded images."""


@OBJECTIVES.register("latent-fit")
class LatentFitObjective(_DecodingPhotometric):
    """Fit a latent field's renders to the prior's encodings of the scene's images (and alpha to its masks)."""

    Config = LatentFitConfig
    config: LatentFitConfig
    needs = LATENT_NEEDS

    def prepare(self, context: StageContext) -> None:
        scene = _scene(context, "latent-fit")
        self.images, self.masks = encode_views(self.prior, scene.images), scene.masks

    def __call__(self, images: Tensor, cams: Cameras, emb: Optional[TextEmbeddings], step: int,
                 out: Optional[RenderOutput] = None) -> ObjectiveOutput:
        g = super().__call__(images, cams, emb, step, out)
        g.logs["latent_error"] = g.logs.pop("rgb_error")
        return g


@dataclass
class LatentDDSConfig(SceneDDSConfig):
    """DDS between a latent field and its frozen source (`anchor_rgb` pulls toward the images' encodings)."""


@OBJECTIVES.register("latent-dds")
class LatentDDSObjective(SceneDDSObjective):
    """scene-dds on a latent field: the renders are x0 already, the source is the frozen start's latent render."""

    Config = LatentDDSConfig  # type: ignore[assignment]
    config: LatentDDSConfig
    needs = LATENT_NEEDS

    @torch.no_grad()
    def prepare(self, context: StageContext) -> None:
        """Render every scene view once from the field as the stage starts (the source), and read the encodings."""
        scene: PosedImages = _scene(context, "latent-dds")
        prior = self.prior
        assert isinstance(prior, Prior), "latent-dds runs on a registered prior (its latent_space)"
        self.source_prompts = context.embed(self.config.source_prompt)
        source = render_in_chunks(lambda cams: context.render(cams.to(context.device)), latent_cameras(prior, scene.cameras))
        self.source_x0 = source.rgb
        self.source_alpha = scene.masks if scene.masks is not None else source.alpha
        self.originals = encode_views(prior, scene.images)

    def to_x0(self, images: Tensor) -> Tensor:
        """A latent field's render is x0 itself: no encoder."""
        return images


@dataclass
class LatentDistillConfig(PhotometricConfig):
    """The RGB field's fit to the decoded latent renders (`lambda_mask`: to the latent field's alpha)."""


@OBJECTIVES.register("latent-distill")
class LatentDistillObjective(_DecodingPhotometric):
    """Fit an RGB field to the decoded renders of the latent field the stage starts from (alpha: the scene's masks)."""

    Config = LatentDistillConfig
    config: LatentDistillConfig
    needs = Needs(prior=True, scene=True, clips=False, after_latent=True)

    def prepare(self, context: StageContext) -> None:
        """Decode the previous stage's latent renders of every scene view (a resumed stage reads them from its checkpoint)."""
        scene = _scene(context, "latent-distill")
        if context.previous is None:
            return
        with torch.no_grad():
            latent = render_in_chunks(lambda cams: context.previous(cams.to(context.device)),  # type: ignore[misc]
                                      latent_cameras(self.prior, scene.cameras))
        if latent.rgb.shape[1] != self.prior.latent_space().channels:
            raise RuntimeError("latent-distill starts from a latent field (the stage before it must be latent-dds or latent-fit)")
        self.images = _resized(decode_views(self.prior, latent.rgb), scene.images)
        self.masks = scene.masks if scene.masks is not None else _resized(latent.alpha, scene.images[:, :1]).clamp(0, 1)

    def __call__(self, images: Tensor, cams: Cameras, emb: Optional[TextEmbeddings], step: int,
                 out: Optional[RenderOutput] = None) -> ObjectiveOutput:
        if self.images is None:
            raise RuntimeError("latent-distill has no decoded views: it starts from a latent stage (prepare) or its checkpoint")
        return super().__call__(images, cams, emb, step, out)

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images, "masks": self.masks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed distillation keeps the decoded views of the stage's start (the latent field is gone by then)."""
        if state.get("images") is not None:
            self.images, self.masks = state["images"], state.get("masks")
