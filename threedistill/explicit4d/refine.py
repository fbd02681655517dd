"""Stage III of explicit 4D ("refine", EG4D): per camera a cached pseudo target, the image prior's one-step
img2img of the render at low strength, refreshed on a schedule.

The target of a view is made from the render of that view (detached): x0 = encode(render), noised to
t = strength x T (EG4D: 0.11 of the schedule), one prior call with the conditional prediction alone
(CFG 0: no unconditional branch), x0_hat = (x_t - sigma_t e) / alpha_t, decoded and resized to the
render's size. On toyworld x0_hat is the exact posterior mean (its decode is the identity map back to
[0,1]); on Stable Diffusion it is the VAE decode of the one-step latent. A view's target is made the
first time the view is drawn and remade when it is `refresh_every` steps old.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.cameras import Cameras
from ..priors.base import Prior, noise_coefficients


class PseudoTargets:
    """The refine stage's per-view targets [K,F',3,H,W] (F' = 1 with `first` frames, else F) and the step
    each was made at (-1: not yet)."""

    def __init__(self, views: int, frames: int, strength: float, refresh_every: int) -> None:
        self.views, self.frames = views, frames
        self.strength, self.refresh_every = strength, refresh_every
        self.targets: Optional[Tensor] = None
        self.made_at = torch.full((views,), -1, dtype=torch.long)
        self.refreshes = 0

    def timestep(self, prior: Prior) -> int:
        return max(1, min(prior.num_train_timesteps - 1, round(self.strength * prior.num_train_timesteps)))

    @torch.no_grad()
    def img2img(self, prior: Prior, emb: Any, frames: Tensor, cams: Cameras, generator: torch.Generator) -> Tensor:
        """One-step img2img of frames [N,3,H,W] (their cameras `cams`, embeddings `emb` one row each)."""
        x0 = prior.encode(frames.to(prior.device))
        t = torch.full((len(frames),), self.timestep(prior), dtype=torch.long, device=prior.device)
        a, s = noise_coefficients(prior.alphas_cumprod, t, x0.ndim)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        x_t = a * x0 + s * noise
        eps = prior.predict_eps(x_t, t, emb.cond, cams.to(prior.device))
        x0_hat = (x_t - s * eps) / a
        image = prior.decode(x0_hat).float()
        if image.shape[-2:] != frames.shape[-2:]:
            image = F.interpolate(image, size=frames.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        return image.clamp(0.0, 1.0).to(frames)

    def due(self, views: Tensor, step: int) -> Tensor:
        """Which of `views` [B] need a (new) target at `step`."""
        made = self.made_at[views]
        return (made < 0) | (step - made >= self.refresh_every)

    def update(self, views: Tensor, renders: Tensor, cams: Cameras, step: int, prior: Prior, emb: Any,
               generator: torch.Generator) -> None:
        """Remake the due targets of `views` [B] from their renders [B,F',3,H,W] (cams: B*F' view-major)."""
        due = self.due(views, step)
        if not bool(due.any()):
            return
        if self.targets is None:
            self.targets = torch.zeros(self.views, *renders.shape[1:], dtype=renders.dtype)
        rows = due.nonzero().squeeze(1)
        per_view = renders.shape[1]
        frame_rows = (rows[:, None] * per_view + torch.arange(per_view)).flatten()
        made = self.img2img(prior, emb.index(frame_rows.to(emb.cond.device)), renders[rows].flatten(0, 1), cams[frame_rows], generator)
        self.targets[views[rows]] = made.unflatten(0, (len(rows), per_view)).cpu().to(self.targets.dtype)
        self.made_at[views[rows]] = step
        self.refreshes += len(rows)

    def of(self, views: Tensor) -> Tensor:
        assert self.targets is not None, "update() first"
        return self.targets[views]

    def state_dict(self) -> dict[str, Any]:
        return {"targets": self.targets, "made_at": self.made_at, "refreshes": self.refreshes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("made_at") is not None:
            self.targets, self.made_at = state["targets"], state["made_at"]
            self.refreshes = int(state.get("refreshes", 0))
