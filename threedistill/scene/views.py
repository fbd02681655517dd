"""Training views drawn from a scene's posed cameras (reconstruction and edit runs)."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any, Optional

import torch
from torch import Tensor

from ..core.cameras import Cameras, FixedViewSampler
from ..core.errors import UserError
from .loading import Scene, cameras_from_c2w, load_scene


TRAINING_DISTANCE = 2.8
"""Camera distance of the training orbit and of toyworld scenes (objects of radius ~1 at fov 40)."""
NORMALISED_DISTANCES = (2.0, 4.0)
"""Scenes whose cameras already sit this far from their look-at centre (near the origin) are kept as they are."""


@functools.lru_cache(maxsize=4)
def _cached_scene(path: str, downscale: int) -> Scene:
    return load_scene(path, downscale=downscale)


def look_at_centre(cams: Cameras) -> Tensor:
    """The point closest (least squares) to every camera's optical axis [3]."""
    origins = cams.c2w[:, :3, 3].double()
    axes = torch.nn.functional.normalize(cams.c2w[:, :3, 2].double(), dim=-1)  # OpenCV: +z looks forward
    projector = torch.eye(3, dtype=torch.float64) - axes[:, :, None] * axes[:, None, :]
    return torch.linalg.lstsq(projector.sum(0), (projector @ origins[:, :, None]).sum(0)).solution.squeeze(1).float()


def normalised(scene: Scene) -> Scene:
    """The scene moved and scaled so its cameras look at the origin from ~TRAINING_DISTANCE
    (mean distance), the framing our representations' [-1, 1]^3 box expects; a scene that
    already looks at the origin from 2-4 units (toyworld's) is returned unchanged."""
    cams = scene.cameras
    if len(cams) < 2:
        return scene
    centre = look_at_centre(cams)
    distance = float((cams.c2w[:, :3, 3] - centre).norm(dim=-1).mean())
    lo, hi = NORMALISED_DISTANCES
    if float(centre.norm()) < 0.25 and lo <= distance <= hi:
        return scene
    c2w = cams.c2w.clone()
    c2w[:, :3, 3] = (c2w[:, :3, 3] - centre) * (TRAINING_DISTANCE / max(distance, 1e-9))
    moved = cameras_from_c2w(c2w, cams.fov_y, cams.width, cams.height, cams.time)
    return replace(scene, cameras=moved)


def scene_for(sampler_config: Any) -> Scene:
    """The scene named by `sampler.scene`, shrunk by `sampler.scene_downscale` (0: to about `sampler.height`)."""
    if not sampler_config.scene:
        raise UserError("this objective fits posed images; pass --sampler.scene SCENE_DIR (or use `threedistill edit`)")
    factor = int(sampler_config.scene_downscale)
    if factor < 0:
        raise UserError(f"--sampler.scene-downscale must be >= 0, got {factor}")
    if factor == 0:
        height = int(_cached_scene(str(sampler_config.scene), 1).images.shape[-2])
        factor = max(1, round(height / max(int(sampler_config.height), 1)))
    scene = _cached_scene(str(sampler_config.scene), factor)
    return normalised(scene) if sampler_config.scene_normalise else scene


class SceneViewSampler(FixedViewSampler):
    """Batches of a scene's cameras, each carrying its index in `Cameras.view` (every view once per epoch)."""

    def __init__(self, scene: Scene, batch_size: int, device: torch.device | str = "cpu") -> None:
        super().__init__(scene.cameras, batch_size, device)
        self.scene = scene


class SizedViews:
    """Another sampler's cameras rendering at `size` x `size` (same field of view): the views of a latent
    field, rendered at the size of the prior's x0 image (`Needs.latent`)."""

    def __init__(self, sampler: Any, size: int) -> None:
        self.sampler, self.size = sampler, size

    def sample(self, generator: torch.Generator, batch_size: Optional[int] = None, time: Optional[torch.Tensor] = None) -> Cameras:
        cams: Cameras = self.sampler.sample(generator, batch_size, time)
        return cams.with_size(self.size, self.size)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
