"""The torch mesh rasteriser: coverage, depth, shading, z-order and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import trimesh

from threedistill.cameras import orbit_cameras
from threedistill.render import mesh_torch
from threedistill.render.mesh_torch import render_mesh

DIST = 3.0


def _front_camera(size: int = 64, azimuth: float = 0.0):
    one = lambda x: torch.tensor([float(x)])  # noqa: E731
    return orbit_cameras(one(0.0), one(azimuth), one(DIST), one(40.0), size, size)


def _cube(requires_grad: bool = False):
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    v = torch.tensor(box.vertices, dtype=torch.float32)
    f = torch.tensor(box.faces, dtype=torch.long)
    c = torch.full((len(f), 3), 0.6, requires_grad=requires_grad)
    return v, f, c


def _quad(x: float, half: float = 0.5):
    """A square in the plane x = const, facing the +x camera."""
    v = torch.tensor([[x, -half, -half], [x, half, -half], [x, half, half], [x, -half, half]])
    return v, torch.tensor([[0, 1, 2], [0, 2, 3]])


def test_cube_silhouette_area_and_depth():
    cams = _front_camera()
    out = render_mesh(*_cube(), cams)
    side = 2.0 * float(cams.focal[0]) * 0.5 / (DIST - 0.5)  # front face, pixels
    assert out.alpha.sum().item() == pytest.approx(side**2, rel=0.03)
    assert out.depth[0, 0, 32, 32].item() == pytest.approx(DIST - 0.5, abs=1e-4)
    assert out.depth[0, 0, 0, 0].item() == 0.0


def test_empty_pixels_are_exactly_background_and_edges_are_fractional():
    out = render_mesh(*_cube(), _front_camera())
    empty = (out.alpha == 0).expand_as(out.rgb)
    assert empty.any() and torch.equal(out.rgb[empty], torch.ones_like(out.rgb[empty]))
    assert ((out.alpha > 0) & (out.alpha < 1)).any()
    black = render_mesh(*_cube(), _front_camera(), background=(0.0, 0.0, 0.0))
    assert black.rgb[empty].abs().max().item() == 0.0


@pytest.mark.parametrize("light", [(1.0, 0.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 1.0), (0.4, 0.3, 0.85)])
def test_face_on_quad_follows_lambert(light):
    v, f = _quad(0.0)
    colour = torch.tensor([0.2, 0.6, 0.9])
    out = render_mesh(v, f, colour.expand(2, 3), _front_camera(), light_dir=light, ambient=0.3)
    n_dot_l = abs(light[0]) / math.sqrt(sum(x * x for x in light))
    expected = colour * (0.3 + 0.7 * n_dot_l)
    assert torch.allclose(out.rgb[0, :, 32, 32], expected, atol=1e-5)


def test_nearer_surface_wins_regardless_of_face_order():
    near_v, quad_f = _quad(0.2)
    far_v, _ = _quad(-0.2, half=0.7)
    red, blue = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    v = torch.cat([far_v, near_v])
    for f, c in (
        (torch.cat([quad_f, quad_f + 4]), torch.stack([blue, blue, red, red])),
        (torch.cat([quad_f + 4, quad_f]), torch.stack([red, red, blue, blue])),
    ):
        front = render_mesh(v, f, c, _front_camera(), light_dir=(1.0, 0.0, 0.0))
        back = render_mesh(v, f, c, _front_camera(azimuth=180.0), light_dir=(1.0, 0.0, 0.0))
        assert torch.allclose(front.rgb[0, :, 32, 32], red)
        assert torch.allclose(back.rgb[0, :, 32, 32], blue)
        assert front.depth[0, 0, 32, 32].item() == pytest.approx(DIST - 0.2, abs=1e-4)


def test_gradients_reach_visible_face_colours_and_vertices():
    v, f, c = _cube(requires_grad=True)
    v.requires_grad_(True)
    out = render_mesh(v, f, c, _front_camera())
    (out.rgb.sum() + out.depth.sum()).backward()
    visible = c.grad.abs().sum(1) > 0
    assert visible.sum().item() == 2  # the two triangles of the +x face
    assert v.grad is not None and v.grad.abs().sum().item() > 0


def test_chunked_rasterisation_matches_single_pass(monkeypatch):
    sphere = trimesh.creation.icosphere(2, 0.8)
    v = torch.tensor(sphere.vertices, dtype=torch.float32)
    f = torch.tensor(sphere.faces, dtype=torch.long)
    c = torch.rand(len(f), 3, generator=torch.Generator().manual_seed(0))
    cams = orbit_cameras(torch.tensor([10.0, 40.0]), torch.tensor([0.0, 130.0]), torch.full((2,), 2.8), torch.full((2,), 40.0), 32, 32)
    whole = render_mesh(v, f, c, cams)
    monkeypatch.setattr(mesh_torch, "PAIRS_PER_CHUNK", 97)
    chunked = render_mesh(v, f, c, cams)
    assert torch.equal(whole.rgb, chunked.rgb) and torch.equal(whole.depth, chunked.depth)
