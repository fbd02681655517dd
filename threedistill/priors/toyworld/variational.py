"""VSD's variational score model on toyworld: the exact score of the *rendered* distribution.

Where Stable Diffusion needs a LoRA network trained online to approximate the score of the
distribution of current renders, toyworld can compute it exactly: the same camera-kernel
posterior-mean denoiser as the prior, run over a ring buffer of the most recent detached
renders (with their camera directions) instead of the references. `cameras=None` drops the
camera kernel, which is the exact camera-unconditional branch ESD's entropy term needs, so
camera dropout has nothing to learn here. The text embedding is ignored: a run has one prompt.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import torch
from torch import Tensor

from ...core.cameras import Cameras
from ..base import VariationalConfig
from .references import ReferenceSet


class ExactPosterior(Protocol):
    """What the variational model uses of its prior (`ToyworldPrior`): the exact posterior over references."""

    device: torch.device

    def posterior_eps(self, x_t: Tensor, t: Tensor, refs: ReferenceSet, cam_dirs: Optional[Tensor]) -> Tensor: ...


class ToyworldVariationalModel:
    """Exact empirical denoiser over the last `config.buffer_size` renders."""

    def __init__(self, prior: ExactPosterior, config: VariationalConfig) -> None:
        if config.buffer_size < 1:
            raise ValueError(f"variational buffer_size must be >= 1, got {config.buffer_size}")
        self.prior = prior
        self.capacity = config.buffer_size
        self._x = torch.zeros(0, 0, dtype=torch.float64, device=prior.device)
        self._dirs = torch.zeros(0, 3, dtype=torch.float64, device=prior.device)
        self._refs: Optional[ReferenceSet] = None  # built from the buffer when first needed after a change

    def __len__(self) -> int:
        return self._x.shape[0]

    def _references(self) -> ReferenceSet:
        if self._refs is None:
            self._refs = ReferenceSet(self._x, self._dirs)
        return self._refs

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras: Optional[Cameras]) -> Tensor:
        """Epsilon of the rendered distribution (camera kernel off when `cameras` is None)."""
        if len(self) == 0:
            raise RuntimeError("the variational buffer is empty; call update() with renders first")
        dirs = None if cameras is None else cameras.directions().to(self.prior.device, torch.float64)
        return self.prior.posterior_eps(x_t, t, self._references(), dirs)

    @torch.no_grad()
    def update(self, x0: Tensor, emb: Tensor, cameras: Cameras, generator: torch.Generator) -> dict[str, float]:
        """Push detached renders (prior space) and their camera directions; keep the newest."""
        x = x0.detach().flatten(1).to(self.prior.device, torch.float64)
        dirs = cameras.directions().to(self.prior.device, torch.float64)
        self._x = torch.cat([self._x.view(-1, x.shape[1]), x])[-self.capacity :]
        self._dirs = torch.cat([self._dirs, dirs])[-self.capacity :]
        self._refs = None
        return {"vsd_buffer": float(len(self))}

    def state_dict(self) -> dict[str, Any]:
        return {"x": self._x.float().cpu(), "dirs": self._dirs.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._x = state["x"].to(self.prior.device, torch.float64)
        self._dirs = state["dirs"].to(self.prior.device, torch.float64)
        self._refs = None
