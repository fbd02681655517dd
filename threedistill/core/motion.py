"""Dynamic (4D) runs: clips of frames over time, and the priors that see them.

A dynamic run (`--dynamic`) wraps its representation in a deformation field
(representations/deformation.py) and renders clips: each training view is one camera (or a
short camera move) at the F frame times f / (F - 1). A video prior scores whole clips
([B, F, 3, H, W], view-major cameras, one prompt embedding per clip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from .cameras import Cameras, orbit_cameras
from .schedule import Schedule

VIDEO_PRIOR_OF = {"toyworld": "toyworld-video", "sd": "video-sd"}
"""`--dynamic` swaps a text-to-image prior for its text-to-video counterpart."""
IMAGE_PRIOR_OF = {video: image for image, video in VIDEO_PRIOR_OF.items()}
"""The image prior of the hybrid objective (`motion.image_weight`)."""


@dataclass
class MotionConfig:
    """Clips of dynamic runs."""

    frames: Optional[int] = None
    """Frames per clip (None: the video prior's clip length, which it must equal)."""
    camera_motion: Literal["fixed", "orbit"] = "fixed"
    """fixed: one camera per clip; orbit: the camera sweeps `orbit_degrees` of azimuth over it."""
    orbit_degrees: float = 30.0
    motion_amplification: float = 1.0
    """Scale each frame's gradient deviation from its clip's mean gradient (Align Your Gaussians'
    motion amplification; 1: off)."""
    image_weight: Schedule = 0.0
    """Hybrid objective (4D-fy, Align Your Gaussians): this weight times per-frame SDS from the
    video prior's image counterpart (toyworld-video -> toyworld, video-sd -> sd; it takes the video
    prior's settings of the same names, except the model) is added, so the image prior keeps each frame's appearance while the video prior
    drives the motion. 0: off."""
    image_frames: Literal["first", "all"] = "first"
    """Frames the image objective sees: each clip's first (toyworld's image prior knows an
    animated object only at t = 0) or all of them (a time-agnostic prior such as SD)."""


def video_prior_name(prior: str, dynamic: bool) -> str:
    """The prior a run uses: the video counterpart of an image prior when dynamic."""
    return VIDEO_PRIOR_OF.get(prior, prior) if dynamic else prior


def frame_times(frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The F frame times of a clip: f / (F - 1) (0 for a single frame)."""
    return torch.linspace(0.0, 1.0, frames, device=device) if frames > 1 else torch.zeros(1, device=device)


def clips_of(cams: Cameras, frames: int, config: MotionConfig) -> Cameras:
    """B cameras -> B*F view-major cameras with times (clip b's frames are rows b*F .. b*F+F-1)."""
    index = torch.arange(len(cams), device=cams.device).repeat_interleave(frames)
    out = cams[index]
    times = frame_times(frames, cams.device)
    out.time = times.repeat(len(cams))
    if config.camera_motion == "orbit" and frames > 1:
        sweep = (times - 0.5).repeat(len(cams)) * config.orbit_degrees
        moved = orbit_cameras(out.elevation, out.azimuth + sweep, out.distance, torch.rad2deg(out.fov_y), cams.width, cams.height, time=out.time)
        out = moved.to(cams.device)
    return out


def amplify_motion(clip: torch.Tensor, factor: float) -> None:
    """Hook on renders [B,F,...]: each frame's gradient becomes mean + factor * (own - mean)."""
    if factor == 1.0 or not clip.requires_grad:
        return

    def hook(g: torch.Tensor) -> torch.Tensor:
        mean = g.mean(1, keepdim=True)
        return mean + factor * (g - mean)

    clip.register_hook(hook)
