"""Image metrics and the toyworld held-out evaluation."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.cameras import Cameras, heldout_cameras, orbit_cameras
from ..core.types import RenderOutput


BACK_AZIMUTH = 135.0  # |azimuth| above this is a back view (threestudio's back threshold)


def psnr(pred: Tensor, target: Tensor) -> float:
    """Mean over the batch of per-image PSNR (dB) for images in [0,1], [B,3,H,W]."""
    mse = ((pred.clamp(0, 1) - target.clamp(0, 1)) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((-10.0 * torch.log10(mse)).mean())


def psnr_to(truth: Tensor, images: Tensor) -> float:
    """PSNR of images [B,3,h,w] against one truth image [3,H,W], resized to their size."""
    target = truth[None].to(images.device, torch.float32)
    if target.shape[-2:] != images.shape[-2:]:
        target = torch.nn.functional.interpolate(target, size=images.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
    return psnr(images.float(), target.expand_as(images))


def mask_iou(pred_alpha: Tensor, target_alpha: Tensor, threshold: float = 0.5) -> float:
    """Intersection over union of the thresholded masks, pooled over the batch."""
    p, t = pred_alpha > threshold, target_alpha > threshold
    union = (p | t).sum().item()
    return 1.0 if union == 0 else (p & t).sum().item() / union


def score_against(render: RenderOutput, truth: RenderOutput) -> dict[str, float]:
    """mask_iou and psnr of one render batch against ground truth."""
    return {"mask_iou": mask_iou(render.alpha, truth.alpha), "psnr": psnr(render.rgb, truth.rgb)}


@torch.no_grad()
def evaluate_toyworld(representation: Any, prior: Any, prompt: str, n_views: int, background: Tensor) -> dict[str, Any]:
    """Scores over fixed held-out cameras against the closest mode of the prompt.

    Returns mask_iou, psnr, `back_psnr` (the held-out views within 45 degrees of the back,
    where front-only objects fail; absent when no view is there), `back_front_psnr` (the same
    back renders against the truth's front, see `front_seen_from_behind`: the Janus measure; the
    back "shows the front" when it beats back_psnr) and `mode` (index of the mode the asset
    matched best).
    """
    cams: Cameras = heldout_cameras(n_views, prior.resolution, prior.resolution).to(background.device)
    render = representation.render(cams, background)
    back = (cams.azimuth.abs() > BACK_AZIMUTH).nonzero().squeeze(1)
    best: dict[str, Any] = {"psnr": -math.inf}
    for i, mode in enumerate(prior.modes(prompt)):
        truth = prior.render_ground_truth(mode, cams)
        scores = score_against(render, truth)
        if scores["psnr"] > best["psnr"]:
            best = {**scores, "mode": i}
            if back.numel():  # too few held-out views may have none
                best["back_psnr"] = psnr(render.rgb[back], truth.rgb[back])
                best["back_front_psnr"] = front_seen_from_behind(render.rgb[back], prior, mode, cams[back])
    return best


def front_seen_from_behind(back_renders: Tensor, prior: Any, mode: Any, back_cams: Cameras) -> float:
    """PSNR of back-view renders against the truth's front: the view from the opposite azimuth,
    as it is or mirrored left-right, whichever matches better (a second face on the back of a
    Janus asset may be either). Higher than the back's own PSNR: the back shows the front."""
    front = orbit_cameras(back_cams.elevation, back_cams.azimuth - 180.0, back_cams.distance,
                          torch.rad2deg(back_cams.fov_y), back_cams.width, back_cams.height).to(back_renders.device)
    truth = prior.render_ground_truth(mode, front).rgb
    return max(psnr(back_renders, truth), psnr(back_renders, truth.flip(-1)))


@torch.no_grad()
def evaluate_toyworld_clips(representation: Any, prior: Any, prompt: str, n_views: int, frames: int, background: Tensor) -> dict[str, Any]:
    """Dynamic runs: every held-out camera at every frame time, against the animated ground truth.

    mask_iou and psnr are means over frames of each frame's scores (over all views);
    `per_frame` lists them; `mode` is the best-matching mode.
    """
    from ..core.motion import MotionConfig, clips_of

    cams = clips_of(heldout_cameras(n_views, prior.resolution, prior.resolution), frames, MotionConfig()).to(background.device)
    render = representation.render(cams, background)
    best: dict[str, Any] = {"psnr": -math.inf}
    for i, mode in enumerate(prior.modes(prompt)):
        truth = prior.render_ground_truth(mode, cams)
        per_frame = []
        for f in range(frames):
            rows = torch.arange(f, len(cams), frames, device=render.rgb.device)
            scores = score_against(_rows(render, rows), _rows(truth, rows))
            assert cams.time is not None
            per_frame.append({"time": round(float(cams.time[f]), 4), **scores})
        summary = {key: sum(s[key] for s in per_frame) / frames for key in ("mask_iou", "psnr")}
        if summary["psnr"] > best["psnr"]:
            best = {**summary, "mode": i, "per_frame": per_frame}
    return best


def _rows(out: RenderOutput, rows: Tensor) -> RenderOutput:
    return RenderOutput(rgb=out.rgb[rows], alpha=out.alpha[rows], depth=out.depth[rows])
