"""Training views drawn from a scene's posed cameras (reconstruction and edit runs)."""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch

from ..cameras import Cameras
from ..errors import UserError
from .scene import Scene, load_scene


@functools.lru_cache(maxsize=4)
def _cached_scene(path: str, downscale: int) -> Scene:
    return load_scene(path, downscale=downscale)


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
    return _cached_scene(str(sampler_config.scene), factor)


class SceneViewSampler:
    """Batches of a scene's cameras, each carrying its index in `Cameras.view`.

    Every view is used once per epoch (a fresh random order each epoch) before any repeats."""

    def __init__(self, scene: Scene, batch_size: int, device: torch.device | str = "cpu") -> None:
        self.scene = scene
        self.config_batch_size = batch_size
        self.device = torch.device(device)
        self._order: Optional[torch.Tensor] = None
        self._next = 0

    def sample(self, generator: torch.Generator, batch_size: Optional[int] = None, time: Optional[torch.Tensor] = None) -> Cameras:
        n = len(self.scene)
        chosen = []
        for _ in range(batch_size or self.config_batch_size):
            if self._order is None or self._next >= n:
                self._order, self._next = torch.randperm(n, generator=generator), 0
            chosen.append(int(self._order[self._next]))
            self._next += 1
        index = torch.tensor(chosen, dtype=torch.long)
        cams = self.scene.cameras[index]
        cams.view = index
        return cams.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"order": self._order, "next": self._next}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._order, self._next = state.get("order"), int(state.get("next", 0))


def make_sampler(sampler_config: Any, device: torch.device) -> Any:
    """The run's camera sampler: a scene's views when `sampler.scene` is set, else the random orbit."""
    from ..cameras import OrbitSampler

    if sampler_config.scene:
        return SceneViewSampler(scene_for(sampler_config), sampler_config.batch_size, device)
    return OrbitSampler(sampler_config, device)
