"""Multi-view scenes to edit: nerfstudio / Blender `transforms.json` folders and threedistill runs.

transforms.json formats read here:

* nerfstudio: intrinsics `fl_x`, `fl_y`, `cx`, `cy`, `w`, `h` at the top level and/or per frame
  (a frame's keys override the top-level ones), `file_path` with its extension, optional
  `mask_path` (8-bit, 0 = ignore the pixel), optional `applied_transform` (3x4 or 4x4; it
  records a transform already applied to the poses, so it is only validated).
* Blender synthetic: `camera_angle_x` (horizontal field of view, radians), `file_path` without
  extension (`./train/r_0` -> `./train/r_0.png`), RGBA PNGs whose alpha is the mask. When a
  folder has no transforms.json, its `transforms_train.json` is read (the Blender layout).

Choices (DESIGN.md section 4):

* `transform_matrix` is camera-to-world in OpenGL camera axes (x right, y up, z backward);
  it is converted to our OpenCV axes on load (`export.scene.opencv_to_opengl`).
* Cameras have square pixels and no principal point: `fl_x` and `fl_y` must agree within 1 %
  (the vertical `fl_y` is used), and `cx`/`cy` must lie within 1 px of the image centre,
  otherwise the scene is refused with a one-line error (crop the images about the principal
  point first). Lens distortion coefficients are ignored; fisheye / equirectangular camera
  models are refused.
* When the declared `w`/`h` differ from the image files (e.g. downscaled copies), the
  intrinsics are rescaled to the files.
* RGBA images are composited on white (the project's background); the alpha becomes the mask
  unless a `mask_path` is given. `mask_path` masks never change the RGB.
* Frames keep the file's order; no normalisation of the world is done here.

Every malformed input is a `UserError` whose one-line message names the file, the field, the
problem and the fix.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.cameras import Cameras
from ..core.errors import UserError
from ..core.runtime import quiet_libraries
from ..export.scene import opencv_to_opengl

TRANSFORMS_FILES = ("transforms.json", "transforms_train.json")
UNSUPPORTED_CAMERA_MODELS = ("OPENCV_FISHEYE", "EQUIRECTANGULAR", "FISHEYE")
PRINCIPAL_POINT_TOLERANCE_PX = 1.0
SQUARE_PIXEL_TOLERANCE = 0.01


@dataclass
class Scene:
    """Posed images of one scene: images [N,3,H,W] in [0,1], OpenCV cameras, optional masks [N,1,H,W]."""

    images: Tensor
    cameras: Cameras
    masks: Optional[Tensor]
    name: str
    source: Path

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: Sequence[int]) -> "Scene":
        """The views at `indices`, in that order."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        masks = None if self.masks is None else self.masks[idx]
        return replace(self, images=self.images[idx], cameras=self.cameras[idx], masks=masks)

    def split(self, holdout_every: int = 8) -> tuple["Scene", "Scene"]:
        """(train, held-out): every `holdout_every`-th view (0, k, 2k, ...) is held out (LLFF / Mip-NeRF 360 rule).

        With fewer than 2 views, or holdout_every < 2, every view trains and none is held out.
        """
        n = len(self)
        held = set(range(0, n, holdout_every)) if holdout_every >= 2 and n >= 2 else set()
        return self.subset([i for i in range(n) if i not in held]), self.subset(sorted(held))


def is_run_folder(path: str | Path) -> bool:
    """True for a threedistill run folder (config.yaml + checkpoints/last.pt, made by `threedistill run`)."""
    p = Path(path)
    return (p / "config.yaml").is_file() and (p / "checkpoints" / "last.pt").is_file()


def cameras_from_c2w(c2w: Tensor, fov_y: Tensor, width: int, height: int, time: Optional[Tensor] = None) -> Cameras:
    """Cameras from OpenCV c2w [B,4,4], with elevation/azimuth/distance from their positions."""
    pos = c2w[:, :3, 3]
    distance = pos.norm(dim=-1)
    elevation = torch.rad2deg(torch.asin((pos[:, 2] / distance.clamp(min=1e-12)).clamp(-1, 1)))
    azimuth = torch.rad2deg(torch.atan2(pos[:, 1], pos[:, 0]))
    return Cameras(c2w, fov_y, width, height, elevation, azimuth, distance, time)


