"""Multi-view image sets as nerfstudio / Blender scenes (`transforms.json` + PNGs).

transforms.json stores camera-to-world matrices in OpenGL camera axes (x right, y up,
z backward); our Cameras use OpenCV axes (x right, y down, z forward). The two differ by
negating the camera's y and z columns, which is its own inverse. Cameras carry no principal
point, so a scene's cx/cy are assumed to be the image centre when it is read back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from threedistill.atomic import atomic_path, atomic_write_text
from threedistill.cameras import Cameras
from threedistill.errors import UserError
from threedistill.export.images import read_image

_FLIP_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def opencv_to_opengl(c2w: Tensor) -> Tensor:
    """Convert c2w [B,4,4] between OpenCV and OpenGL camera axes (the map is an involution)."""
    return c2w @ _FLIP_YZ.to(c2w)


def _to_uint8(image: Tensor) -> np.ndarray:
    """[C,H,W] in [0,1] -> [H,W,C] uint8 (C squeezed when 1)."""
    array = (image.detach().float().clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def _write_png(path: Path, image: Tensor) -> None:
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, _to_uint8(image))


def _frame_entry(i: int, c2w: Tensor, cams: Cameras, with_mask: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "file_path": f"images/frame_{i:05d}.png",
        "transform_matrix": c2w.tolist(),
        # Per-frame focal lengths: nerfstudio lets them override the top-level ones.
        "fl_x": float(cams.focal[i]),
        "fl_y": float(cams.focal[i]),
    }
    if with_mask:
        entry["mask_path"] = f"masks/frame_{i:05d}.png"
    if cams.time is not None:
        entry["time"] = float(cams.time[i])
    return entry


def write_nerfstudio_scene(out_dir: str | Path, images: Tensor, cams: Cameras, alpha: Optional[Tensor] = None) -> Path:
    """Write images [B,3,H,W] in [0,1] and their cameras as a nerfstudio scene; return out_dir.

    Layout: images/frame_00000.png ... (RGB), masks/frame_00000.png ... (8-bit alpha, when
    `alpha` [B,1,H,W] is given) and transforms.json (camera_model OPENCV, OpenGL c2w).
    """
    out = Path(out_dir)
    B, _, H, W = images.shape
    if B != len(cams) or (H, W) != (cams.height, cams.width):
        raise ValueError(f"images {tuple(images.shape)} do not match {len(cams)} cameras of {cams.width}x{cams.height}")
    c2w_gl = opencv_to_opengl(cams.c2w.detach().double().cpu())
    cams = cams.to("cpu")
    for i in range(B):
        _write_png(out / "images" / f"frame_{i:05d}.png", images[i])
        if alpha is not None:
            _write_png(out / "masks" / f"frame_{i:05d}.png", alpha[i])
    meta = {
        "camera_model": "OPENCV",
        "fl_x": float(cams.focal[0]),
        "fl_y": float(cams.focal[0]),
        "cx": 0.5 * W,
        "cy": 0.5 * H,
        "w": W,
        "h": H,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "frames": [_frame_entry(i, c2w_gl[i], cams, alpha is not None) for i in range(B)],
    }
    atomic_write_text(out / "transforms.json", json.dumps(meta, indent=2))
    return out


def _load_meta(scene: Path) -> dict[str, Any]:
    path = scene / "transforms.json"
    if not path.is_file():
        raise UserError(f"no transforms.json in {scene}; pass a nerfstudio or Blender scene folder")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed {path}: {exc}; fix or regenerate the file") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise UserError(f"malformed {path}: no 'frames' list; expected the nerfstudio/Blender transforms.json format")
    return meta


def _read_image(scene: Path, file_path: str) -> Tensor:
    """An RGB image [3,H,W] in [0,1]; RGBA is composited on white; a missing suffix tries .png."""
    path = scene / file_path
    if not path.is_file() and not path.suffix:
        path = path.with_suffix(".png")
    if not path.is_file():
        raise UserError(f"image {path} listed in transforms.json is missing; check the scene folder")
    return read_image(path)


def _focal_y(meta: dict[str, Any], frame: dict[str, Any], width: int, height: int) -> float:
    """Vertical focal length in pixels from nerfstudio (fl_y) or Blender (camera_angle_x) keys."""
    for source in (frame, meta):
        if "fl_y" in source:
            return float(source["fl_y"]) * height / float(source.get("h", meta.get("h", height)))
        if "fl_x" in source:
            return float(source["fl_x"]) * width / float(source.get("w", meta.get("w", width)))
        if "camera_angle_x" in source:
            return 0.5 * width / math.tan(0.5 * float(source["camera_angle_x"]))
    raise UserError("transforms.json has no focal length (fl_x/fl_y or camera_angle_x); add one")


def cameras_from_c2w(c2w: Tensor, fov_y: Tensor, width: int, height: int, time: Optional[Tensor] = None) -> Cameras:
    """Cameras from OpenCV c2w [B,4,4], with elevation/azimuth/distance from their positions."""
    pos = c2w[:, :3, 3]
    distance = pos.norm(dim=-1)
    elevation = torch.rad2deg(torch.asin((pos[:, 2] / distance.clamp(min=1e-12)).clamp(-1, 1)))
    azimuth = torch.rad2deg(torch.atan2(pos[:, 1], pos[:, 0]))
    return Cameras(c2w, fov_y, width, height, elevation, azimuth, distance, time)


def read_nerfstudio_scene(scene_dir: str | Path) -> tuple[Tensor, Cameras]:
    """Load a nerfstudio/Blender scene: images [B,3,H,W] in [0,1] and their Cameras (OpenCV axes).

    Frames are read as listed; all images must share one size (the first frame's).
    """
    scene = Path(scene_dir)
    meta = _load_meta(scene)
    images, c2ws, fovs, times = [], [], [], []
    for i, frame in enumerate(meta["frames"]):
        try:
            images.append(_read_image(scene, str(frame["file_path"])))
            c2w = torch.tensor(frame["transform_matrix"], dtype=torch.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"malformed frame {i} in {scene / 'transforms.json'}: {exc!r}; each frame needs file_path and a 4x4 transform_matrix") from None
        if c2w.shape != (4, 4) or images[-1].shape != images[0].shape:
            raise UserError(f"malformed frame {i} in {scene / 'transforms.json'}: transform_matrix must be 4x4 and all images one size")
        c2ws.append(c2w)
        H, W = images[-1].shape[1:]
        fovs.append(2.0 * math.atan(0.5 * H / _focal_y(meta, frame, W, H)))
        times.append(frame.get("time"))
    H, W = images[0].shape[1:]
    c2w_cv = opencv_to_opengl(torch.stack(c2ws)).float()
    time = torch.tensor(times, dtype=torch.float32) if all(t is not None for t in times) else None
    return torch.stack(images), cameras_from_c2w(c2w_cv, torch.tensor(fovs, dtype=torch.float32), W, H, time)
