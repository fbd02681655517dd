"""Save renders as images, image grids, MP4 videos and GIFs (all written atomically)."""

from __future__ import annotations

import errno
import math
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import torch

from threedistill.core.atomic import atomic_path, atomic_write_bytes
from threedistill.core.errors import UserError
from threedistill.core.runtime import quiet_libraries

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".gif")
MIN_VIDEO_SIDE = 256


def _float_to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float images [B,3,H,W] in [0,1] -> uint8 numpy [B,H,W,3] (values clamped)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B,3,H,W], got shape {tuple(images.shape)}")
    return _float_to_uint8(images.transpose(0, 2, 3, 1))


def _as_hwc_uint8(image: Any) -> np.ndarray:
    """One image or a stack (...xHxWx3 numpy-style or ...x3xHxW torch-style) -> uint8 channel-last."""
    is_tensor = isinstance(image, torch.Tensor)
    arr = image.detach().cpu().numpy() if is_tensor else np.asarray(image)
    chw = arr.ndim >= 3 and arr.shape[-3] == 3 and (is_tensor or arr.shape[-1] != 3)
    if chw:
        arr = np.moveaxis(arr, -3, -1)
    if arr.ndim < 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected RGB images HxWx3 or 3xHxW, got shape {tuple(image.shape)}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        return _float_to_uint8(arr.astype(np.float32))
    raise ValueError(f"expected uint8 or float images, got dtype {arr.dtype}")


