"""The toyworld catalogue, user meshes and the nerfstudio scene round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from threedistill.core.mesh_file import OBJECT_RADIUS as RADIUS
from threedistill.core.cameras import heldout_cameras
from threedistill.core.errors import UserError
from threedistill.scene.loading import load_scene
from threedistill.export.scene import write_nerfstudio_scene
from threedistill.priors.toyworld.catalogue import (
    COLOURS,
    catalogue_names,
    catalogue_prompts,
    describe_catalogue,
    resolve_prompt,
)
from threedistill.core.mesh_file import load_mesh_file as load_user_mesh
from threedistill.render.mesh_torch import render_mesh


@pytest.mark.parametrize("prompt", catalogue_prompts())
def test_every_catalogue_prompt_resolves_to_meshes_in_the_unit_sphere(prompt):
    for mesh in resolve_prompt(prompt):
        assert len(mesh.faces) > 0 and mesh.faces.max() < len(mesh.vertices)
        assert np.linalg.norm(mesh.vertices, axis=1).max() == pytest.approx(RADIUS, abs=1e-5)
        assert mesh.face_colors.shape == mesh.faces.shape and 0 <= mesh.face_colors.min() <= mesh.face_colors.max() <= 1
        v, f, c = mesh.to_torch("cpu")
        assert v.dtype == torch.float32 and f.dtype == torch.long and c.shape == f.shape


def test_catalogue_size_and_descriptions():
    names = catalogue_names()
    rows = describe_catalogue()
    assert len(names) >= 14 and len(rows) == len(names) == len(catalogue_prompts())
    assert sum("asymmetric" in text for _, text in rows) >= 3
    assert any("multi-modal" in text for _, text in rows)


def test_colour_word_recolours_the_main_part_only():
    mesh = resolve_prompt("  A   Blue  CUBE ")[0]
    assert np.allclose(mesh.face_colors[mesh.main_faces], COLOURS["blue"])
    mug, blue_mug = resolve_prompt("a mug")[0], resolve_prompt("the red mug")[0]
    assert np.allclose(blue_mug.face_colors[blue_mug.main_faces], COLOURS["red"])
    assert np.array_equal(mug.face_colors[~mug.main_faces], blue_mug.face_colors[~blue_mug.main_faces])
    assert resolve_prompt("a gray box")[0].name == "grey cube"


def test_ball_is_multimodal_unless_coloured():
    modes = resolve_prompt("a ball")
    assert len(modes) == 4
    assert len({tuple(m.face_colors[0]) for m in modes}) == 4
    assert len(resolve_prompt("a green ball")) == 1


def test_unknown_prompt_names_the_catalogue():
    with pytest.raises(UserError) as info:
        resolve_prompt("a corgi")
    message = str(info.value)
    assert "'a corgi'" in message and "mug" in message and "red" in message and "\n" not in message


@pytest.mark.parametrize("suffix", [".ply", ".glb"])
def test_load_user_mesh(tmp_path, suffix):
    box = trimesh.creation.box((2.0, 1.0, 0.5))
    box.visual.face_colors = [200, 30, 30, 255]
    path = tmp_path / f"box{suffix}"
    if suffix == ".glb":  # glTF is y-up: store the z-up box as (x, z, -y), as Blender and our exporter do
        box.vertices = box.vertices[:, [0, 2, 1]] * np.array([1.0, 1.0, -1.0])
    box.export(path)
    mesh = load_user_mesh(path, "my box")
    assert mesh.name == "my box" and len(mesh.faces) == 12
    extents = np.ptp(mesh.vertices, axis=0)
    assert extents[0] > extents[1] > extents[2], "back in z-up: 2 x 1 x 0.5"
    assert np.linalg.norm(mesh.vertices, axis=1).max() == pytest.approx(RADIUS, abs=1e-5)
    assert np.allclose(mesh.face_colors, np.array([200, 30, 30]) / 255.0, atol=0.02)


def test_load_user_mesh_fails_cleanly(tmp_path, capsys):
    with pytest.raises(UserError, match="mesh file not found"):
        load_user_mesh(tmp_path / "nope.glb", "x")
    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"\x00\x01 this is not a mesh" * 10)
    with pytest.raises(UserError, match="could not read mesh"):
        load_user_mesh(garbage, "x")
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err


def test_scene_round_trip(tmp_path):
    cams = heldout_cameras(3, 24, 20)
    v, f, c = resolve_prompt("a duck")[0].to_torch()
    out = render_mesh(v, f, c, cams, supersample=1)
    write_nerfstudio_scene(tmp_path / "scene", out.rgb, cams, alpha=out.alpha)
    assert (tmp_path / "scene" / "masks" / "frame_00002.png").is_file()
    scene = load_scene(tmp_path / "scene")
    images, back = scene.images, scene.cameras
    assert images.shape == out.rgb.shape and (images - out.rgb).abs().max().item() <= 0.5 / 255 + 1e-6
    assert (back.width, back.height) == (24, 20)
    assert torch.allclose(back.c2w, cams.c2w, atol=1e-5)
    for name in ("fov_y", "elevation", "azimuth", "distance"):
        assert torch.allclose(getattr(back, name), getattr(cams, name), atol=1e-4), name


def test_scene_read_errors(tmp_path):
    with pytest.raises(UserError, match="no transforms.json"):
        load_scene(tmp_path)
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(UserError, match="malformed"):
        load_scene(tmp_path)
    (tmp_path / "transforms.json").write_text('{"frames": [{"file_path": "images/a.png"}]}')
    with pytest.raises(UserError, match="missing"):
        load_scene(tmp_path)


def test_procedural_shapes_are_seeded_asymmetric_multicoloured_and_have_thin_parts():
    from threedistill.priors.toyworld.procedural import parse_shape_prompt, procedural_shape

    assert parse_shape_prompt("a red shape 7") == ("red", 7)
    assert parse_shape_prompt("a procedural shape 12") == (None, 12)
    assert parse_shape_prompt("a mug") is None and parse_shape_prompt("a fluffy shape 3") is None
    for k in range(4):
        mesh = resolve_prompt(f"shape {k}")[0]
        again = procedural_shape(k)
        np.testing.assert_array_equal(mesh.vertices, again.vertices)  # the same number, the same shape
        assert np.linalg.norm(mesh.vertices, axis=1).max() == pytest.approx(RADIUS, abs=1e-5)
        assert len(np.unique(mesh.face_colors, axis=0)) >= 2
        # asymmetric: the centre of surface area is off the bounding-box centre, unlike a mirrored object
        tri = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
        assert np.linalg.norm(tri.center_mass - tri.bounds.mean(0)) > 0.02
        # a thin part: some connected component is under 0.1 thick in its narrowest direction
        thin = [c for c in tri.split(only_watertight=False) if np.sort(c.extents)[0] < 0.1 or c.bounding_box_oriented.primitive.extents.min() < 0.1]
        assert thin, k
    red = resolve_prompt("a red shape 1")[0]
    assert np.allclose(red.face_colors[red.main_faces], COLOURS["red"])
    assert not np.array_equal(procedural_shape(0).vertices, procedural_shape(1).vertices)
