"""The reference view of an image-to-3D run (`threedistill run --image photo.png`).

The image must be RGBA: its alpha is the object's mask. It is seen from one camera
(`--reference.elevation/azimuth/distance/fov`; by default the front, azimuth 0, at the training
orbit's distance and field of view, so an image framed like a render of the [-1, 1]^3 box at
2.8 units fits as it is). Every step the representation is rendered from that camera on white
(the image is composited on white) and fitted with Magic123 / DreamGaussian's two losses:

    lambda_rgb  * 0.5 |render - image|^2        lambda_mask * 0.5 |alpha - mask|^2

summed over pixels (the scale of the score-distillation losses, one view), while the other
views are guided by the stage's objective and prior (zero123 on the image, a text prior on the
prompt, or toyworld on the object it identifies in the image). Magic123's combination adds SDS
from a text prior on the same views (`text_prior`, `text_weight`; engine/build.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.cameras import Cameras, orbit_cameras
from ..core.errors import UserError
from ..core.schedule import Schedule, evaluate_schedule
from ..core.types import ReferenceImage, RenderOutput
from ..export.images import read_image_with_alpha
from ..priors.base import PRIORS, PriorConfig

MAKE_RGBA = ("cut the object out onto a transparent background and save it as an RGBA PNG "
             "(e.g. `pip install rembg && rembg i photo.jpg photo.png`, or any image editor's background remover)")


@dataclass
class ReferenceConfig:
    """The reference view of `--image` (degrees; distance in world units)."""

    elevation: float = 0.0
    """Elevation of the camera that took the image (0: level with the object's centre)."""
    azimuth: float = 0.0
    """Azimuth of that camera (0: the object's front, +x)."""
    distance: float = 2.8
    """Its distance from the object's centre (the training orbit's default)."""
    fov: float = 40.0
    """Its vertical field of view."""
    lambda_rgb: Schedule = 1.0
    """Weight of 0.5 |render - image|^2 at the reference view (a schedule)."""
    lambda_mask: Schedule = 1.0
    """Weight of 0.5 |alpha - mask|^2 at the reference view (a schedule)."""
    text_prior: Optional[str] = None
    """Magic123's combination: also distil the prompt from this text prior (sd, toyworld-sd, ...) on every
    training view, weighted by `text_weight`, next to the stage's image prior (None: off)."""
    text_model: Optional[str] = None
    """The text prior's `model` (None: its default)."""
    text_weight: Schedule = 0.025
    """Weight of the text prior's SDS relative to the stage's objective (Magic123: 1 for SD against 40 for Zero123)."""

    def text_prior_config(self) -> Optional[tuple[str, PriorConfig]]:
        """The text prior's name and settings (its defaults, `text_model` as its model), or None when off."""
        if not self.text_prior:
            return None
        cls = PRIORS[self.text_prior]
        if cls.needs_image or cls.is_video:
            raise UserError(f"--reference.text-prior {self.text_prior} is not a text-to-image prior; use sd, toyworld-sd, ...")
        config = PRIORS.config_type(self.text_prior)()
        if self.text_model is not None:
            if "model" not in {f.name for f in dataclasses.fields(config)}:
                raise UserError(f"--reference.text-prior {self.text_prior} takes no model; drop --reference.text-model")
            config = dataclasses.replace(config, model=self.text_model)  # type: ignore[type-var]
        return self.text_prior, config


def read_reference(path: str | Path) -> tuple[Tensor, Tensor]:
    """The image [3,H,W] on white and its mask [1,H,W]; a file without alpha or without an object is a UserError."""
    rgb, alpha = read_image_with_alpha(path)
    if alpha is None:
        raise UserError(f"image '{path}' has no alpha channel, and image-to-3D needs the object's mask: {MAKE_RGBA}")
    coverage = float((alpha > 0.5).float().mean())
    if coverage == 0.0 or coverage == 1.0:
        raise UserError(f"image '{path}' is {'fully transparent' if coverage == 0 else 'fully opaque'}, so it shows no "
                        f"object's mask; {MAKE_RGBA}")
    return rgb, alpha


def reference_camera(config: ReferenceConfig, width: int, height: int) -> Cameras:
    one = torch.ones(1)
    return orbit_cameras(one * config.elevation, one * config.azimuth, one * config.distance, one * config.fov, width, height)


class ReferenceView:
    """The image, its mask and camera at the training resolution, and the per-step loss (module docstring)."""

    def __init__(self, path: str | Path, config: ReferenceConfig, width: int, height: int, device: torch.device) -> None:
        rgb, alpha = read_reference(path)
        self.config = config
        self.cameras = reference_camera(config, width, height).to(device)
        self.image = ReferenceImage(rgb[None].to(device), alpha[None].to(device), self.cameras)
        self.rgb = _resized(rgb[None], height, width).to(device)
        self.mask = _resized(alpha[None], height, width).to(device)

    def loss(self, render: Callable[[Cameras], RenderOutput], step: int, total_steps: int) -> tuple[Tensor, dict[str, float]]:
        """The weighted reference losses of the current representation (`render` on white), and their logs."""
        out = render(self.cameras)
        rgb_error = 0.5 * ((out.rgb - self.rgb) ** 2).sum()
        mask_error = 0.5 * ((out.alpha - self.mask) ** 2).sum()
        w_rgb = evaluate_schedule(self.config.lambda_rgb, step, total_steps)
        w_mask = evaluate_schedule(self.config.lambda_mask, step, total_steps)
        logs = {"reference_rgb": float(rgb_error.detach()), "reference_mask": float(mask_error.detach())}
        return w_rgb * rgb_error + w_mask * mask_error, logs


def _resized(image: Tensor, height: int, width: int) -> Tensor:
    if image.shape[-2:] == (height, width):
        return image
    down = image.shape[-1] > width or image.shape[-2] > height
    return F.interpolate(image, size=(height, width), mode="bilinear", align_corners=False, antialias=down)
