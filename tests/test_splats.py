"""Gaussian splat rendering: tiled torch backend vs the dense reference, projection
geometry, densification gradients, bounded memory, backend selection, gsplat agreement."""

from __future__ import annotations

import math

import pytest
import torch

from threedistill.core.cameras import Cameras, orbit_cameras
from threedistill.core.errors import UserError
from threedistill.render.splats import render_splats, resolve_splat_backend
from threedistill.render.splats_tiles import _phi, bin_gaussians, chunk_backward, chunk_forward, min_sigma_over_rect, tile_chunks
from threedistill.render.splats_torch import (
    EPS2D,
    blend_weights,
    composite,
    gaussian_alpha,
    gaussian_sigma,
    project_gaussians,
    render_splats_dense,
    render_splats_torch,
)

INPUTS = ("means", "quats", "scales", "opacities", "colors")


class ChunkPass(torch.autograd.Function):
    """One chunk through the renderer's forward and backward functions (keep: terms from the
    forward pass, else recomputed), for gradcheck."""

    @staticmethod
    def forward(ctx, params, local, keep):
        ctx.phi = _phi(local)
        acc, trans, ctx.terms = chunk_forward(params, ctx.phi, keep)
        ctx.save_for_backward(params)
        return acc, trans

    @staticmethod
    def backward(ctx, g_acc, g_trans):
        (params,) = ctx.saved_tensors
        return chunk_backward(params, ctx.phi, ctx.terms, g_acc, g_trans), None, None


