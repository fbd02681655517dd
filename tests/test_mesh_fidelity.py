"""The textured OBJ export read back and rendered through its UVs matches the asset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import trimesh

from support import TINY_FLAGS
from support import SMALL_NERF as SMALL
from threedistill.cli import main
from threedistill.core.errors import UserError
from threedistill.eval.mesh_fidelity import obj_psnr, read_textured_obj


def test_nerf_run_obj_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    flags = [f for i, f in enumerate(TINY_FLAGS) if "num-points" not in f and "num-points" not in TINY_FLAGS[i - 1]]
    small = [f"--representation.{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    code = main(["run", *flags, "--representation", "nerf", *small, "--steps", "4", "--out", str(tmp_path), "--prompt", "a red cube",
                 "--log.export-formats", "obj", "--mesh.resolution", "40", "--mesh.texture-size", "256"])
    assert code == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    vertices, faces, uvs, texture = read_textured_obj(run / "export" / "mesh.obj")
    assert len(uvs) == len(vertices) and texture.shape[0] == 3 and texture.shape[1] == 256
    assert 0 <= float(uvs.min()) and float(uvs.max()) <= 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["obj_psnr"] > 18  # even a 4-step blob: the texture carries the field's colours
    assert "textured OBJ renders at" in (run / "log.txt").read_text()


def test_obj_psnr_drops_for_a_wrong_texture(tmp_path: Path) -> None:
    sphere = trimesh.creation.icosphere(3, 0.6)
    uv = (sphere.vertices[:, :2] * 0.5 / 0.6 + 0.5).clip(0, 1)
    image = torch.zeros(8, 8, 3, dtype=torch.uint8)
    image[..., 0] = 255  # red
    from PIL import Image

    sphere.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(image.numpy()))
    path = tmp_path / "red.obj"
    sphere.export(path)
    # y-up on disk as our exports are: the reader turns it back
    vertices, faces, _, texture = read_textured_obj(path)
    assert torch.allclose(texture[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))

    class Solid:
        def __init__(self, colour):
            self.colour = torch.tensor(colour)

        def render(self, cams, background):
            from threedistill.render.mesh_torch import render_textured_mesh

            v = torch.tensor(sphere.vertices, dtype=torch.float32)
            v = torch.stack([v[:, 0], -v[:, 2], v[:, 1]], -1)  # the same z-up sphere
            f = torch.tensor(sphere.faces)
            return render_textured_mesh(v, f, cams, vertex_colors=self.colour.expand(len(v), 3), background=background, supersample=2,
                                        antialias_edges=False)

    white = torch.ones(3)
    assert obj_psnr(path, Solid([1.0, 0.0, 0.0]), white, views=4, resolution=32) > 30
    assert obj_psnr(path, Solid([0.0, 0.0, 1.0]), white, views=4, resolution=32) < 15


def test_untextured_obj_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "plain.obj"
    trimesh.creation.box().export(path)
    with pytest.raises(UserError, match="no UVs or texture|not a textured OBJ"):
        read_textured_obj(path)