# ---------------------------------------------------------------------------- validation
class _Meta:
    """A parsed transforms.json and the helpers that turn its problems into one-line errors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = path.parent
        try:
            self.data: Any = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"malformed {path}: not valid JSON ({exc}); fix or regenerate the file") from None
        except OSError as exc:
            raise UserError(f"cannot read {path} ({exc.strerror or exc}); check the file's permissions") from None
        if not isinstance(self.data, dict):
            self.fail("top level", f"expected a JSON object, got {type(self.data).__name__}", "use the nerfstudio/Blender format")
        frames = self.data.get("frames")
        if not isinstance(frames, list) or not frames:
            got = "missing" if frames is None else ("empty" if frames == [] else f"a {type(frames).__name__}")
            self.fail("frames", f"expected a non-empty list of frames, got {got}", "list one object per image")
        self.frames: list[Any] = frames

    def fail(self, field: str, problem: str, fix: str) -> None:
        """Raise the one-line error for `field`."""
        raise UserError(" ".join(f"malformed {self.path}: field '{field}': {problem}; {fix}".split()))

    def frame(self, i: int) -> dict[str, Any]:
        frame = self.frames[i]
        if not isinstance(frame, dict):
            self.fail(f"frames[{i}]", f"expected an object, got {type(frame).__name__}", "each frame needs file_path and transform_matrix")
        return frame

    def get(self, frame: dict[str, Any], i: int, key: str) -> tuple[Any, str]:
        """A frame's value for `key`, else the top-level one (None when neither has it), and its field name."""
        if key in frame:
            return frame[key], f"frames[{i}].{key}"
        return self.data.get(key), key

    def number(self, frame: dict[str, Any], i: int, key: str, positive: bool = False) -> Optional[float]:
        value, field = self.get(frame, i, key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(field, f"expected a number, got {json.dumps(value)[:40]}", "write it as a plain JSON number")
        if positive and value <= 0:
            self.fail(field, f"must be positive, got {value}", "write the value in pixels (or radians for angles)")
        return float(value)

    def matrix(self, value: Any, field: str, rows: tuple[int, ...] = (4,)) -> Tensor:
        try:
            m = torch.tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            self.fail(field, "expected a 4x4 list of numbers", "write the camera-to-world matrix as 4 rows of 4 numbers")
        if m.ndim != 2 or m.shape[0] not in rows or m.shape[1] != 4:
            self.fail(field, f"expected a {' or '.join(f'{r}x4' for r in rows)} matrix, got shape {list(m.shape)}",
                      "write the camera-to-world matrix as 4 rows of 4 numbers")
        if not torch.isfinite(m).all():
            self.fail(field, "contains NaN or infinity", "fix the poses")
        return m

    def c2w(self, frame: dict[str, Any], i: int) -> Tensor:
        field = f"frames[{i}].transform_matrix"
        if "transform_matrix" not in frame:
            self.fail(field, "missing", "give each frame its 4x4 camera-to-world transform_matrix")
        m = self.matrix(frame["transform_matrix"], field)
        if not torch.allclose(m[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=m.dtype), atol=1e-6):
            self.fail(field, f"last row must be [0, 0, 0, 1], got {m[3].tolist()}", "write a rigid camera-to-world matrix")
        rot = m[:3, :3]
        if not torch.allclose(rot.T @ rot, torch.eye(3, dtype=m.dtype), atol=1e-2):
            self.fail(field, "rotation part is not orthonormal (scaled or sheared)", "write a rigid camera-to-world matrix")
        return m

    def file(self, frame: dict[str, Any], i: int, key: str) -> Path:
        field = f"frames[{i}].{key}"
        value = frame.get(key)
        if not isinstance(value, str) or not value:
            self.fail(field, "missing" if value is None else f"expected a path string, got {json.dumps(value)[:40]}",
                      "give the image path relative to the scene folder")
        assert isinstance(value, str)
        path = self.root / value
        if not path.is_file() and not path.suffix and path.with_suffix(".png").is_file():
            path = path.with_suffix(".png")  # Blender synthetic: "./train/r_0"
        if not path.is_file():
            self.fail(field, f"image {path} is missing", "check the scene folder or the path in transforms.json")
        return path


def _read_array(meta: _Meta, path: Path, field: str) -> np.ndarray:
    """An image file as float32 [H,W,C] in [0,1] (8- or 16-bit; C in 1..4)."""
    try:
        with quiet_libraries("imageio"):  # its plugins warn while guessing a format
            array = np.asarray(iio.imread(path))
    except Exception as exc:  # imageio raises many kinds for corrupt or unknown files
        meta.fail(field, f"cannot read {path} ({type(exc).__name__})", "replace it with a valid PNG or JPEG")
    if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] > 4):
        meta.fail(field, f"{path} is not an 8/16-bit grey/RGB/RGBA image (shape {list(array.shape)}, {array.dtype})", "convert it to PNG")
    scale = 255.0 if array.dtype == np.uint8 else 65535.0
    array = array.astype(np.float32) / scale
    return array[..., None] if array.ndim == 2 else array


