"""Objectives of scene runs: fit posed images, then edit them toward a target prompt.

They follow the objective contract (core/objective.py): they declare `needs.scene`, get the
scene's posed images once, before the first step, through `prepare(context)`, and read each
camera's `view` index (the scene view it was drawn from) every step.

- `photometric`: reconstruction. 0.5 * sum of squared pixel errors per view (the scale of
  the distillation losses), plus `lambda_mask` times the same on alpha against the scene's
  masks when it has them.
- `scene-dds`: DDS (GUIDANCE.md section 7.1) between the render of a view and the source
  render of that view, cached when the stage starts (the reconstruction before any edit),
  with the target prompt against `source_prompt`. Anchors keep what the edit must not change:
  `anchor_rgb` pulls colours toward the original images (a schedule; by default it fades out
  over the first 30% so the edit can recolour), `anchor_alpha` pulls the silhouette toward
  the source's (the scene masks when it has them).
- `in2n`: Instruct-NeRF2NeRF's iterative dataset update. The training images start as the
  scene's; every `update_every` steps the views just rendered are replaced by an
  InstructPix2Pix edit of the render conditioned on the original image (priors/diffusers/instruct_pix2pix.py),
  and the loss is the photometric one against the current dataset. The instruction
  ("make the mug blue") is `instruction`, else the run's prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.errors import UserError
from ..core.objective import OBJECTIVES, Needs, Objective, ObjectiveConfig, ObjectiveOutput, PosedImages, StageContext
from ..core.schedule import Schedule, evaluate_schedule
from ..core.types import RenderOutput, TextEmbeddings, render_in_chunks
from ..guidance.dds import DDSConfig, DDSGuidance
from ..priors.diffusers.instruct_pix2pix import InstructPix2PixConfig, InstructPix2PixEditor

SCENE_NEEDS = Needs(prior=False, scene=True, clips=False)


def _scene(context: StageContext, objective: str) -> PosedImages:
    if context.scene is None:
        raise UserError(f"--guidance {objective} fits posed images; pass --sampler.scene SCENE_DIR (or use `threedistill edit`)")
    return context.scene


def _views(cams: Cameras) -> Tensor:
    if cams.view is None:
        raise UserError("scene objectives need cameras drawn from the scene (Cameras.view is missing)")
    return cams.view.cpu()


def _resized(images: Tensor, like: Tensor) -> Tensor:
    if images.shape[-2:] == like.shape[-2:]:
        return images.to(like)
    return torch.nn.functional.interpolate(images.to(like), size=like.shape[-2:], mode="bilinear", antialias=True, align_corners=False)


def squared_error(x: Tensor, target: Tensor) -> Tensor:
    """0.5 * sum of squared errors per view (the gradient per pixel is x - target)."""
    return 0.5 * ((x - target) ** 2).sum() / x.shape[0]


@dataclass
class PhotometricConfig(ObjectiveConfig):
    """Reconstruction from posed images."""

    lambda_mask: float = 1.0
    """Weight of the alpha-vs-mask term (scenes with masks only)."""


@OBJECTIVES.register("photometric")
class PhotometricObjective(Objective):
    """Fit renders to the scene's images (and alpha to its masks)."""

    Config = PhotometricConfig
    config: PhotometricConfig
    needs = SCENE_NEEDS

    def __init__(self, config: PhotometricConfig, prior: Any = None, total_steps: int = 0, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(config, prior, total_steps, generator or torch.Generator().manual_seed(0))
        self.images: Optional[Tensor] = None
        self.masks: Optional[Tensor] = None

    def prepare(self, context: StageContext) -> None:
        scene = _scene(context, "photometric")
        self.images, self.masks = scene.images, scene.masks

    def targets(self, views: Tensor) -> Tensor:
        assert self.images is not None, "prepare() first"
        return self.images[views]

    def __call__(self, images: Tensor, cams: Cameras, emb: Optional[TextEmbeddings], step: int,
                 out: Optional[RenderOutput] = None) -> ObjectiveOutput:
        views = _views(cams)
        loss = squared_error(images, _resized(self.targets(views), images))
        logs = {"rgb_error": float(loss.detach())}
        if self.masks is not None and out is not None and self.config.lambda_mask > 0:
            mask_loss = squared_error(out.alpha, _resized(self.masks[views], out.alpha))
            loss = loss + self.config.lambda_mask * mask_loss
            logs["mask_error"] = float(mask_loss.detach())
        return ObjectiveOutput(loss=loss, logs=logs)


@dataclass
class SceneDDSConfig(DDSConfig):
    """DDS on a scene's views, with anchors to the source."""

    source_prompt: str = ""
    """Text describing the scene as it is (required)."""
    anchor_rgb: Schedule = field(default_factory=lambda: [(0.0, 0.5), (0.3, 0.0)])
    """Weight of 0.5 * |render - original image|^2 (a schedule: fades out so the edit can recolour)."""
    anchor_alpha: Schedule = 2.0
    """Weight of 0.5 * |alpha - source alpha|^2 (keeps the geometry)."""

    def texts(self) -> list[str]:
        return [self.source_prompt]

    def check(self) -> None:
        super().check()
        if not self.source_prompt.strip():
            raise UserError("--guidance.source-prompt is empty; describe the scene as it is (threedistill edit --source TEXT)")


@OBJECTIVES.register("scene-dds")
class SceneDDSObjective(DDSGuidance):
    """DDS toward the target prompt against cached source renders, plus the anchors."""

    Config = SceneDDSConfig  # type: ignore[assignment]
    config: SceneDDSConfig
    needs = Needs(prior=True, scene=True, clips=False)  # the source comes from the scene, not from the user

    def __init__(self, config: SceneDDSConfig, prior: Any, total_steps: int, generator: torch.Generator) -> None:
        super().__init__(config, prior, total_steps, generator)
        self.source_x0: Optional[Tensor] = None
        self.source_alpha: Optional[Tensor] = None
        self.originals: Optional[Tensor] = None
        self.source_prompts: Any = None

    @torch.no_grad()
    def prepare(self, context: StageContext) -> None:
        """Render every scene view once: the source the edit is measured against."""
        scene = _scene(context, "scene-dds")
        self.source_prompts = context.embed(self.config.source_prompt)
        source = render_in_chunks(lambda cams: context.render(cams.to(context.device)), scene.cameras)
        device = self.prior.alphas_cumprod.device  # encoded a few views at a time: SD's VAE at 512 px is large
        self.source_x0 = torch.cat([self.prior.encode(source.rgb[i : i + 8].to(device)).cpu() for i in range(0, len(source.rgb), 8)])
        self.source_alpha = scene.masks if scene.masks is not None else source.alpha
        self.originals = scene.images

    def __call__(self, images: Tensor, cams: Cameras, emb: Optional[TextEmbeddings], step: int,
                 out: Optional[RenderOutput] = None) -> ObjectiveOutput:
        if self.source_x0 is None or self.originals is None or self.source_alpha is None or emb is None:
            raise RuntimeError("SceneDDSObjective.prepare(context) was not called")
        views = _views(cams)
        g = self.edit_loss(self.to_x0(images), self.source_x0[views].to(images), emb,
                           self.source_prompts.for_cameras(cams), cams, step, images)
        w_rgb = evaluate_schedule(self.config.anchor_rgb, step, self.total_steps)
        w_alpha = evaluate_schedule(self.config.anchor_alpha, step, self.total_steps)
        loss, logs = g.loss, dict(g.logs)
        if w_rgb > 0:
            anchor = squared_error(images, _resized(self.originals[views], images))
            loss, logs["anchor_rgb"] = loss + w_rgb * anchor, float(anchor.detach())
        if w_alpha > 0 and out is not None:
            anchor = squared_error(out.alpha, _resized(self.source_alpha[views], out.alpha))
            loss, logs["anchor_alpha"] = loss + w_alpha * anchor, float(anchor.detach())
        return ObjectiveOutput(loss=loss, logs=logs)

    def to_x0(self, images: Tensor) -> Tensor:
        """The step's renders in the prior's space: encoded (a latent field's renders already are, scene/latent.py)."""
        return self.prior.encode(images)

    def state_dict(self) -> dict[str, Any]:
        return {"source_x0": self.source_x0, "source_alpha": self.source_alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed edit keeps the source renders of the stage's start (not of the half-edited scene)."""
        if state.get("source_x0") is not None:
            self.source_x0, self.source_alpha = state["source_x0"], state["source_alpha"]


@dataclass
class In2NConfig(PhotometricConfig, InstructPix2PixConfig):
    """Instruct-NeRF2NeRF: photometric fitting to a dataset edited by InstructPix2Pix as it trains."""

    update_every: int = 10
    """Replace the rendered views' training images every N steps (in2n: 10)."""
    instruction: str = ""
    """The InstructPix2Pix instruction ("make the mug blue"; empty: the run's prompt)."""

    def check(self) -> None:
        """The update period, the InstructPix2Pix settings and its model on disk."""
        if self.update_every < 1:
            raise UserError(f"--guidance.update-every must be >= 1, got {self.update_every}")
        InstructPix2PixConfig.check(self)


@OBJECTIVES.register("in2n")
class In2NObjective(PhotometricObjective):
    """Iterative dataset update with InstructPix2Pix; the target prompt is the instruction."""

    Config = In2NConfig  # type: ignore[assignment]
    config: In2NConfig

    def __init__(self, config: In2NConfig, prior: Any = None, total_steps: int = 0, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(config, prior, total_steps, generator)
        self.editor: Optional[InstructPix2PixEditor] = None
        self.originals: Optional[Tensor] = None
        self.instruction = ""
        self.updates = 0

    def prepare(self, context: StageContext) -> None:
        super().prepare(context)
        assert self.images is not None
        self.originals, self.images = self.images, self.images.clone()
        self.instruction = self.config.instruction or context.prompt
        self.editor = InstructPix2PixEditor.load(self.config, context.device)

    def __call__(self, images: Tensor, cams: Cameras, emb: Optional[TextEmbeddings], step: int,
                 out: Optional[RenderOutput] = None) -> ObjectiveOutput:
        if step % self.config.update_every == 0:
            self.update_dataset(images.detach(), _views(cams))
        g = super().__call__(images, cams, emb, step, out)
        g.logs["dataset_updates"] = float(self.updates)
        return g

    def update_dataset(self, renders: Tensor, views: Tensor) -> None:
        """Replace the training images of `views` by InstructPix2Pix edits of the renders."""
        assert self.editor is not None and self.originals is not None and self.images is not None
        original = _resized(self.originals[views], renders)
        edited = self.editor.edit(renders, original, self.instruction, self.generator)
        self.images[views] = _resized(edited.cpu(), self.images[views]).to(self.images)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("images") is not None:
            self.images = state["images"]
        self.updates = int(state.get("updates", 0))