def image_grid(images: Any, nrow: int | None = None, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile images [B,3,H,W] (or [B,H,W,3]) into one uint8 image [H',W',3].

    `nrow` is the number of images per row (as in torchvision's make_grid); by default the
    grid is near-square (ceil(sqrt(B)) per row). `pad` pixels of `pad_value` surround every tile.
    """
    tiles = _as_hwc_uint8(images)
    if tiles.ndim != 4:
        raise ValueError(f"expected a batch of images, got shape {tuple(tiles.shape)}")
    b, h, w, _ = tiles.shape
    cols = max(1, min(b, nrow if nrow else math.ceil(math.sqrt(b))))
    rows = math.ceil(b / cols)
    fill = _float_to_uint8(np.array(pad_value, np.float32))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for i in range(b):
        y, x = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[y:y + h, x:x + w] = tiles[i]
    return grid


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An RGB image [3,H,W] in [0,1] from an 8- or 16-bit grey, grey+alpha, RGB or RGBA file (alpha composited on
    white); anything else, or an unreadable file, is a UserError."""
    return read_image_with_alpha(path)[0]


def read_image_with_alpha(path: str | os.PathLike) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """`read_image`'s RGB [3,H,W] (composited on white) and the file's alpha [1,H,W] (None when it has none)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image '{path}' not found; pass an existing PNG or JPEG file")
    try:
        with quiet_libraries("imageio"):  # its plugins warn while guessing a format
            array = np.asarray(iio.imread(path, index=0) if path.suffix.lower() in (".gif", ".webp", ".tif", ".tiff") else iio.imread(path))
    except Exception as exc:  # imageio raises many kinds for corrupt or unknown files (and PIL's DecompressionBombError)
        raise UserError(f"cannot read image '{path}' ({type(exc).__name__}); pass a valid PNG or JPEG file") from None
    channels = 1 if array.ndim == 2 else (array.shape[-1] if array.ndim == 3 else 0)
    if array.dtype not in (np.uint8, np.uint16) or channels not in (1, 2, 3, 4) or min(array.shape[:2]) < 1:
        raise UserError(f"image '{path}' is not an 8/16-bit grey/RGB/RGBA image (shape {list(array.shape)}, {array.dtype}); "
                        "convert it to an 8-bit RGB PNG")
    values = array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 65535.0)
    image = torch.from_numpy(np.ascontiguousarray(values.reshape(*values.shape[:2], channels))).permute(2, 0, 1)
    colour, alpha = (image[:1].expand(3, -1, -1), image[1:]) if channels <= 2 else (image[:3], image[3:])
    if alpha.shape[0]:
        colour = colour * alpha + (1.0 - alpha)
    return colour.contiguous(), (alpha.contiguous() if alpha.shape[0] else None)


def save_rgba(path: str | os.PathLike, rgb: torch.Tensor, alpha: torch.Tensor) -> Path:
    """Write colour [3,H,W] and alpha [1,H,W] in [0,1] as an 8-bit RGBA PNG (atomically)."""
    path = Path(path)
    _check_suffix(path, (".png",), "RGBA image")
    array = np.concatenate([_as_hwc_uint8(rgb), _as_hwc_uint8(alpha.expand(3, -1, -1))[..., :1]], axis=-1)
    atomic_write_bytes(path, iio.imwrite("<bytes>", array, extension=".png"))
    return path


def _check_suffix(path: Path, allowed: tuple[str, ...], kind: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise UserError(f"cannot write {kind} '{path}': unsupported extension '{path.suffix}'; "
                        f"use one of {', '.join(allowed)}")
    return suffix


def save_image(path: str | os.PathLike, image: Any) -> Path:
    """Write one image (HxWx3 or 3xHxW, uint8 or float in [0,1]) atomically as PNG/JPEG."""
    target = Path(path)
    _check_suffix(target, IMAGE_SUFFIXES, "image")
    pixels = _as_hwc_uint8(image)
    if pixels.ndim != 3:
        raise ValueError(f"expected one image, got shape {tuple(pixels.shape)}")
    atomic_write_bytes(target, iio.imwrite("<bytes>", pixels, extension=target.suffix.lower()))
    return target


def save_image_grid(path: str | os.PathLike, images: Any, nrow: int | None = None) -> Path:
    """Tile images [B,3,H,W] with `image_grid` and write the grid atomically."""
    return save_image(path, image_grid(images, nrow=nrow))


def _video_frames(frames: Any) -> np.ndarray:
    arr = _as_hwc_uint8(frames)
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise ValueError(f"expected frames [T,H,W,3] or [T,3,H,W] with T>0, got shape {tuple(arr.shape)}")
    return arr


def _even_and_visible(frames: np.ndarray, min_side: int = MIN_VIDEO_SIDE) -> np.ndarray:
    """Upscale tiny frames (nearest, integer factor) and edge-pad to even width/height for yuv420p."""
    _, h, w, _ = frames.shape
    factor = max(1, math.ceil(min_side / max(h, w)))
    if factor > 1:
        frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(frames)


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """libx264/yuv420p through ffmpeg; its messages are captured, and a full disk is an OSError(ENOSPC)."""
    frames = _even_and_visible(frames)
    height, width = frames.shape[1:3]
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}",
               "-pix_fmt", "rgb24", "-r", str(fps), "-i", "-", "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p",
               "-crf", "10", "-v", "error", "-f", "mp4", str(path)]
    # its own session: a Ctrl-C meant for us does not cut the file short (we stop after it is written)
    done = subprocess.run(command, input=frames.tobytes(), capture_output=True, start_new_session=True)
    if done.returncode != 0:
        message = " ".join(done.stderr.decode(errors="replace").split())
        if "No space left on device" in message:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        raise OSError(f"ffmpeg could not write {path}: {message[-300:] or f'exit code {done.returncode}'}")


def _write_gif(path: Path, frames: np.ndarray, fps: int) -> None:
    duration_ms = max(10, round(1000 / fps))
    data = iio.imwrite("<bytes>", frames, extension=".gif", duration=duration_ms, loop=0)
    with open(path, "wb") as f:
        f.write(data)


def write_video(path: str | os.PathLike, frames: Any, fps: int = 24) -> Path:
    """Write frames (uint8 [T,H,W,3] or float tensor [T,3,H,W] in [0,1]) as .mp4 or looping .gif.

    MP4 uses libx264/yuv420p; frames are nearest-upscaled to at least 256 px and padded to even
    sizes. The file is written atomically.
    """
    target = Path(path)
    suffix = _check_suffix(target, VIDEO_SUFFIXES, "video")
    arr = _video_frames(frames)
    write = _write_mp4 if suffix == ".mp4" else _write_gif
    with atomic_path(target) as tmp:
        write(tmp, arr, int(fps))
    return target