def _read_frame(meta: _Meta, frame: dict[str, Any], i: int) -> tuple[Tensor, Optional[Tensor]]:
    """RGB [3,H,W] composited on white and the mask [1,H,W] (mask_path, else alpha, else None)."""
    array = torch.from_numpy(_read_array(meta, meta.file(frame, i, "file_path"), f"frames[{i}].file_path")).permute(2, 0, 1)
    rgb = array[:3] if array.shape[0] >= 3 else array[:1].expand(3, -1, -1)
    alpha = array[3:4] if array.shape[0] in (2, 4) else None
    alpha = array[1:2] if array.shape[0] == 2 else alpha
    if alpha is not None:
        rgb = rgb * alpha + (1.0 - alpha)
    if "mask_path" in frame:
        mask_arr = _read_array(meta, meta.file(frame, i, "mask_path"), f"frames[{i}].mask_path")
        mask = torch.from_numpy(mask_arr[..., :1].copy()).permute(2, 0, 1)
        if mask.shape[1:] != rgb.shape[1:]:
            meta.fail(f"frames[{i}].mask_path", f"mask is {mask.shape[2]}x{mask.shape[1]} but its image is "
                      f"{rgb.shape[2]}x{rgb.shape[1]}", "write masks at their images' size")
        alpha = mask
    return rgb.contiguous(), alpha


def _fov_y(meta: _Meta, frame: dict[str, Any], i: int, width: int, height: int) -> float:
    """Vertical field of view (radians) of frame i, whose image is width x height pixels."""
    model, field = meta.get(frame, i, "camera_model")
    if isinstance(model, str) and model.upper() in UNSUPPORTED_CAMERA_MODELS:
        meta.fail(field, f"camera model {model} is not supported", "undistort the images to a pinhole (OPENCV/PINHOLE) model")
    w_decl = meta.number(frame, i, "w", positive=True) or float(width)
    h_decl = meta.number(frame, i, "h", positive=True) or float(height)
    sx, sy = width / w_decl, height / h_decl
    if abs(sx / sy - 1.0) > SQUARE_PIXEL_TOLERANCE:
        meta.fail("w/h", f"declared size {w_decl:g}x{h_decl:g} does not match the image's aspect ({width}x{height})",
                  "fix w and h or the image files")
    for key, centre, scale in (("cx", 0.5 * w_decl, sx), ("cy", 0.5 * h_decl, sy)):
        value = meta.number(frame, i, key)
        if value is not None and abs(value - centre) * scale > PRINCIPAL_POINT_TOLERANCE_PX:
            _, name = meta.get(frame, i, key)
            meta.fail(name, f"principal point {value:g} is off the image centre {centre:g}; off-centre principal "
                      "points are not supported", "crop the images symmetrically about (cx, cy) and update w, h, cx, cy")
    fl_x = meta.number(frame, i, "fl_x", positive=True)
    fl_y = meta.number(frame, i, "fl_y", positive=True)
    if fl_x is not None and fl_y is not None and abs(fl_x / fl_y - 1.0) > SQUARE_PIXEL_TOLERANCE:
        meta.fail("fl_x/fl_y", f"fl_x {fl_x:g} and fl_y {fl_y:g} differ: non-square pixels are not supported",
                  "resample the images to square pixels")
    if fl_y is not None or fl_x is not None:
        focal = (fl_y * sy) if fl_y is not None else (fl_x * sx)  # type: ignore[operator]
        return 2.0 * math.atan(0.5 * height / focal)
    angle_x = meta.number(frame, i, "camera_angle_x", positive=True)
    if angle_x is not None:
        if angle_x >= math.pi:
            meta.fail("camera_angle_x", f"{angle_x:g} rad is not a pinhole field of view", "write the horizontal field of view in radians")
        return 2.0 * math.atan(height / width * math.tan(0.5 * angle_x))
    meta.fail(f"frames[{i}]", "no focal length (fl_x/fl_y or camera_angle_x) in the frame or at the top level", "add fl_x and fl_y in pixels")
    raise AssertionError  # unreachable


