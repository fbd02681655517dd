"""Mesh extraction (marching cubes on a field, the Gaussian opacity field), mesh writers, chamfer."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh

from threedistill.core.cameras import heldout_cameras
from threedistill.core.errors import UserError
from threedistill.eval.chamfer import chamfer_distance, chamfer_to_modes, sample_surface
from threedistill.eval.metrics import mask_iou
from threedistill.export.asset import AssetExports, ExportSettings
from threedistill.export.extract import MeshExportConfig, extract_mesh
from threedistill.representations.base import Representation
from threedistill.representations.gaussian_field import ALPHA_MIN, GaussianField
from threedistill.export.mesh import Z_UP_TO_Y_UP, export_mesh, write_mesh_files
from threedistill.render.mesh_torch import render_mesh
from threedistill.render.splats import render_splats
from threedistill.render.splats_torch import quat_to_rotmat


class SphereField:
    """A solid sphere of radius 0.6 (soft edge) coloured by position."""

    surface_level = 0.5

    def __init__(self, radius: float = 0.6, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
        self.radius, self.centre = radius, torch.tensor(centre)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(((self.radius - (points - self.centre).norm(dim=-1)) * 40.0))

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return (points * 0.5 + 0.5).clamp(0.0, 1.0)

    def render_alpha(self, cams) -> None:
        return None  # it cannot render: its surface_level is used


def _gaussians(means, scales, opacity, quats=None, rgb=None) -> dict[str, torch.Tensor]:
    n = means.shape[0]
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1) if quats is None else quats
    rgb = torch.full((n, 3), 0.5) if rgb is None else rgb
    return {"means": means, "log_scales": scales.log(), "quats": quats, "opacity_logits": torch.logit(opacity),
            "sh": ((rgb - 0.5) / 0.28209479177387814)[:, None]}


def _shell(n: int = 1200, radius: float = 0.5, scale: float = 0.045, opacity: float = 0.6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    means = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * radius
    rgb = torch.where(means[:, 2:] > 0, torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.9]))
    return _gaussians(means, torch.full((n, 3), scale), torch.full((n,), opacity), rgb=rgb)


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name]


def _silhouette_iou(splats: dict[str, torch.Tensor], mesh, px: int = 96) -> float:
    cams = heldout_cameras(6, px, px)
    n = splats["means"].shape[0]
    out = render_splats(splats["means"], splats["quats"], splats["log_scales"].exp(), torch.sigmoid(splats["opacity_logits"]),
                        torch.full((n, 3), 0.5), cams, torch.ones(3), backend="torch")
    v, f = torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces)
    mesh_out = render_mesh(v, f, torch.full((len(f), 3), 0.5), cams, supersample=3)
    return mask_iou(mesh_out.alpha, out.alpha)


# ---------------------------------------------------------------------- extraction
def test_sphere_field_gives_a_closed_outward_sphere() -> None:
    mesh = extract_mesh(SphereField(), MeshExportConfig(resolution=64))
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume > 0  # counter-clockwise seen from outside
    normals_out = (tm.face_normals * tm.triangles_center).sum(-1)
    assert (normals_out > 0).mean() > 0.99
    ico = trimesh.creation.icosphere(subdivisions=5, radius=0.6)
    assert chamfer_distance(mesh, ico) < 0.01
    # colours are the field's albedo at the vertices
    np.testing.assert_allclose(mesh.vertex_colors, mesh.vertices * 0.5 + 0.5, atol=1e-5)


def test_gaussian_field_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    n = 60
    scales = torch.exp(torch.empty(n, 3).uniform_(np.log(0.01), np.log(0.4), generator=g))  # tiny to huge
    quats = torch.randn(n, 4, generator=g)
    splats = _gaussians(torch.randn(n, 3, generator=g) * 0.4, scales, torch.rand(n, generator=g), quats=quats,
                        rgb=torch.rand(n, 3, generator=g))
    field = GaussianField.from_splat_tensors(splats, pair_budget=5000)  # many chunks
    points = torch.randn(3000, 3, generator=g) * 0.8  # some fall outside every Gaussian's box
    rot = quat_to_rotmat(quats)
    cov = rot @ torch.diag_embed(scales**2) @ rot.transpose(-1, -2)
    d = points[:, None] - splats["means"][None]
    q = torch.einsum("pni,nij,pnj->pn", d, torch.linalg.inv(cov), d)
    a = torch.sigmoid(splats["opacity_logits"]) * torch.exp(-0.5 * q)
    a = torch.where(a >= ALPHA_MIN, a, torch.zeros_like(a))
    expected = 1.0 - torch.prod(1.0 - a, dim=1)
    torch.testing.assert_close(field.density(points), expected, atol=1e-5, rtol=1e-4)
    rgb = splats["sh"][:, 0] * 0.28209479177387814 + 0.5
    weighted = (a @ rgb) / a.sum(1, keepdim=True)
    covered = a.sum(1) > 0.05
    torch.testing.assert_close(field.albedo(points)[covered], weighted[covered], atol=1e-4, rtol=1e-3)


def test_gaussian_peak_along_a_ray_is_its_splatted_alpha() -> None:
    """The fact behind the 0.5 rule: max_t a(p + t r) = o exp(-0.5 x^T Sigma_2D^-1 x) (orthographic)."""
    quat = torch.nn.functional.normalize(torch.tensor([[0.9, 0.2, 0.3, 0.1]]), dim=-1)
    scales = torch.tensor([[0.3, 0.15, 0.08]])
    splats = _gaussians(torch.zeros(1, 3), scales, torch.tensor([0.9]), quats=quat)
    field = GaussianField.from_splat_tensors(splats)
    rot = quat_to_rotmat(quat)[0]
    cov2d = (rot @ torch.diag(scales[0] ** 2) @ rot.T)[:2, :2]  # viewing along z
    xy = torch.tensor([[0.05, 0.02], [0.2, -0.1], [-0.1, 0.15]])
    t = torch.linspace(-1.0, 1.0, 20001)
    for p in xy:
        line = torch.cat([p.expand(len(t), 2), t[:, None]], 1)
        peak = field.density(line).max()
        expected = 0.9 * torch.exp(-0.5 * p @ torch.linalg.inv(cov2d) @ p)
        torch.testing.assert_close(peak, expected, atol=1e-4, rtol=1e-3)


def test_calibrated_level_matches_rendered_alpha_half() -> None:
    # one Gaussian: the theory says the alpha = 0.5 contour is the silhouette of F >= 0.5
    quat = torch.nn.functional.normalize(torch.tensor([[0.9, 0.2, 0.3, 0.1]]), dim=-1)
    single = _gaussians(torch.zeros(1, 3), torch.tensor([[0.3, 0.15, 0.08]]), torch.tensor([0.9]), quats=quat)
    mesh = extract_mesh(GaussianField.from_splat_tensors(single), MeshExportConfig(resolution=64))
    assert mesh.level == pytest.approx(0.5, abs=0.05)
    assert _silhouette_iou(single, mesh) > 0.9  # at held-out views (aliasing on a ~300-pixel ellipse)
    # a leaky shell: grazing rays accumulate alpha that F does not, so the level comes out lower
    shell = _shell()
    field = GaussianField.from_splat_tensors(shell)
    mesh = extract_mesh(field, MeshExportConfig(resolution=64))
    assert 0.1 < mesh.level < 0.45 and mesh.silhouette_iou > 0.97
    assert _silhouette_iou(shell, mesh) > 0.97
    fixed = extract_mesh(field, MeshExportConfig(resolution=64, level=0.5))
    assert _silhouette_iou(shell, fixed) < _silhouette_iou(shell, mesh) - 0.03
    # without rendering, the field's own level is used
    assert extract_mesh(field, MeshExportConfig(resolution=32, calibration_views=0)).level == 0.5


def test_shell_interior_is_filled_and_colours_follow_the_gaussians() -> None:
    field = GaussianField.from_splat_tensors(_shell())
    filled = extract_mesh(field, MeshExportConfig(resolution=48))
    hollow = extract_mesh(field, MeshExportConfig(resolution=48, fill_interior=False))
    r_filled = np.linalg.norm(filled.vertices, axis=1)
    assert r_filled.min() > 0.45  # only the outer wall
    assert np.linalg.norm(hollow.vertices, axis=1).min() < 0.45  # the inner wall is there without filling
    top = filled.vertices[:, 2] > 0.2
    bottom = filled.vertices[:, 2] < -0.2
    assert (filled.vertex_colors[top, 0] > 0.7).all() and (filled.vertex_colors[bottom, 2] > 0.7).all()


def test_floaters_are_dropped_and_decimation_reduces_faces() -> None:
    shell = _shell()
    floater = _gaussians(torch.tensor([[0.85, 0.0, 0.0]]), torch.full((1, 3), 0.03), torch.tensor([0.9]))
    both = {k: torch.cat([shell[k], floater[k]]) for k in shell}
    field = GaussianField.from_splat_tensors(both)
    kept = extract_mesh(field, MeshExportConfig(resolution=64))
    assert np.linalg.norm(kept.vertices, axis=1).max() < 0.7
    every = extract_mesh(field, MeshExportConfig(resolution=64, min_component_fraction=0.0))
    assert np.linalg.norm(every.vertices, axis=1).max() > 0.8
    small = extract_mesh(field, MeshExportConfig(resolution=64, decimate_faces=1500))
    assert 1000 <= len(small.faces) <= 1600
    assert chamfer_distance(small, kept, n_points=5000) < 0.01


def test_empty_field_and_a_representation_without_a_surface_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="never reaches"):
        extract_mesh(SphereField(), MeshExportConfig(resolution=16, level=2.0))

    class Bare(Representation):  # neither as_field nor as_mesh
        pass

    with pytest.raises(UserError, match="neither a mesh nor a field"):
        AssetExports(Bare(), tmp_path, ExportSettings(MeshExportConfig()), torch.ones(3)).mesh(0)


# ---------------------------------------------------------------------- writers
def test_export_round_trips_with_colours_and_no_temp_files(tmp_path: Path) -> None:
    field = SphereField(centre=(0.1, 0.2, 0.3))
    config = MeshExportConfig(resolution=48, texture_size=256)
    paths = export_mesh(field, tmp_path, ["glb", "obj", "ply"], config)
    assert {p.name for p in paths} == {"mesh.glb", "mesh.obj", "mesh.mtl", "mesh_albedo.png", "mesh.ply"}
    assert all(p.is_file() for p in paths) and _no_temp_files(tmp_path)

    ply = trimesh.load(tmp_path / "mesh.ply", force="mesh")  # world axes, z up
    assert ply.visual.kind == "vertex"
    np.testing.assert_allclose(ply.vertices.mean(0), [0.1, 0.2, 0.3], atol=0.01)
    rgb = np.asarray(ply.visual.vertex_colors)[:, :3] / 255.0
    assert np.abs(rgb - (ply.vertices * 0.5 + 0.5)).max() < 3 / 255

    glb = trimesh.load(tmp_path / "mesh.glb", force="mesh")  # y up: (x, y, z) -> (x, z, -y)
    assert glb.visual.kind == "vertex"
    np.testing.assert_allclose(glb.vertices.mean(0), [0.1, 0.3, -0.2], atol=0.01)
    world = np.asarray(glb.vertices) @ Z_UP_TO_Y_UP  # back to z up
    rgb = np.asarray(glb.visual.vertex_colors)[:, :3] / 255.0
    assert np.abs(rgb - (world * 0.5 + 0.5)).max() < 3 / 255

    obj = trimesh.load(tmp_path / "mesh.obj", force="mesh")
    assert obj.visual.kind == "texture" and obj.visual.uv is not None
    assert obj.visual.uv.min() >= 0.0 and obj.visual.uv.max() <= 1.0
    np.testing.assert_allclose(obj.bounds.mean(0), [0.1, 0.3, -0.2], atol=0.01)  # seams duplicate vertices
    texture = iio.imread(tmp_path / "mesh_albedo.png")
    assert texture.shape == (256, 256, 3) and texture.std() > 10  # not blank
    # the texture looked up at each vertex's UV is the albedo there (seams included)
    sampled = obj.visual.to_color().vertex_colors[:, :3] / 255.0
    world = np.asarray(obj.vertices) @ Z_UP_TO_Y_UP
    err = np.abs(sampled - (world * 0.5 + 0.5)).max(1)
    assert np.median(err) < 0.01 and err.max() < 0.05


def test_writers_replace_files_atomically_and_reject_unknown_formats(tmp_path: Path) -> None:
    mesh = extract_mesh(SphereField(), MeshExportConfig(resolution=24))
    write_mesh_files(mesh, tmp_path, ["ply"])
    first = (tmp_path / "mesh.ply").read_bytes()
    mesh.vertex_colors[:] = 0.0
    write_mesh_files(mesh, tmp_path, ["ply"])
    assert (tmp_path / "mesh.ply").read_bytes() != first and _no_temp_files(tmp_path)
    with pytest.raises(UserError, match="unknown mesh format 'stl'"):
        export_mesh(SphereField(), tmp_path, ["stl"])
    with pytest.raises(UserError, match="unknown mesh format"):
        write_mesh_files(mesh, tmp_path, ["usd"])


# ---------------------------------------------------------------------- chamfer
def test_chamfer_self_shift_and_closest_mode() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    assert chamfer_distance(sphere, sphere) < 3e-3  # the sampling floor
    for shift in (0.02, 0.05):
        moved = sphere.copy().apply_translation((shift, 0.0, 0.0))
        # spheres offset by d: the distance from a point to the other sphere is |d cos(theta)|, mean d / 2
        assert chamfer_distance(sphere, moved) == pytest.approx(shift / 2, rel=0.15, abs=2e-3)
    cube = trimesh.creation.box((1.0, 1.0, 1.0))
    far = sphere.copy().apply_translation((0.3, 0.0, 0.0))
    best = chamfer_to_modes(sphere, [cube, far, sphere], n_points=4000)  # fewer samples: the floor above is 5e-3 here
    assert best["chamfer_mode"] == 2 and best["chamfer"] < 6e-3
    points = sample_surface(sphere, 1000, seed=3)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 0.5, atol=0.01)
    np.testing.assert_array_equal(points, sample_surface(sphere, 1000, seed=3))
