"""Splat .ply round trips, image grids, videos and atomic writes."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from threedistill.core.errors import UserError
from threedistill.export import images as images_mod
from threedistill.export.images import image_grid, save_image, save_image_grid, to_uint8, write_video
from threedistill.export.splat_ply import read_splat_ply, splat_property_names, write_splat_ply


def _splats(n: int, degree: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return {
        "means": torch.randn(n, 3, generator=g),
        "sh": torch.randn(n, k, 3, generator=g),
        "opacity_logits": torch.randn(n, generator=g),
        "log_scales": torch.randn(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
    }


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("degree", [0, 3])
def test_ply_round_trip_exact(tmp_path: Path, degree: int) -> None:
    splats = _splats(17, degree)
    path = write_splat_ply(tmp_path / "splats.ply", **splats)
    back = read_splat_ply(path)
    assert set(back) == set(splats)
    for key, value in splats.items():
        assert back[key].dtype == torch.float32
        assert back[key].shape == value.shape
        assert torch.equal(back[key], value), key
    assert _no_temp_files(tmp_path)


def test_ply_has_exact_3dgs_layout(tmp_path: Path) -> None:
    splats = _splats(5, 3)
    path = write_splat_ply(tmp_path / "s.ply", **{k: v.numpy() for k, v in splats.items()})
    ply = PlyData.read(str(path))
    assert not ply.text and ply.byte_order == "<"
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                + [f"f_rest_{i}" for i in range(45)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == expected == splat_property_names(16)
    assert all(vertex.data.dtype[n] == np.dtype("<f4") for n in names)
    # channel-major f_rest, as in the reference implementation
    sh = splats["sh"].numpy()
    assert np.array_equal(vertex["f_rest_0"], sh[:, 1, 0])
    assert np.array_equal(vertex["f_rest_14"], sh[:, 15, 0])
    assert np.array_equal(vertex["f_rest_15"], sh[:, 1, 1])
    assert np.array_equal(vertex["f_rest_44"], sh[:, 15, 2])
    assert np.array_equal(vertex["nx"], np.zeros(5, np.float32))


def test_read_ply_without_opacity_raises(tmp_path: Path) -> None:
    names = [n for n in splat_property_names(1) if n != "opacity"]
    data = np.zeros(3, dtype=[(n, "<f4") for n in names])
    path = tmp_path / "splats.ply"
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))
    with pytest.raises(UserError, match=r"splats\.ply lacks property 'opacity'"):
        read_splat_ply(path)


def test_read_bad_files_raise_user_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.ply"
    text.write_text("hello, not a ply\n")
    with pytest.raises(UserError, match="notes.ply"):
        read_splat_ply(text)
    with pytest.raises(UserError, match="does not exist"):
        read_splat_ply(tmp_path / "missing.ply")


def test_image_grid_shape_and_uint8() -> None:
    imgs = torch.rand(5, 3, 8, 10)
    grid = image_grid(imgs)  # 5 images -> 3 per row, 2 rows
    assert grid.dtype == np.uint8
    assert grid.shape == (2 * 8 + 3 * 2, 3 * 10 + 4 * 2, 3)
    assert (grid[0] == 255).all()  # white padding
    assert np.array_equal(grid[2:10, 2:12], to_uint8(imgs)[0])
    assert image_grid(imgs, nrow=5, pad=0).shape == (8, 50, 3)
    assert to_uint8(torch.full((1, 3, 2, 2), 2.0)).max() == 255


def test_save_image_and_grid(tmp_path: Path) -> None:
    img = torch.rand(3, 6, 7)
    save_image(tmp_path / "a.png", img)
    assert np.array_equal(iio.imread(tmp_path / "a.png"), to_uint8(img[None])[0])
    save_image_grid(tmp_path / "grid.png", torch.rand(4, 3, 6, 6), nrow=2)
    assert iio.imread(tmp_path / "grid.png").shape == (2 * 6 + 3 * 2, 2 * 6 + 3 * 2, 3)
    with pytest.raises(UserError, match="unsupported extension"):
        save_image(tmp_path / "a.bmpx", img)
    assert _no_temp_files(tmp_path)


def _frames(t: int = 6, h: int = 64, w: int = 64) -> torch.Tensor:
    ramp = torch.linspace(0, 1, t)[:, None, None, None]
    return (ramp * torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1))).clamp(0, 1)


# imageio's ffmpeg reader leaves its pipes to the garbage collector (ResourceWarning).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_write_mp4_readable(tmp_path: Path) -> None:
    path = write_video(tmp_path / "turntable.mp4", _frames(), fps=12)
    frames = _read_mp4(path)
    assert frames.shape == (6, 256, 256, 3)  # 64x64 upscaled to be visible
    odd = write_video(tmp_path / "odd.mp4", (np.random.rand(3, 33, 51, 3) * 255).astype(np.uint8))
    assert _read_mp4(odd).shape == (3, 198, 306, 3)  # x6 nearest upscale, padded to even
    assert _no_temp_files(tmp_path)


def _read_mp4(path: Path) -> np.ndarray:
    import imageio.v2 as iio2

    with iio2.get_reader(path, format="FFMPEG") as reader:
        return np.stack([frame for frame in reader])


def test_write_gif_readable(tmp_path: Path) -> None:
    path = write_video(tmp_path / "spin.gif", _frames(t=5, h=16, w=20), fps=10)
    frames = iio.imread(path, index=None)
    assert frames.shape[0] == 5 and frames.shape[1:3] == (16, 20)
    assert iio.immeta(path).get("loop") == 0
    with pytest.raises(UserError, match=r"unsupported extension '\.avi'"):
        write_video(tmp_path / "spin.avi", _frames())
    assert _no_temp_files(tmp_path)


def test_failed_write_leaves_target_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ply = write_splat_ply(tmp_path / "splats.ply", **_splats(4, 0))
    before = ply.read_bytes()

    def half_write(self: PlyData, stream: BinaryIO) -> None:  # the temporary file is half written, then the writer fails
        stream.write(b"ply\nformat binary_little")
        raise RuntimeError("disk full")

    monkeypatch.setattr(PlyData, "write", half_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_splat_ply(ply, **_splats(4, 1))
    assert ply.read_bytes() == before

    gif = write_video(tmp_path / "v.gif", _frames(t=3, h=8, w=8))
    gif_before = gif.read_bytes()

    def broken_imwrite(uri: object, *args: object, **kwargs: object) -> None:  # GIFs are encoded in memory, then written
        raise OSError("encoder crashed")

    monkeypatch.setattr(images_mod.iio, "imwrite", broken_imwrite)
    with pytest.raises(OSError, match="encoder crashed"):
        write_video(gif, _frames(t=3, h=8, w=8))
    assert gif.read_bytes() == gif_before
    assert _no_temp_files(tmp_path)