def _find_transforms(path: Path) -> Path:
    if not path.exists():
        raise UserError(f"scene '{path}' does not exist; pass a folder with transforms.json (nerfstudio or Blender)")
    if path.is_file():
        return path
    for name in TRANSFORMS_FILES:
        if (path / name).is_file():
            return path / name
    if is_run_folder(path):
        raise UserError(f"{path} is a threedistill run folder, not a scene (no transforms.json); pass it to the edit "
                        "command as is (reconstruction is skipped), or pass a nerfstudio/Blender scene folder")
    raise UserError(f"no transforms.json in {path}; pass a nerfstudio or Blender scene folder")


def _downscale(x: Tensor, factor: int) -> Tensor:
    """Area-average [N,C,H,W] to [N,C,H//factor,W//factor] (the whole image keeps its extent, so fov is unchanged)."""
    if factor == 1:
        return x
    return F.interpolate(x, size=(x.shape[-2] // factor, x.shape[-1] // factor), mode="area")


def load_scene(path: str | Path, downscale: int = 1, max_views: Optional[int] = None) -> Scene:
    """Load a nerfstudio or Blender scene (a folder, or its transforms*.json file) as a `Scene`.

    `downscale` (integer >= 1) area-averages images and masks; `max_views` keeps that many
    evenly spaced frames. Masks come from `mask_path` or RGBA alpha (all frames or none).
    Problems are one-line `UserError`s naming the file and field.
    """
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise UserError(f"downscale must be a positive integer, got {downscale!r}; pass 1, 2, 4, ...")
    if max_views is not None and (isinstance(max_views, bool) or not isinstance(max_views, int) or max_views < 1):
        raise UserError(f"max_views must be a positive integer, got {max_views!r}; pass a count or leave it unset")
    meta = _Meta(_find_transforms(Path(path).expanduser()))
    n = len(meta.frames)
    keep = list(range(n)) if max_views is None or max_views >= n else \
        sorted({round(k * (n - 1) / max(max_views - 1, 1)) for k in range(max_views)})
    if "applied_transform" in meta.data:
        meta.matrix(meta.data["applied_transform"], "applied_transform", rows=(3, 4))
    images: list[Tensor] = []
    masks: list[Optional[Tensor]] = []
    c2ws, fovs, times = [], [], []
    for i in keep:
        frame = meta.frame(i)
        c2ws.append(meta.c2w(frame, i))
        rgb, mask = _read_frame(meta, frame, i)
        if images and rgb.shape != images[0].shape:
            meta.fail(f"frames[{i}].file_path", f"image is {rgb.shape[2]}x{rgb.shape[1]} but frame {keep[0]}'s is "
                      f"{images[0].shape[2]}x{images[0].shape[1]}", "resize all images to one size")
        if masks and (mask is None) != (masks[0] is None):
            meta.fail(f"frames[{i}].mask_path", "some frames have a mask (mask_path or alpha) and others do not",
                      "give every frame a mask or none")
        images.append(rgb)
        masks.append(mask)
        fovs.append(_fov_y(meta, frame, i, rgb.shape[2], rgb.shape[1]))
        time = meta.number(frame, i, "time")
        times.append(time)
    H, W = images[0].shape[1:]
    if H // downscale < 1 or W // downscale < 1:
        raise UserError(f"downscale {downscale} is larger than the {W}x{H} images of {meta.path}; pass a smaller factor")
    image_t = _downscale(torch.stack(images), downscale)
    mask_t = None if masks[0] is None else _downscale(torch.stack(masks), downscale)  # type: ignore[arg-type]
    c2w = opencv_to_opengl(torch.stack(c2ws)).float()
    time_t = torch.tensor(times, dtype=torch.float32) if all(t is not None for t in times) else None
    cams = cameras_from_c2w(c2w, torch.tensor(fovs, dtype=torch.float32), image_t.shape[-1], image_t.shape[-2], time_t)
    root = meta.root
    return Scene(images=image_t, cameras=cams, masks=mask_t, name=root.resolve().name, source=root)
