"""Loading nerfstudio / Blender transforms.json scenes (threedistill.edit.scene)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from threedistill.core.cameras import heldout_cameras, look_at_c2w
from threedistill.scene.loading import is_run_folder, load_scene
from threedistill.core.errors import UserError
from threedistill.export.scene import opencv_to_opengl, write_nerfstudio_scene

W, H = 24, 16


def _gl_pose(position: tuple[float, float, float]) -> list[list[float]]:
    """An OpenGL-axes c2w looking at the origin (built through an independent look-at below)."""
    eye = np.array(position, dtype=np.float64)
    back = eye / np.linalg.norm(eye)  # camera +z points away from the target
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, eye
    return m.tolist()


POSES = [_gl_pose(p) for p in ((3.0, 0.5, 1.0), (-0.5, 2.5, 1.5), (0.3, -2.0, -0.8))]


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, array)


def _pixels(seed: int, channels: int = 3, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def _nerfstudio(root: Path, per_frame: bool, masks: bool = False, **top: Any) -> Path:
    frames = []
    for i, pose in enumerate(POSES):
        _png(root / "images" / f"f{i}.png", _pixels(i))
        frame: dict[str, Any] = {"file_path": f"images/f{i}.png", "transform_matrix": pose}
        if per_frame:
            frame.update(fl_x=20.0 + i, fl_y=20.0 + i, cx=W / 2, cy=H / 2, w=W, h=H)
        if masks:
            _png(root / "masks" / f"f{i}.png", np.full((H, W), 255 * (i % 2), np.uint8))
            frame["mask_path"] = f"masks/f{i}.png"
        frames.append(frame)
    meta = {"camera_model": "OPENCV", **({} if per_frame else dict(fl_x=20.0, fl_y=20.0, cx=W / 2, cy=H / 2, w=W, h=H)), **top}
    (root / "transforms.json").write_text(json.dumps({**meta, "frames": frames}))
    return root


def _blender(root: Path, name: str = "transforms_train.json", angle: float = 0.69) -> Path:
    frames = []
    for i, pose in enumerate(POSES):
        rgba = _pixels(i, 4)
        rgba[..., 3] = 0
        rgba[: H // 2, :, 3] = 255
        _png(root / "train" / f"r_{i}.png", rgba)
        frames.append({"file_path": f"./train/r_{i}", "rotation": 0.0, "transform_matrix": pose})
    (root / name).write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    return root


def _project_opencv(cams, point: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates [B,2] of a world point through Cameras.viewmats()/intrinsics()."""
    cam = cams.viewmats().double() @ torch.cat([point, torch.ones(1, dtype=point.dtype)])
    uvw = cams.intrinsics().double() @ cam[:, :3, None]
    return (uvw[:, :2, 0] / uvw[:, 2:, 0])


def _project_opengl(c2w_gl: list[list[float]], fx: float, fy: float, cx: float, cy: float, point: np.ndarray) -> np.ndarray:
    """Independent OpenGL pinhole: the camera looks down -z with y up; image v grows downward."""
    p = np.linalg.inv(np.array(c2w_gl)) @ np.append(point, 1.0)
    depth = -p[2]
    assert depth > 0
    return np.array([cx + fx * p[0] / depth, cy - fy * p[1] / depth])


@pytest.mark.parametrize("per_frame", [False, True])
def test_nerfstudio_scene(tmp_path: Path, per_frame: bool) -> None:
    scene = load_scene(_nerfstudio(tmp_path, per_frame))
    assert scene.images.shape == (3, 3, H, W) and scene.masks is None and scene.source == tmp_path
    torch.testing.assert_close(scene.images[1], torch.from_numpy(_pixels(1)).permute(2, 0, 1).float() / 255)
    focal = [20.0 + i if per_frame else 20.0 for i in range(3)]
    torch.testing.assert_close(scene.cameras.focal, torch.tensor(focal), rtol=1e-5, atol=1e-5)
    assert (scene.cameras.width, scene.cameras.height) == (W, H)
    point = np.array([0.2, -0.1, 0.3])
    uv = _project_opencv(scene.cameras, torch.from_numpy(point))
    for i, pose in enumerate(POSES):
        expected = _project_opengl(pose, focal[i], focal[i], W / 2, H / 2, point)
        np.testing.assert_allclose(uv[i].numpy(), expected, atol=1e-3)


