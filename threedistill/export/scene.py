"""Multi-view image sets as nerfstudio / Blender scenes (`transforms.json` + PNGs).

transforms.json stores camera-to-world matrices in OpenGL camera axes (x right, y up,
z backward); our Cameras use OpenCV axes (x right, y down, z forward). The two differ by
negating the camera's y and z columns, which is its own inverse. Cameras carry no principal
point, so cx/cy are written at the image centre. Reading scenes back lives in
`threedistill.edit.scene` (`load_scene`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from threedistill.core.atomic import atomic_write_bytes, atomic_write_text
from threedistill.core.cameras import Cameras
from threedistill.core.types import render_in_chunks

_FLIP_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def opencv_to_opengl(c2w: Tensor) -> Tensor:
    """Convert c2w [B,4,4] between OpenCV and OpenGL camera axes (the map is an involution)."""
    return c2w @ _FLIP_YZ.to(c2w)


def _to_uint8(image: Tensor) -> np.ndarray:
    """[C,H,W] in [0,1] -> [H,W,C] uint8 (C squeezed when 1)."""
    array = (image.detach().float().clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def _write_png(path: Path, image: Tensor) -> None:
    atomic_write_bytes(path, iio.imwrite("<bytes>", _to_uint8(image), extension=".png"))


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


def write_rendered_scene(out_dir: str | Path, render: Any, cams: Cameras, chunk: int = 8) -> Path:
    """Render `cams` with `render(cams) -> RenderOutput` in chunks and write them as a scene (with masks)."""
    out = render_in_chunks(render, cams, chunk)
    return write_nerfstudio_scene(out_dir, out.rgb, cams.to("cpu"), out.alpha)
