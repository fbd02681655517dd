"""The torch mesh rasteriser: coverage, depth, shading, z-order and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import trimesh

from threedistill.core.cameras import orbit_cameras
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


# ---------------------------------------------------------------------- textured rendering pieces
from threedistill.render.mesh_torch import edge_neighbours, interpolate, rasterize, render_textured_mesh, sample_texture  # noqa: E402

_TRI = torch.tensor([[0.5, -0.6, -0.5], [-0.5, 0.7, -0.4], [0.0, 0.1, 0.7]], dtype=torch.float64)
_RGB = torch.eye(3, dtype=torch.float64)


def _analytic_triangle(size: int):
    """Coverage, barycentrics and depth of _TRI seen by _front_camera, worked out by hand.

    That camera sits at (DIST, 0, 0) looking down -x: camera x = world y, camera y = -world z,
    camera z = DIST - world x; pixel (u, v) = f * (x, y) / z + size / 2.
    """
    f = 0.5 * size / math.tan(math.radians(20.0))
    X, Y, Z = _TRI.unbind(1)
    z = DIST - X
    u, v = f * Y / z + size / 2, -f * Z / z + size / 2
    py, px = torch.meshgrid(torch.arange(size, dtype=torch.float64) + 0.5, torch.arange(size, dtype=torch.float64) + 0.5, indexing="ij")

    def edge(i: int, j: int):
        return (u[j] - u[i]) * (py - v[i]) - (v[j] - v[i]) * (px - u[i])

    e = torch.stack([edge(1, 2), edge(2, 0), edge(0, 1)])
    inside = (e >= 0).all(0) | (e <= 0).all(0)
    # the ray through each pixel centre, intersected with the triangle's plane
    d = torch.stack([-torch.ones_like(px), (px - size / 2) / f, -(py - size / 2) / f], -1)  # world direction per unit camera z
    o = torch.tensor([DIST, 0.0, 0.0], dtype=torch.float64)
    n = torch.linalg.cross(_TRI[1] - _TRI[0], _TRI[2] - _TRI[0])
    s = ((_TRI[0] - o) @ n) / (d @ n)  # camera z of the hit
    hit = o + s[..., None] * d
    # 3D barycentrics of the hit point
    A = torch.stack([_TRI[0] - _TRI[2], _TRI[1] - _TRI[2]], -1)  # [3,2]
    ab = torch.linalg.lstsq(A.expand(*hit.shape[:2], 3, 2), (hit - _TRI[2])[..., None]).solution[..., 0]
    bary = torch.cat([ab, 1 - ab.sum(-1, keepdim=True)], -1)
    return inside, bary, s


def test_single_triangle_matches_analytic_coverage_barycentrics_and_depth():
    size = 48
    cams = _front_camera(size)
    out = render_textured_mesh(_TRI, torch.tensor([[0, 1, 2]]), cams, vertex_colors=_RGB, background=(0.0, 0.0, 0.0), antialias_edges=False)
    inside, bary, depth = _analytic_triangle(size)
    covered = out.alpha[0, 0] > 0
    assert inside.sum() > 100 and torch.equal(covered, inside)
    assert torch.allclose(out.rgb[0].permute(1, 2, 0)[inside], bary[inside], atol=1e-6)  # perspective-correct colours
    assert torch.allclose(out.depth[0, 0][inside], depth[inside], atol=1e-6)
    assert (out.depth[0, 0][~inside] == 0).all()
    raster = rasterize(_TRI, torch.tensor([[0, 1, 2]]), cams)
    points = interpolate(_TRI, raster, torch.tensor([[0, 1, 2]]))[0].permute(1, 2, 0)  # world surface points
    assert torch.allclose(points[inside], (bary @ _TRI)[inside], atol=1e-6)
    assert torch.equal(raster.face_index[0] == 0, inside)


_QUAD_F = torch.tensor([[0, 1, 2], [0, 2, 3]])
_QUAD_UV = torch.tensor([[0.1, 0.2], [0.9, 0.1], [0.8, 0.9], [0.2, 0.7]], dtype=torch.float64)
_MIX = torch.tensor([[1.0, -2.0, 0.5], [0.3, 1.5, -1.0], [2.0, 0.2, 1.0]], dtype=torch.float64)


def _fd_loss(v: torch.Tensor, colours: torch.Tensor, source: str, cams) -> torch.Tensor:
    kwargs = {
        "vertex": lambda: {"vertex_colors": colours},
        "texture": lambda: {"uvs": _QUAD_UV, "face_uvs": _QUAD_F, "texture": colours},
        "field": lambda: {"colour_fn": lambda p: torch.sigmoid(2 * p @ colours)},
    }[source]()
    out = render_textured_mesh(v, _QUAD_F, cams, background=(0.3, 0.5, 0.7), **kwargs)
    g = torch.Generator().manual_seed(1)
    weights = [torch.rand(t.shape, generator=g, dtype=torch.float64) for t in (out.rgb, out.alpha, out.depth)]
    return sum((w * t).sum() for w, t in zip(weights, (out.rgb, out.alpha, out.depth)))


@pytest.mark.parametrize("source", ["vertex", "texture", "field"])
def test_finite_difference_gradients_to_vertices_and_colours(source):
    """Central differences in float64; coverage is piecewise constant, and no pixel centre lies within eps of an edge."""
    cams = _front_camera(16)
    v = torch.tensor([[0.2, -0.55, -0.5], [-0.1, 0.6, -0.45], [0.1, 0.5, 0.55], [0.3, -0.5, 0.4]], dtype=torch.float64, requires_grad=True)
    shape = {"vertex": (4, 3), "texture": (3, 4, 5), "field": (3, 3)}[source]
    colours = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    colours = (_MIX if source == "field" else colours).clone().requires_grad_(True)
    _fd_loss(v, colours, source, cams).backward()
    eps = 1e-6
    for param in (v, colours):
        numeric = torch.zeros_like(param)
        for i in range(param.numel()):
            with torch.no_grad():
                param.view(-1)[i] += eps
                hi = _fd_loss(v, colours, source, cams)
                param.view(-1)[i] -= 2 * eps
                lo = _fd_loss(v, colours, source, cams)
                param.view(-1)[i] += eps
            numeric.view(-1)[i] = (hi - lo) / (2 * eps)
        assert param.grad.abs().max() > 0
        assert (param.grad - numeric).abs().max() <= 1e-4 * numeric.abs().max()


def test_silhouette_gradient_grows_a_triangle_toward_a_larger_target():
    cams = _front_camera(32)
    f = torch.tensor([[0, 1, 2]])
    v = (_TRI * 0.6).float().requires_grad_(True)
    render_textured_mesh(v, f, cams, vertex_colors=_RGB.float()).alpha.sum().backward()
    centre = v.detach().mean(0)
    outward = (v.detach() - centre)[:, 1:] * v.grad[:, 1:]  # image-plane (y, z) components
    assert (outward.sum(1) > 0).all()  # more coverage: every corner moves away from the centre


def test_uv_texture_lookup_and_edge_neighbours():
    tex = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # [C=1, 2, 2]: row 0 is the top (v = 1)
    uv = torch.tensor([[0.25, 0.75], [0.75, 0.75], [0.25, 0.25], [0.75, 0.25]]).t().view(1, 2, 2, 2)
    assert torch.allclose(sample_texture(tex, uv).flatten(), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    nb = edge_neighbours(torch.tensor([[0, 1, 2], [0, 2, 3]]))
    assert nb.tolist() == [[-1, 1, -1], [-1, -1, 0]]


def test_uv_textured_quad_shows_its_texture():
    v, f = _quad(0.0)
    uvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    tex = torch.zeros(3, 2, 2)
    tex[0, 0, :] = 1.0  # top row red, bottom row black
    out = render_textured_mesh(v, f, _front_camera(), uvs=uvs, face_uvs=f, texture=tex)
    # quad corner (y=-0.5, z=+0.5) has uv (0, 1): top-left of the image is red
    assert out.rgb[0, 0, 22, 32].item() > 0.9 and out.rgb[0, 0, 42, 32].item() < 0.1


@pytest.mark.cuda
def test_nvdiffrast_agrees_with_torch_backend():
    pytest.importorskip("nvdiffrast.torch")
    from threedistill.render.mesh_nvdiffrast import render_textured_mesh_nvdiffrast

    sphere = trimesh.creation.icosphere(3, 0.7)
    v = torch.tensor(sphere.vertices, dtype=torch.float32, device="cuda")
    f = torch.tensor(sphere.faces, dtype=torch.long, device="cuda")
    colour = lambda p: torch.sigmoid(3 * p)  # noqa: E731
    cams = orbit_cameras(torch.tensor([10.0, 40.0]), torch.tensor([0.0, 130.0]), torch.full((2,), 2.8), torch.full((2,), 40.0), 64, 64).to("cuda")
    ref = render_textured_mesh(v, f, cams, colour_fn=colour, supersample=2)
    got = render_textured_mesh_nvdiffrast(v, f, cams, colour_fn=colour, supersample=2)
    assert (got.alpha - ref.alpha).abs().mean() < 2e-3
    inside = (ref.alpha > 0.999) & (got.alpha > 0.999)
    assert (got.rgb - ref.rgb).abs().amax(1, keepdim=True)[inside].max() < 2e-3
    assert (got.depth - ref.depth)[inside].abs().max() < 1e-3


def test_nvdiffrast_clip_space_lands_on_the_torch_projection_and_backend_choice():
    from threedistill.core.errors import UserError
    from threedistill.render.mesh_nvdiffrast import clip_space, resolve_mesh_backend

    v = torch.tensor([[0.3, -0.2, 0.5], [-0.4, 0.6, -0.1], [0.1, 0.1, 0.1]])
    cams = orbit_cameras(torch.tensor([20.0, -30.0]), torch.tensor([40.0, 200.0]), torch.full((2,), 2.5), torch.full((2,), 45.0), 40, 24)
    uv, z = mesh_torch._project(v, torch.tensor([[0, 1, 2]]), cams)
    clip = clip_space(v, cams, 48, 24)  # width padded to a multiple of 8: NDC over the padded width
    ndc = clip[..., :2] / clip[..., 3:]
    pixels = (ndc + 1) * 0.5 * torch.tensor([48.0, 24.0])
    assert torch.allclose(pixels, uv[:, 0], atol=1e-4) and torch.allclose(clip[..., 3], z[:, 0])
    assert ((clip[..., 2] / clip[..., 3]).abs() < 1).all()
    assert resolve_mesh_backend("auto", "cpu") == "torch"
    with pytest.raises(UserError):
        resolve_mesh_backend("cuda", "cpu")
