"""Scores of a PBR material against toyworld's known one (`--representation.material pbr`).

Over the held-out cameras, against the prompt's mode whose albedo matches best:
- `albedo_psnr`: the unshaded albedo maps on white, against the truth's;
- `roughness_mean` / `metallic_mean` and the truth's `true_roughness_mean` / `true_metallic_mean`,
  averaged over the pixels both cover, with `roughness_error` / `metallic_error`, the mean absolute
  per-pixel difference there.
The shaded PSNR under the held-out light is the stage's ordinary `psnr` (the representation and the
prior both render under `HELDOUT_LIGHT` there).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor

from ..core.cameras import Cameras, heldout_cameras
from .metrics import psnr


class MaterialTruth(Protocol):
    """A prior that knows its objects' materials (toyworld, toyworld-sd)."""

    resolution: int

    def modes(self, prompt: str) -> list[Any]: ...

    def material_truth(self, mesh: Any, cams: Cameras) -> tuple[Tensor, Tensor]:
        """Unshaded [albedo, roughness, metallic] maps [B,5,H,W] (premultiplied) and alpha [B,1,H,W]."""
        ...


def _on_white(maps: Tensor, alpha: Tensor) -> Tensor:
    return maps[:, :3] + (1.0 - alpha)


@torch.no_grad()
def score_materials(maps: Tensor, alpha: Tensor, truth: MaterialTruth, prompt: str, cams: Cameras) -> dict[str, Any]:
    """The material scores (module docstring) of maps [B,5,H,W] / alpha rendered at `cams`."""
    best: dict[str, Any] = {"albedo_psnr": -math.inf}
    for mode in truth.modes(prompt):
        true_maps, true_alpha = (x.to(maps.device) for x in truth.material_truth(mode, cams))
        albedo = psnr(_on_white(maps, alpha), _on_white(true_maps, true_alpha))
        if albedo <= best["albedo_psnr"]:
            continue
        both = ((alpha > 0.5) & (true_alpha > 0.5))[:, 0]
        pred = (maps[:, 3:5] / alpha.clamp_min(1e-6)).permute(0, 2, 3, 1)[both]  # [N,2] roughness, metallic
        true = (true_maps[:, 3:5] / true_alpha.clamp_min(1e-6)).permute(0, 2, 3, 1)[both]
        best = {"albedo_psnr": albedo}
        if len(pred):
            for i, name in enumerate(("roughness", "metallic")):
                best[f"{name}_mean"] = float(pred[:, i].mean())
                best[f"true_{name}_mean"] = float(true[:, i].mean())
                best[f"{name}_error"] = float((pred[:, i] - true[:, i]).abs().mean())
    return best


def material_scores(maps_of: Any, truth: MaterialTruth, prompt: str, n_views: int, device: torch.device) -> dict[str, Any]:
    """Held-out material scores of a representation's `material_maps` (empty when it has no PBR material)."""
    cams = heldout_cameras(n_views, truth.resolution, truth.resolution).to(device)
    rendered = maps_of(cams)
    if rendered is None:
        return {}
    return score_materials(rendered[0], rendered[1], truth, prompt, cams)
