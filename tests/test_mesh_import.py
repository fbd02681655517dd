"""User meshes (`--prior.mesh`, `--representation.path`, `toyworld scene --mesh`) keep their look as the
tools that made them show it: glTF base colour factor and texture, COLOR_0 (also driving a material, as
Blender writes it), several primitives with node transforms, OBJ + MTL + texture, PLY colours. Every
file is written by the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from support import assert_one_line_error, run_cli, two_colour_texture, write_glb
from threedistill.core.mesh_file import load_mesh_file
from threedistill.export.images import read_image

BOX = trimesh.creation.box()
V, F = np.asarray(BOX.vertices), np.asarray(BOX.faces)
QUAD_V = np.array([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
QUAD_F = np.array([[0, 1, 2], [0, 2, 3]])
QUAD_UV = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # glTF's v points down


def _only_colour(mesh, rgb, atol=0.02) -> None:
    np.testing.assert_allclose(mesh.face_colors, np.tile(rgb, (len(mesh.faces), 1)), atol=atol)


@pytest.mark.parametrize("uint16", [False, True])
def test_color0_driving_a_material_blender_style(tmp_path: Path, uint16: bool) -> None:
    """COLOR_0 multiplies the base colour factor (glTF 2.0 spec); refused before with
    "unsupported operand type(s) for *"."""
    green = np.tile([0.0, 1.0, 0.0, 1.0], (len(V), 1))
    path = write_glb(tmp_path / "painted.glb", [dict(vertices=V, faces=F, color0=green, color0_uint16=uint16,
                                                     material=dict(factor=[1, 1, 1, 1]))])
    _only_colour(load_mesh_file(path, "painted"), [0.0, 1.0, 0.0])
    yellow = np.tile([1.0, 1.0, 0.0], (len(V), 1))
    path = write_glb(tmp_path / "tinted.glb", [dict(vertices=V, faces=F, color0=yellow, material=dict(factor=[1, 0, 0, 1]))])
    _only_colour(load_mesh_file(path, "tinted"), [1.0, 0.0, 0.0])


def test_base_colour_factor_is_linear_light(tmp_path: Path) -> None:
    path = write_glb(tmp_path / "grey.glb", [dict(vertices=V, faces=F, material=dict(factor=[0.5, 0.5, 0.5, 1]))])
    # linear 0.5 is shown as sRGB 0.735, as viewers do (trimesh keeps the factor in 8 bits: 128/255 -> 0.737)
    _only_colour(load_mesh_file(path, "grey"), [0.7354] * 3, atol=3e-3)


def test_base_colour_texture_sampled_at_the_surface(tmp_path: Path) -> None:
    """Two triangles, a half red / half blue texture: the large faces are split, so the red half and
    the blue half of the quad keep their colour (trimesh's own conversion averages each face)."""
    path = write_glb(tmp_path / "quad.glb", [dict(vertices=QUAD_V, faces=QUAD_F, uv=QUAD_UV, material=dict(texture=0))],
                     (two_colour_texture(16),))
    mesh = load_mesh_file(path, "quad")
    assert len(mesh.faces) > 32
    x = mesh.vertices[mesh.faces].mean(axis=1)[:, 0]
    left, right = mesh.face_colors[x < -0.2].mean(0), mesh.face_colors[x > 0.2].mean(0)
    np.testing.assert_allclose(left, [1.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(right, [0.0, 0.0, 1.0], atol=0.05)


def test_several_primitives_with_materials_and_node_transforms(tmp_path: Path) -> None:
    path = write_glb(tmp_path / "two.glb", [
        dict(vertices=V, faces=F, material=dict(factor=[1, 0, 0, 1]), translation=[-2, 0, 0]),
        dict(vertices=V, faces=F, material=dict(factor=[0, 1, 0, 1]), translation=[2, 0, 0], scale=[0.5, 0.5, 0.5])])
    mesh = load_mesh_file(path, "two")
    assert len(mesh.faces) == 2 * len(F)
    red, green = mesh.face_colors[:, 0] > 0.9, mesh.face_colors[:, 1] > 0.9
    assert red.sum() == green.sum() == len(F)
    red_v, green_v = mesh.vertices[np.unique(mesh.faces[red])], mesh.vertices[np.unique(mesh.faces[green])]
    assert red_v[:, 0].max() < green_v[:, 0].min(), "red on the left, green on the right"
    np.testing.assert_allclose(np.ptp(green_v, axis=0) / np.ptp(red_v, axis=0), 0.5, atol=1e-5)


def test_obj_with_mtl_and_texture(tmp_path: Path) -> None:
    """Two material groups: one textured (map_Kd), one plain (Kd)."""
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "halves.png", two_colour_texture(16))
    (tmp_path / "model.mtl").write_text("newmtl tex\nKd 1 1 1\nmap_Kd halves.png\n\nnewmtl yellow\nKd 1 1 0\n")
    rows = ["mtllib model.mtl"] + [f"v {x} {y} {z}" for x, y, z in QUAD_V] + [f"v {x} {y} {z - 3}" for x, y, z in QUAD_V]
    rows += [f"vt {u} {1 - v}" for u, v in QUAD_UV]  # OBJ's v points up
    rows += ["usemtl tex", "f 1/1 2/2 3/3", "f 1/1 3/3 4/4", "usemtl yellow", "f 5 6 7", "f 5 7 8"]
    (tmp_path / "model.obj").write_text("\n".join(rows) + "\n")
    mesh = load_mesh_file(tmp_path / "model.obj", "model")
    centres = mesh.vertices[mesh.faces].mean(axis=1)
    upper, lower = centres[:, 2] > centres[:, 2].mean(), centres[:, 2] < centres[:, 2].mean()
    np.testing.assert_allclose(mesh.face_colors[lower].mean(0), [1.0, 1.0, 0.0], atol=0.02)
    textured = mesh.face_colors[upper]
    x = centres[upper, 0]
    np.testing.assert_allclose(textured[x < -0.1].mean(0), [1.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(textured[x > 0.1].mean(0), [0.0, 0.0, 1.0], atol=0.05)


def test_ply_vertex_and_face_colours(tmp_path: Path) -> None:
    vertex = trimesh.Trimesh(V, F, vertex_colors=np.tile([0, 0, 255, 255], (len(V), 1)), process=False)
    vertex.export(tmp_path / "vertex.ply")
    _only_colour(load_mesh_file(tmp_path / "vertex.ply", "v"), [0.0, 0.0, 1.0])
    face = trimesh.Trimesh(V, F, face_colors=np.tile([255, 128, 0, 255], (len(F), 1)), process=False)
    face.export(tmp_path / "face.ply")
    _only_colour(load_mesh_file(tmp_path / "face.ply", "f"), [1.0, 128 / 255, 0.0])


def test_painted_glb_renders_its_colour_through_the_cli_and_starts_a_mesh_run(tmp_path: Path) -> None:
    """End to end: `toyworld scene --mesh` (the prior's renderer) and the mesh representation's start."""
    path = write_glb(tmp_path / "painted.glb", [dict(vertices=V, faces=F, color0=np.tile([0.0, 0.0, 1.0, 1.0], (len(V), 1)),
                                                     color0_uint16=True, material=dict(factor=[1, 1, 1, 1]))])
    proc = run_cli("toyworld", "scene", "my box", str(tmp_path / "scene"), "--mesh", str(path), "--views", "1", "--resolution", "32")
    assert proc.returncode == 0, proc.stderr
    image = read_image(tmp_path / "scene" / "images" / "frame_00000.png")
    box = image.min(0).values < 0.9
    assert box.float().mean() > 0.1
    assert image[2][box].mean() > image[0][box].mean() + 0.3, "the box is blue"
    from threedistill.representations.mesh import Mesh, MeshConfig
    from threedistill.core.cameras import turntable_cameras

    mesh = Mesh(MeshConfig(path=str(path)), torch.Generator().manual_seed(0), backend="torch")
    out = mesh.render(turntable_cameras(2, 32, 32), torch.ones(3))
    inside = out.alpha[:, 0] > 0.99
    assert out.rgb[:, 2][inside].mean() > out.rgb[:, 0][inside].mean() + 0.3


def test_unreadable_mesh_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.glb"
    bad.write_bytes(b"glTF\x02\x00\x00\x00garbage")
    proc = run_cli("toyworld", "scene", "x", str(tmp_path / "s"), "--mesh", str(bad), "--views", "1", "--resolution", "16")
    assert_one_line_error(proc, "could not read mesh", "broken.glb")