def make_scene(n: int, seed: int, spread: float = 0.4, max_scale: float = 0.08, per_view_colors: bool = True, views: int = 2):
    """Random Gaussians (some off-screen, some behind or at the camera) as leaf tensors."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen) * spread
    means[: n // 20] *= 4.0  # far out: partly outside the image, behind the cameras
    quats = torch.randn(n, 4, generator=gen)
    scales = torch.rand(n, 3, generator=gen) * max_scale + 0.01
    scales[: n // 20] *= 0.2
    opacities = torch.rand(n, generator=gen) * 0.98 + 0.01
    opacities[: n // 10] = 0.9995  # exercises the 0.999 clamp
    colors = torch.rand(views, n, 3, generator=gen) if per_view_colors else torch.rand(n, 3, generator=gen)
    return {k: v.requires_grad_() for k, v in zip(INPUTS, (means, quats, scales, opacities, colors))}


def cameras(width: int, height: int, views: int = 2, distance: float = 2.0) -> Cameras:
    return orbit_cameras(
        torch.linspace(-10.0, 50.0, views), torch.linspace(-150.0, 120.0, views),
        torch.full((views,), distance), torch.full((views,), 45.0), width, height,
    )


def render_and_grads(fn, scene, cams, background, **kwargs):
    out = fn(*scene.values(), cams, background, **kwargs)
    gen = torch.Generator().manual_seed(0)
    loss = (
        (out.rgb * torch.rand(out.rgb.shape, generator=gen)).sum()
        + (out.alpha * torch.rand(out.alpha.shape, generator=gen)).sum()
        + 0.1 * (out.depth * torch.rand(out.depth.shape, generator=gen)).sum()
    )
    grads = torch.autograd.grad(loss, list(scene.values()))
    return out, dict(zip(INPUTS, grads))


@pytest.mark.parametrize(
    "width,height,tile_size,per_view_colors,seed",
    [(32, 32, 8, True, 0), (48, 40, 16, False, 1), (44, 36, 8, True, 2)],
)
def test_tiled_matches_dense(width, height, tile_size, per_view_colors, seed):
    scene = make_scene(200, seed, per_view_colors=per_view_colors)
    cams = cameras(width, height)
    background = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.5, 0.1]])
    proj = project_gaussians(*[scene[k] for k in ("means", "quats", "scales", "opacities")], cams)
    assert (proj.depths < 0.01).any(), "scene should hold Gaussians behind a camera"
    assert (~proj.visible).any() and proj.visible.any()
    dense, g_dense = render_and_grads(render_splats_dense, scene, cams, background)
    # a small chunk budget forces several chunks
    tiled, g_tiled = render_and_grads(render_splats_torch, scene, cams, background, tile_size=tile_size, chunk_elems=20_000)
    assert tiled.rgb.shape == (2, 3, height, width)
    assert dense.alpha.min() < 0.01 and dense.alpha.max() > 0.99  # empty and opaque pixels
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(tiled, name), getattr(dense, name), atol=1e-5, rtol=0)
    for name in INPUTS:
        scale = g_dense[name].abs().max()
        assert scale > 0, name
        err = (g_tiled[name] - g_dense[name]).abs().max() / scale
        assert err < 1e-4, f"{name}: relative gradient error {err:.2e}"
    torch.testing.assert_close(tiled.extras["radii"], dense.extras["radii"])


def test_composite_follows_gsplat_rules():
    # T after the first two would be 0.01 * 0.005 <= 1e-4: gsplat stops before the second
    alpha = torch.tensor([0.99, 0.995, 0.5])[:, None]
    feats = torch.tensor([[1.0], [2.0], [3.0]])
    acc, trans = composite(alpha, feats)
    torch.testing.assert_close(acc, torch.tensor([[0.99]]))
    torch.testing.assert_close(trans, torch.tensor([0.01]))
    acc, trans = composite(torch.tensor([0.5, 0.5, 0.0])[:, None], feats)
    torch.testing.assert_close(acc, torch.tensor([[0.5 + 0.25 * 2]]))
    torch.testing.assert_close(trans, torch.tensor([0.25]))


def test_tile_backward_passes_gradcheck():
    gen = torch.Generator().manual_seed(7)
    T, K, side = 2, 5, 4
    local = torch.arange(side, dtype=torch.float64) + 0.5 - side / 2
    means = torch.rand(T, K, 2, generator=gen, dtype=torch.float64) * 2 - 1
    conics = torch.tensor([0.4, 0.1, 0.5], dtype=torch.float64).expand(T, K, 3)
    opac = torch.rand(T, K, 1, generator=gen, dtype=torch.float64) * 0.5 + 0.3
    feats = torch.rand(T, K, 4, generator=gen, dtype=torch.float64)
    params = torch.cat([means, conics, opac, feats], dim=-1).requires_grad_()
    for keep in (True, False):  # terms kept from the forward pass, or recomputed
        assert torch.autograd.gradcheck(lambda p: ChunkPass.apply(p, local, keep), (params,))


def test_tile_pass_with_clamped_opacity_early_stop_and_padding():
    """Opaque Gaussians stacked over a tile: the first reaches the 0.999 clamp, every pixel stops
    before the last ones (their slots carry no gradient), and a padding row (opacity 0) closes one
    list. Values and gradients equal the plain formulas; gradcheck passes either way the
    backward pass gets its terms."""
    side, K = 4, 8
    local = torch.arange(side, dtype=torch.float64) + 0.5 - side / 2
    px, py = local.repeat(side), local.repeat_interleave(side)
    gen = torch.Generator().manual_seed(2)
    means = torch.rand(2, K, 2, generator=gen, dtype=torch.float64) * 0.6 - 0.3
    means[:, 0] = 0.5  # on a pixel centre: alpha reaches the clamp there
    conics = torch.tensor([0.05, 0.01, 0.06], dtype=torch.float64).expand(2, K, 3)
    opac = torch.tensor([0.9995, 0.97, 0.96, 0.95, 0.94, 0.93, 0.6, 0.7], dtype=torch.float64).repeat(2, 1)[..., None].clone()
    feats = torch.rand(2, K, 4, generator=gen, dtype=torch.float64)
    opac[1, -1] = 0.0  # a padding slot
    params = torch.cat([means, conics, opac, feats], dim=-1).requires_grad_()
    acc, trans = ChunkPass.apply(params, local, True)
    alpha = gaussian_alpha(gaussian_sigma(px, py, params[..., 0:2], params[..., 2:5]), params[..., 5])
    ref_acc, ref_trans = composite(alpha, params[..., 6:])
    torch.testing.assert_close(acc, ref_acc)
    torch.testing.assert_close(trans, ref_trans)
    weights, _ = blend_weights(alpha)
    assert (alpha[0, 0] >= 0.999).any() and (alpha[0, -2:] > 0).all() and (weights[0, -2:] == 0).all()
    probe = torch.rand(acc.shape, generator=gen, dtype=torch.float64)
    g = torch.autograd.grad((acc * probe).sum() + trans.sum(), params)[0]
    g_ref = torch.autograd.grad((ref_acc * probe).sum() + ref_trans.sum(), params)[0]
    torch.testing.assert_close(g, g_ref)
    assert (g[0, -2:] == 0).all()  # after every pixel stopped
    for keep in (True, False):
        assert torch.autograd.gradcheck(lambda p: ChunkPass.apply(p, local, keep), (params,))


def test_isotropic_gaussian_projects_to_centre_with_analytic_std():
    d, s, opacity, W, H = 3.0, 0.05, 0.8, 32, 24
    cams = cameras(W, H, views=1, distance=d)
    means = torch.zeros(1, 3)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    scales = torch.full((1, 3), s)
    opacities = torch.tensor([opacity])
    var = (cams.focal[0] * s / d) ** 2 + EPS2D  # EWA std^2 plus the eps2d dilation
    proj = project_gaussians(means, quats, scales, opacities, cams)
    torch.testing.assert_close(proj.means2d[0, 0], torch.tensor([W / 2, H / 2]), atol=1e-4, rtol=0)
    torch.testing.assert_close(proj.conics[0, 0], torch.stack([1 / var, torch.tensor(0.0), 1 / var]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(proj.depths[0, 0], torch.tensor(d), atol=1e-5, rtol=0)
    out = render_splats_torch(means, quats, scales, opacities, torch.ones(1, 3), cams, torch.zeros(3))
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    expected = opacity * torch.exp(-0.5 * ((xs - W / 2) ** 2 + (ys - H / 2) ** 2) / var)
    expected = torch.where(expected >= 1 / 255, expected, torch.zeros(()))
    torch.testing.assert_close(out.alpha[0, 0], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.depth[0, 0], expected * d, atol=1e-5, rtol=1e-5)
    radius = math.ceil(math.sqrt(2 * math.log(opacity * 255)) * math.sqrt(var))
    assert out.extras["radii"][0, 0].item() == radius


def test_projection_matches_gsplat_torch_reference():
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci  # CPU-safe

    scene = make_scene(300, 6)
    cams = cameras(48, 40)
    with torch.no_grad():
        ours = project_gaussians(*[scene[k] for k in ("means", "quats", "scales", "opacities")], cams)
        covars, _ = _quat_scale_to_covar_preci(scene["quats"], scene["scales"], compute_preci=False)
        radii, means2d, depths, conics, _ = _fully_fused_projection(scene["means"], covars, cams.viewmats(), cams.intrinsics(), 48, 40)
    vis = ours.visible
    assert ((radii > 0).all(-1) | ~vis).all()  # gsplat's torch reference uses a looser box
    torch.testing.assert_close(ours.means2d[vis], means2d[vis], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours.conics[vis], conics[vis], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(ours.depths, depths)


def test_means2d_grad_for_densification():
    scene = make_scene(150, 3)
    cams = cameras(32, 32)
    out = render_splats(*scene.values(), cams, torch.zeros(3), backend="auto")
    assert out.extras["backend"] == "torch"
    out.rgb.mean().backward()
    grad = out.extras["means2d"].grad
    assert grad is not None and grad.shape == (2, 150, 2)
    visible = out.extras["radii"] > 0
    assert (grad[visible].norm(dim=-1) > 0).float().mean() > 0.9
    assert (grad[~visible] == 0).all()


def test_chunked_render_bounds_memory_and_matches_unchunked():
    gen = torch.Generator().manual_seed(4)
    n, W, tile_size, budget_mb = 20_000, 128, 8, 2.0
    means = torch.randn(n, 3, generator=gen) * 0.4
    quats = torch.randn(n, 4, generator=gen)
    scales = torch.rand(n, 3, generator=gen) * 0.03 + 0.005
    opacities = torch.rand(n, generator=gen) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=gen).requires_grad_()
    cams = cameras(W, W, views=1, distance=2.5)
    bg = torch.ones(3)
    with torch.no_grad():
        proj = project_gaussians(means, quats, scales, opacities, cams)
        counts = bin_gaussians(proj, W, W, tile_size).counts
    max_elems = int(budget_mb * 2**20 / 48)
    chunks = tile_chunks(counts, tile_size**2, max_elems)
    assert len(chunks) > 10
    assert all(len(t) * k * tile_size**2 <= max(max_elems, k * tile_size**2) for t, k in chunks)
    assert sum(len(t) for t, _ in chunks) == int((counts > 0).sum())
    small = render_splats_torch(means, quats, scales, opacities, colors, cams, bg, tile_size=tile_size, memory_budget_mb=budget_mb)
    small.rgb.mean().backward()  # the backward pass runs chunk by chunk too
    assert colors.grad.abs().sum() > 0
    with torch.no_grad():
        big = render_splats_torch(means, quats, scales, opacities, colors, cams, bg, tile_size=tile_size, chunk_elems=1 << 22)
    torch.testing.assert_close(small.rgb, big.rgb, atol=1e-5, rtol=0)
    # Unchunked reference on a few tiles (the busiest and two others): every Gaussian
    # against their pixels with the shared per-pixel math.
    busiest = int(counts.argmax())
    for tile in (busiest, 0, (busiest + 3) % counts.numel()):
        ty, tx = divmod(tile, W // tile_size)
        ys, xs = torch.meshgrid(torch.arange(tile_size) + ty * tile_size + 0.5, torch.arange(tile_size) + tx * tile_size + 0.5, indexing="ij")
        order = torch.argsort(proj.depths[0], stable=True)
        opac = torch.where(proj.visible[0], opacities, torch.zeros(()))[order]
        alpha = gaussian_alpha(gaussian_sigma(xs.flatten(), ys.flatten(), proj.means2d[0, order], proj.conics[0, order]), opac)
        acc, trans = composite(alpha, colors.detach()[order])
        expected = (acc + trans[:, None] * bg).T.reshape(3, tile_size, tile_size)
        got = small.rgb[0, :, ty * tile_size : (ty + 1) * tile_size, tx * tile_size : (tx + 1) * tile_size]
        torch.testing.assert_close(got.detach(), expected, atol=1e-5, rtol=0)
    assert small.alpha.max() > 0.99


def test_empty_and_culled_scenes_render_background():
    cams = cameras(16, 16)
    means = torch.tensor([[0.0, 0.0, 100.0]])  # far outside every view
    out = render_splats_torch(means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.1), torch.tensor([0.5]),
                              torch.ones(1, 3), cams, torch.tensor([0.1, 0.2, 0.3]))
    assert (out.alpha == 0).all() and (out.depth == 0).all()
    torch.testing.assert_close(out.rgb[:, :, 3, 5], torch.tensor([0.1, 0.2, 0.3]).expand(2, 3))
    assert (out.extras["radii"] == 0).all()
    empty = render_splats_torch(torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0),
                                torch.zeros(0, 3), cams, torch.ones(3))
    assert (empty.rgb == 1).all()


def test_backend_selection():
    assert resolve_splat_backend("torch", "cpu") == "torch"
    assert resolve_splat_backend("auto", "cpu") == "torch"
    with pytest.raises(UserError, match="unknown render backend 'vulkan'"):
        resolve_splat_backend("vulkan", "cpu")
    with pytest.raises(UserError, match="cuda"):
        resolve_splat_backend("cuda", "cpu")


@pytest.mark.cuda
def test_torch_backend_matches_gsplat():
    scene = make_scene(2000, 5, spread=0.5, max_scale=0.06, views=3)
    scene = {k: v.detach().cuda().requires_grad_() for k, v in scene.items()}
    cams = cameras(64, 48, views=3).to("cuda")
    background = torch.tensor([0.3, 0.6, 0.9], device="cuda")
    if resolve_splat_backend("auto", "cuda") != "cuda":
        pytest.skip("gsplat's CUDA kernels are unavailable")
    outs, grads = {}, {}
    for backend in ("torch", "cuda"):
        out = render_splats(*scene.values(), cams, background, backend=backend)
        gen = torch.Generator(device="cuda").manual_seed(0)
        loss = (out.rgb * torch.rand(out.rgb.shape, generator=gen, device="cuda")).sum() + out.alpha.sum() + 0.1 * out.depth.sum()
        loss.backward()
        outs[backend] = out
        grads[backend] = {k: v.grad.clone() for k, v in scene.items()}
        for v in scene.values():
            v.grad = None
    t, g = outs["torch"], outs["cuda"]
    assert g.extras["backend"] == "cuda" and g.extras["means2d"].shape == (3, 2000, 2)
    assert (t.rgb - g.rgb).abs().mean() < 1e-3
    assert (t.alpha - g.alpha).abs().mean() < 1e-3
    assert (t.depth - g.depth).abs().mean() < 5e-3
    assert ((t.extras["radii"] > 0) == (g.extras["radii"] > 0)).float().mean() > 0.99
    for name in INPUTS:
        a, b = grads["torch"][name].flatten(), grads["cuda"][name].flatten()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99, name
    m2d = torch.nn.functional.cosine_similarity(t.extras["means2d"].grad.flatten(), g.extras["means2d"].grad.flatten(), dim=0)
    assert m2d > 0.99


def test_min_sigma_over_rect_is_the_minimum_and_culling_drops_only_invisible_pairs():
    gen = torch.Generator().manual_seed(5)
    n = 400
    L = torch.randn(n, 2, 2, generator=gen, dtype=torch.float64)
    cov = L @ L.transpose(1, 2) + 0.3 * torch.eye(2, dtype=torch.float64)
    inv = torch.linalg.inv(cov)
    conic = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1)
    x0, y0 = torch.randn(n, generator=gen, dtype=torch.float64) * 6, torch.randn(n, generator=gen, dtype=torch.float64) * 6
    w, h = torch.rand(n, generator=gen, dtype=torch.float64) * 7, torch.rand(n, generator=gen, dtype=torch.float64) * 7
    got = min_sigma_over_rect(conic, x0, x0 + w, y0, y0 + h)
    s = torch.linspace(0, 1, 201, dtype=torch.float64)
    dx = x0[:, None, None] + w[:, None, None] * s[None, :, None]
    dy = y0[:, None, None] + h[:, None, None] * s[None, None, :]
    a, b, c = (conic[:, i, None, None] for i in range(3))
    brute = (0.5 * a * dx * dx + b * dx * dy + 0.5 * c * dy * dy).flatten(1).amin(1)
    assert (got <= brute + 1e-9).all()  # never above the minimum (culling stays exact)
    torch.testing.assert_close(got, brute, atol=5e-3 * (1 + brute.abs().max().item()), rtol=1e-2)

    scene = make_scene(300, 8)
    cams = cameras(40, 32)
    with torch.no_grad():
        proj = project_gaussians(*[scene[k] for k in ("means", "quats", "scales", "opacities")], cams)
        culled = bin_gaussians(proj, 40, 32, 8, scene["opacities"])
        boxes = bin_gaussians(proj, 40, 32, 8)
    assert 0 < culled.gauss_ids.numel() < boxes.gauss_ids.numel()
    N = proj.depths.shape[1]
    dropped = 0
    for tile in range(boxes.counts.numel()):
        keep = set(culled.gauss_ids[culled.offsets[tile]: culled.offsets[tile] + culled.counts[tile]].tolist())
        ids = boxes.gauss_ids[boxes.offsets[tile]: boxes.offsets[tile] + boxes.counts[tile]].tolist()
        assert [i for i in ids if i in keep] == culled.gauss_ids[culled.offsets[tile]: culled.offsets[tile] + culled.counts[tile]].tolist()
        view, t = divmod(tile, culled.tiles_x * culled.tiles_y)
        ty, tx = divmod(t, culled.tiles_x)
        ys, xs = torch.meshgrid(torch.arange(8) + ty * 8 + 0.5, torch.arange(8) + tx * 8 + 0.5, indexing="ij")
        for i in ids:
            if i in keep:
                continue
            dropped += 1
            sigma = gaussian_sigma(xs.flatten(), ys.flatten(), proj.means2d.reshape(-1, 2)[i][None], proj.conics.reshape(-1, 3)[i][None])
            assert (gaussian_alpha(sigma, scene["opacities"].detach()[i % N][None]) == 0).all()
    assert dropped > 0
