"""The mesh representation: rendering, parameters, regularisers, checkpoints, silhouette fitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from threedistill.representations.base import regularisation
from threedistill.core.cameras import orbit_cameras
from threedistill.core.errors import UserError
from threedistill.render.mesh_torch import render_textured_mesh
from threedistill.representations.mesh import Mesh, MeshConfig, icosphere
from threedistill.representations.base import REPRESENTATIONS

BG = torch.tensor([1.0, 1.0, 1.0])


def _cams(n: int = 4, size: int = 32):
    return orbit_cameras(torch.linspace(-10, 40, n), torch.linspace(0, 270, n), torch.full((n,), 2.8), torch.full((n,), 40.0), size, size)


def _mesh(config: MeshConfig | None = None, **kw) -> Mesh:
    return Mesh(config or MeshConfig(**{"init_subdivisions": 2, **kw}), torch.Generator().manual_seed(0), backend="torch")


def _patch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat regular grid of n x n vertices in the plane z = 0, every quad split the same way."""
    xy = torch.stack(torch.meshgrid(torch.linspace(-0.5, 0.5, n), torch.linspace(-0.5, 0.5, n), indexing="ij"), -1).reshape(-1, 2)
    v = torch.cat([xy, torch.zeros(len(xy), 1)], 1)
    i, j = torch.meshgrid(torch.arange(n - 1), torch.arange(n - 1), indexing="ij")
    a = (i * n + j).reshape(-1)
    f = torch.cat([torch.stack([a, a + n, a + n + 1], 1), torch.stack([a, a + n + 1, a + 1], 1)])
    return v, f


def test_registered_and_renders_a_sphere():
    assert REPRESENTATIONS["mesh"].Config is MeshConfig
    mesh = REPRESENTATIONS["mesh"].build(MeshConfig(init_subdivisions=2), torch.Generator().manual_seed(0), backend="torch")
    out = mesh.render(_cams(), BG)
    assert out.rgb.shape == (4, 3, 32, 32) and out.alpha.shape == out.depth.shape == (4, 1, 32, 32)
    assert 0.1 < out.alpha.mean().item() < 0.5 and out.alpha.min() >= 0 and out.alpha.max() <= 1
    empty = (out.alpha == 0).expand_as(out.rgb)
    assert torch.equal(out.rgb[empty], torch.ones_like(out.rgb[empty]))
    inside = out.alpha[:, 0] == 1
    assert (out.depth[:, 0][inside] - 2.8).abs().max() < 0.61  # on the sphere of radius 0.6
    assert mesh.num_points == 162


@pytest.mark.parametrize("optimise, names", [("all", {"offsets", "encoding", "network"}), ("geometry", {"offsets"}), ("texture", {"encoding", "network"})])
def test_param_groups_follow_optimise(optimise, names):
    mesh = _mesh(optimise=optimise)
    groups = mesh.param_groups()
    assert {g["name"] for g in groups} == names
    chosen = {id(p) for g in groups for p in g["params"]}
    assert all(p.requires_grad == (id(p) in chosen) for p in mesh.parameters())


def test_regularisers_vanish_on_a_flat_regular_patch_and_not_on_a_noisy_one():
    v, f = _patch()
    cfg = MeshConfig(lambda_laplacian=1.0, lambda_normal_consistency=1.0)
    mesh = Mesh.from_vertices_faces(v, f, cfg, torch.Generator().manual_seed(0), "torch")
    out = mesh.render(_cams(1), BG)
    assert regularisation(mesh, out, 0).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        mesh.offsets[:, 2] += 0.02 * torch.randn(len(v), generator=torch.Generator().manual_seed(1))
    loss = regularisation(mesh, out, 0)
    assert loss.item() > 1e-5
    loss.backward()
    assert mesh.offsets.grad.abs().sum() > 0


def test_vertex_colours_show_in_the_first_render_and_in_the_export():
    v, f = icosphere(2, 0.6)
    red = torch.tensor([0.9, 0.1, 0.2]).expand(len(v), 3)
    mesh = Mesh.from_vertices_faces(v.numpy(), f.numpy(), MeshConfig(), torch.Generator().manual_seed(0), "torch", vertex_colors=red)
    out = mesh.render(_cams(2), BG)
    inside = (out.alpha[:, 0] == 1)[:, None].expand_as(out.rgb)
    assert torch.allclose(out.rgb.permute(0, 2, 3, 1)[inside[:, 0]], red[0], atol=0.02)
    exported = mesh.as_mesh()
    assert exported.vertices.shape == (len(v), 3) and exported.faces.shape == (len(f), 3)
    assert np.allclose(exported.vertex_colors, red.numpy(), atol=1e-3)
    assert len(exported.to_trimesh().faces) == len(f)


def test_state_dict_round_trip_restores_a_mesh_of_another_size():
    source = _mesh(init_subdivisions=2)
    with torch.no_grad():
        source.offsets.normal_(0, 0.02, generator=torch.Generator().manual_seed(2))
        source.vertex_logits.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
    target = _mesh(init_subdivisions=1)
    target.load_state_dict(source.state_dict())
    assert target.num_points == source.num_points
    a, b = source.render(_cams(), BG), target.render(_cams(), BG)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.alpha, b.alpha)
    with pytest.raises(UserError):
        target.load_state_dict({"offsets": source.offsets})


def test_user_mesh_file_initialises_geometry_and_colours(tmp_path):
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    box.visual.face_colors = np.tile([0, 255, 0, 255], (len(box.faces), 1))
    path = tmp_path / "box.ply"
    box.export(path)
    mesh = _mesh(MeshConfig(path=str(path)))
    assert mesh.num_points == 8 and len(mesh.faces) == 12
    assert np.allclose(mesh.as_mesh().vertex_colors, [0, 1, 0], atol=2e-3)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return ((a & b).sum() / (a | b).sum()).item()


def test_silhouette_fitting_grows_the_sphere_toward_a_larger_target():
    cams = _cams(4, 40)
    big_v, big_f = icosphere(3, 0.75)
    target = render_textured_mesh(big_v, big_f, cams, vertex_colors=torch.ones_like(big_v)).alpha
    mesh = _mesh(MeshConfig(init_subdivisions=3, init_radius=0.6, optimise="geometry", lr_offsets=1e-2, lambda_laplacian=100.0, lambda_normal_consistency=1.0))
    opt = torch.optim.Adam(mesh.param_groups())  # the groups carry lr_offsets
    before = _iou(mesh.render(cams, BG).alpha.detach(), target)
    for step in range(30):
        out = mesh.render(cams, BG)
        loss = (out.alpha - target).square().sum() + regularisation(mesh, out, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _iou(mesh.render(cams, BG).alpha.detach(), target)
    assert before < 0.65 and after > 0.85, (before, after)  # measured: 0.62 -> 0.94