def test_blender_scene_rgba_no_extension_and_train_file(tmp_path: Path) -> None:
    scene = load_scene(_blender(tmp_path))
    assert scene.images.shape == (3, 3, H, W) and scene.masks is not None and scene.masks.shape == (3, 1, H, W)
    assert scene.masks[:, :, : H // 2].eq(1).all() and scene.masks[:, :, H // 2 :].eq(0).all()
    assert scene.images[:, :, H // 2 :].eq(1).all(), "transparent pixels are composited on white"
    fx = 0.5 * W / math.tan(0.5 * 0.69)
    torch.testing.assert_close(scene.cameras.focal, torch.full((3,), fx), rtol=1e-5, atol=1e-5)
    point = np.array([-0.3, 0.2, 0.1])
    uv = _project_opencv(scene.cameras, torch.from_numpy(point))
    for i, pose in enumerate(POSES):
        np.testing.assert_allclose(uv[i].numpy(), _project_opengl(pose, fx, fx, W / 2, H / 2, point), atol=1e-3)


def test_masks_downscale_and_max_views(tmp_path: Path) -> None:
    root = _nerfstudio(tmp_path, per_frame=False, masks=True)
    full = load_scene(root)
    assert full.masks is not None and full.masks[1].eq(1).all() and full.masks[0].eq(0).all()
    half = load_scene(root, downscale=2, max_views=2)
    assert half.images.shape == (2, 3, H // 2, W // 2) and half.masks is not None and half.masks.shape == (2, 1, H // 2, W // 2)
    torch.testing.assert_close(half.images[1], torch.nn.functional.avg_pool2d(full.images[2:3], 2)[0])
    torch.testing.assert_close(half.cameras.fov_y, full.cameras.fov_y[[0, 2]])
    torch.testing.assert_close(half.cameras.c2w, full.cameras.c2w[[0, 2]])
    assert half.cameras.focal[0].item() == pytest.approx(10.0, rel=1e-5)
    train, held = full.split(holdout_every=2)
    assert len(train) == 1 and len(held) == 2 and held.masks is not None and held.masks.shape[0] == 2


def test_declared_size_differs_from_files_rescales_focal(tmp_path: Path) -> None:
    root = _nerfstudio(tmp_path, per_frame=False, w=2 * W, h=2 * H, cx=W, cy=H, fl_x=40.0, fl_y=40.0)
    assert load_scene(root).cameras.focal[0].item() == pytest.approx(20.0, rel=1e-5)


def test_toyworld_scene_round_trip(tmp_path: Path) -> None:
    cams = heldout_cameras(4, 20, 20)
    g = torch.Generator().manual_seed(0)
    images, alpha = torch.rand(4, 3, 20, 20, generator=g), torch.rand(4, 1, 20, 20, generator=g)
    write_nerfstudio_scene(tmp_path / "scene", images, cams, alpha)
    scene = load_scene(tmp_path / "scene")
    assert scene.masks is not None and (scene.masks - alpha).abs().max() <= 0.5 / 255 + 1e-6
    assert (scene.images - images).abs().max() <= 0.5 / 255 + 1e-6
    torch.testing.assert_close(scene.cameras.c2w, cams.c2w, atol=1e-5, rtol=0)
    for name in ("fov_y", "elevation", "azimuth", "distance"):
        torch.testing.assert_close(getattr(scene.cameras, name), getattr(cams, name), atol=1e-4, rtol=0)


def test_opencv_opengl_is_an_involution() -> None:
    c2w = look_at_c2w(torch.tensor([[1.0, 2.0, 0.5]]))
    torch.testing.assert_close(opencv_to_opengl(opencv_to_opengl(c2w)), c2w)


def test_run_folder(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text("{}")
    assert not is_run_folder(tmp_path)
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    assert is_run_folder(tmp_path)
    with pytest.raises(UserError, match="run folder"):
        load_scene(tmp_path)


def _edit(mutate: Callable[[dict], None]) -> Callable[[Path], Path]:
    def apply(root: Path) -> Path:
        _nerfstudio(root, per_frame=False)
        meta = json.loads((root / "transforms.json").read_text())
        mutate(meta)
        (root / "transforms.json").write_text(json.dumps(meta))
        return root
    return apply


def _write(text: str) -> Callable[[Path], Path]:
    def apply(root: Path) -> Path:
        (root / "transforms.json").write_text(text)
        return root
    return apply


def _other_size(root: Path) -> Path:
    _nerfstudio(root, per_frame=False)
    _png(root / "images" / "f2.png", _pixels(2, h=H + 2))
    return root


def _drop_image(root: Path) -> Path:
    _nerfstudio(root, per_frame=False)
    (root / "images" / "f1.png").unlink()
    return root


BAD = {
    "missing file": (lambda root: root, "transforms.json", "no transforms.json"),
    "bad json": (_write("{not json"), "transforms.json", "not valid JSON"),
    "frames not a list": (_write('{"frames": {"a": 1}}'), "transforms.json", "'frames'"),
    "no transform_matrix": (_edit(lambda m: m["frames"][1].pop("transform_matrix")), "transforms.json", "frames[1].transform_matrix"),
    "3x4 matrix": (_edit(lambda m: m["frames"][0].update(transform_matrix=m["frames"][0]["transform_matrix"][:3])),
                   "transforms.json", "frames[0].transform_matrix"),
    "non-numeric focal": (_edit(lambda m: m.update(fl_x="twenty")), "transforms.json", "'fl_x'"),
    "no focal": (_edit(lambda m: [m.pop(k) for k in ("fl_x", "fl_y")]), "transforms.json", "no focal length"),
    "off-centre principal point": (_edit(lambda m: m.update(cx=W / 2 + 3)), "transforms.json", "principal point"),
    "missing image": (_drop_image, "transforms.json", "frames[1].file_path"),
    "images of different size": (_other_size, "transforms.json", "frames[2].file_path"),
    "no file_path": (_edit(lambda m: m["frames"][0].pop("file_path")), "transforms.json", "frames[0].file_path"),
    "fisheye": (_edit(lambda m: m.update(camera_model="OPENCV_FISHEYE")), "transforms.json", "camera_model"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_scene_files(tmp_path: Path, case: str) -> None:
    make, file_name, needle = BAD[case]
    root = make(tmp_path)
    with pytest.raises(UserError) as info:
        load_scene(root)
    message = str(info.value)
    assert "\n" not in message and file_name in message and needle in message, message


@pytest.mark.parametrize("downscale", [0, -1, 1.5, "2"])
def test_bad_downscale(tmp_path: Path, downscale: Any) -> None:
    with pytest.raises(UserError, match="downscale"):
        load_scene(_nerfstudio(tmp_path, per_frame=False), downscale=downscale)


def test_missing_scene_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_scene(tmp_path / "nowhere")
