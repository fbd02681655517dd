"""4D deformation (HexPlane field wrapping Gaussians / NeRF): zero init reproduces the static
renders exactly, perturbed fields move things over time, regularisers, gradients, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from threedistill.representations.base import regularisation
from threedistill.core.cameras import orbit_cameras
from threedistill.core.errors import UserError
from threedistill.representations.deformation import Deformed, DeformationConfig
from threedistill.representations.gaussians import Gaussians, GaussiansConfig
from threedistill.representations.nerf import NeRF, NeRFConfig

NERF_SMALL = dict(levels=4, log2_table_size=12, base_resolution=8, max_resolution=32, hidden_dim=16,
                  samples_per_ray=24, occ_resolution=16)
DEF_SMALL = dict(resolution=8, time_resolution=5, features=4, multires=(1, 2), hidden_dim=16)
SIZE = 20


def cams(times, size: int = SIZE):
    """Orbit cameras at `times` (None: two cameras without a time)."""
    n = 2 if times is None else len(times)
    c = orbit_cameras(torch.full((n,), 20.0), torch.linspace(-60.0, 90.0, n), torch.full((n,), 2.8), torch.full((n,), 40.0), size, size)
    c.time = None if times is None else torch.tensor(times, dtype=torch.float32)
    return c


def gaussians(**kw) -> Gaussians:
    cfg = GaussiansConfig(**{"num_points": 200, "init_scale": 0.08, "init_opacity_logit": 0.5, "sh_degree": 1, **kw})
    g = Gaussians(cfg, torch.Generator().manual_seed(0), backend="torch")
    with torch.no_grad():
        g.sh_dc.copy_(torch.randn(g.sh_dc.shape, generator=torch.Generator().manual_seed(1)))
    return g


def nerf() -> NeRF:
    return NeRF(NeRFConfig(**NERF_SMALL), torch.Generator().manual_seed(0), backend="torch")


def deformed(base: nn.Module, seed: int = 0, **kw) -> Deformed:
    return Deformed(base, DeformationConfig(**{**DEF_SMALL, **kw}), torch.Generator().manual_seed(seed))


@torch.no_grad()
def perturb(d: Deformed, seed: int = 3, amount: float = 0.3) -> None:
    """Random last head layers and space-time planes (so the offsets depend on time)."""
    gen = torch.Generator().manual_seed(seed)
    for head in d.field.heads.values():
        head[-1].weight.copy_(torch.randn(head[-1].weight.shape, generator=gen) * amount)
    for p in d.field.time_planes():
        p.add_(torch.randn(p.shape, generator=gen) * 3.0)


BG = torch.tensor([1.0, 1.0, 1.0])


@pytest.mark.parametrize("kind", ["gaussians", "nerf"])
def test_zero_initialised_deformation_renders_the_static_asset_exactly(kind: str) -> None:
    base = gaussians() if kind == "gaussians" else nerf()
    d = deformed(base)
    with torch.no_grad():  # NeRF: unjittered samples, so the two renders see the same points
        ref = base.render(cams([0.0, 0.0]), BG)
        assert ref.alpha.max() > 0.5
        for times in ([0.0, 0.0], [0.37, 0.37], [1.0, 1.0], None, [1.0, 0.37]):
            out = d.render(cams(times), BG)
            for name in ("rgb", "alpha", "depth"):
                assert torch.equal(getattr(out, name), getattr(ref, name)), (times, name)
    if kind == "nerf":  # with gradients (jittered samples): the same draws give the same render
        base.generator.manual_seed(5)
        ref = base.render(cams([0.5, 0.5]), BG)
        base.generator.manual_seed(5)
        assert torch.equal(d.render(cams([0.5, 0.5]), BG).rgb, ref.rgb)


@pytest.mark.parametrize("kind", ["gaussians", "nerf"])
def test_a_perturbed_field_changes_the_render_over_time(kind: str) -> None:
    base = gaussians() if kind == "gaussians" else nerf()
    d = deformed(base)
    perturb(d)
    with torch.no_grad():
        static = base.render(cams([0.0]), BG).rgb
        r0, r1 = d.render(cams([0.0]), BG).rgb, d.render(cams([1.0]), BG).rgb
    assert (r0 - r1).abs().max() > 0.05 and (r0 - static).abs().max() > 0.05


@pytest.mark.parametrize("kind", ["gaussians", "nerf"])
def test_mixed_time_batches_keep_camera_order(kind: str) -> None:
    d = deformed(gaussians() if kind == "gaussians" else nerf())
    perturb(d)
    times = [1.0, 0.0, 0.5, 0.0]
    batch = cams(times)
    bg = torch.rand(4, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = d.render(batch, bg)
        for i in range(4):
            one = d.render(batch[i], bg[i : i + 1])
            torch.testing.assert_close(out.rgb[i : i + 1], one.rgb, atol=1e-5, rtol=0)
            torch.testing.assert_close(out.depth[i : i + 1], one.depth, atol=1e-5, rtol=0)
    # Gaussians on the torch backend: every time in one pass; a NeRF: one render per time
    assert len(out.extras["time_groups"]) == (1 if kind == "gaussians" else 3)
    with torch.no_grad():  # the rows really depend on the time
        other = d.render(cams([0.0, 0.0, 0.5, 0.0]), bg)
    assert not torch.equal(out.rgb[0], other.rgb[0]) and torch.equal(out.rgb[1:], other.rgb[1:])


def test_one_pass_over_all_times_equals_one_render_per_time_with_gradients() -> None:
    """The batched 4D render (per-view Gaussian parameters, one field pass) against the per-time
    renders it replaced: same images and the same gradients on the field and the Gaussians."""
    d = deformed(gaussians())
    perturb(d)
    times = [1.0, 0.0, 0.5, 0.0, 0.25]
    batch = cams(times)
    probe = torch.rand(len(times), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    params = [*d.field.parameters(), d.base.means, d.base.log_scales, d.base.quats, d.base.opacity_logits, d.base.sh_dc]
    out = d.render(batch, BG)
    g_one = torch.autograd.grad((out.rgb * probe).sum() + out.alpha.sum(), params, allow_unused=True)
    per_time = []
    for t in sorted(set(times)):
        idx = torch.tensor([i for i, s in enumerate(times) if s == t])
        o = d.base.render_with(batch[idx], BG, **d.gaussian_params_at(t))
        per_time.append((o.rgb * probe[idx]).sum() + o.alpha.sum())
        torch.testing.assert_close(out.rgb[idx], o.rgb, atol=1e-6, rtol=0)
    g_many = torch.autograd.grad(sum(per_time), params, allow_unused=True)
    for a, b in zip(g_one, g_many):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, atol=1e-5 * (1 + float(b.abs().max())), rtol=1e-4)


def test_regularisers_are_zero_or_constant_at_init_and_respond_to_planes_and_weights() -> None:
    d = deformed(gaussians(), lambda_plane_tv=0.0, lambda_time_smooth=0.0, lambda_time_l1=0.0)
    init = d.field.losses()
    assert init["time_smooth"] == 0 and init["time_l1"] == 0 and init["plane_tv"] > 0  # random spatial planes
    assert torch.equal(deformed(gaussians()).field.losses()["plane_tv"], init["plane_tv"])  # same seed, same value
    out = d.render(cams([0.3]), BG)
    assert regularisation(d, out, 0) == 0
    perturb(d)
    after = {k: v.detach() for k, v in d.field.losses().items()}
    assert after["time_smooth"] > 0 and after["time_l1"] > 0 and after["plane_tv"] > init["plane_tv"]
    values = {}
    for name in ("plane_tv", "time_smooth", "time_l1"):
        setattr(d.deformation, f"lambda_{name}", 2.0)
        values[name] = float(regularisation(d, out, 0).detach())
        torch.testing.assert_close(values[name], 2.0 * float(after[name]))
        setattr(d.deformation, f"lambda_{name}", [(0, 0.0), (0.5, 2.0)])  # schedules: half-way through the run
        torch.testing.assert_close(float(regularisation(d, out, 0, 10).detach()), 0.0)
        torch.testing.assert_close(float(regularisation(d, out, 5, 10).detach()), values[name])
        setattr(d.deformation, f"lambda_{name}", 0.0)


def test_regularisation_includes_the_base_nerf_terms() -> None:
    base = nerf()
    base.config.lambda_sparsity = 1.0
    d = deformed(base, lambda_plane_tv=0.0, lambda_time_smooth=0.0, lambda_time_l1=0.0)
    out = d.render(cams([0.2, 0.8]), BG)
    torch.testing.assert_close(regularisation(d, out, 0), regularisation(base, out, 0))
    assert regularisation(d, out, 0) > 0


@pytest.mark.parametrize("kind", ["gaussians", "nerf"])
def test_gradients_reach_the_planes_and_heads_through_a_render_loss(kind: str) -> None:
    d = deformed(gaussians() if kind == "gaussians" else nerf())
    d.render(cams([0.25, 0.75]), BG).rgb.square().sum().backward()
    for head in d.field.heads.values():  # at zero init only the last layers have a gradient
        assert head[-1].weight.grad.abs().sum() > 0
    d.zero_grad()
    perturb(d, amount=0.05)
    d.render(cams([0.25, 0.75]), BG).rgb.square().sum().backward()
    for p in d.field.spatial_planes() + d.field.time_planes():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.base.parameters() if p.dim() > 1 and p.shape[0] > 1)


def test_param_groups_and_a_frozen_base() -> None:
    d = deformed(gaussians())
    names = [g["name"] for g in d.param_groups()]
    assert names[:6] == [g["name"] for g in d.base.param_groups()] and names[-2:] == ["deformation_planes", "deformation_network"]
    n_field = sum(p.numel() for g in d.param_groups()[-2:] for p in g["params"])
    assert n_field == sum(p.numel() for p in d.field.parameters())
    frozen = deformed(gaussians(), train_base=False)
    assert [g["name"] for g in frozen.param_groups()] == ["deformation_planes", "deformation_network"]
    assert not any(p.requires_grad for p in frozen.base.parameters())


def test_densification_statistics_gather_every_time_group() -> None:
    base = gaussians(densify_from=0, densify_until=100, densify_every=50)
    d = deformed(base)
    perturb(d, amount=0.05)
    opt = torch.optim.Adam(d.param_groups())
    out = d.render(cams([0.0, 0.5, 1.0]), BG)
    out.rgb.square().sum().backward()
    opt.step()
    d.after_step(1, out, opt)
    visible = sum((o.extras["radii"] > 0).float().sum(0) for _, o in out.extras["time_groups"])
    assert torch.equal(base.grad_count, visible) and base.grad_accum.sum() > 0
    n = base.num_points
    base.config.densify_grad_threshold = 0.0  # everything grows at the next densify step
    out = d.render(cams([0.0, 1.0]), BG)
    out.rgb.sum().backward()
    d.after_step(50, out, opt)
    assert base.num_points > n and d.num_points == base.num_points
    assert all(opt.state[p]["exp_avg"].shape == p.shape for p in base.parameters() if p in opt.state)


def test_state_dict_round_trip_and_errors() -> None:
    d = deformed(gaussians())
    perturb(d)
    state = d.state_dict()
    assert any(k.startswith("base.") for k in state) and any(k.startswith("deformation.") for k in state)
    other = deformed(gaussians(num_points=50), seed=7)
    other.load_state_dict(state)
    with torch.no_grad():
        a, b = d.render(cams([0.6]), BG), other.render(cams([0.6]), BG)
    assert torch.equal(a.rgb, b.rgb) and other.num_points == 200
    with pytest.raises(UserError, match="deformation"):
        other.load_state_dict(d.base.state_dict())
    with pytest.raises(UserError, match="gaussians or nerf"):
        deformed(nn.Linear(2, 2))
    with pytest.raises(UserError, match="lambda-time-l1"):
        deformed(gaussians(), lambda_time_l1=[(0, 1, 2)])


def test_per_frame_exports() -> None:
    d = deformed(gaussians())
    frame = d.as_splats(0.4)
    static = d.static().as_splats()
    for k in static:
        assert torch.equal(frame[k], static[k]), k
    perturb(d)
    moved = d.as_splats(0.4)
    assert not torch.equal(moved["means"], static["means"])
    torch.testing.assert_close(moved["quats"].norm(dim=-1), torch.ones(200))

    dn = deformed(nerf())
    pts = torch.rand(100, 3) * 2 - 1
    assert dn.as_splats(0.5) is None
    field = dn.as_field(0.5)
    assert torch.equal(field.density(pts), dn.base.density(pts)) and torch.equal(field.albedo(pts), dn.base.albedo(pts))
    assert field.render_alpha(cams(None)).shape == (2, 1, SIZE, SIZE)
    perturb(dn)
    assert not torch.equal(dn.as_field(0.5).density(pts), dn.base.density(pts))
    dn.update_occupancy(0)  # the grid follows the union over time of the warped density
    assert dn.base.occupancy.binary.any()
