import json
import math
from pathlib import Path

import pytest
import torch

from support import SMALL_NERF as SMALL
from support import TINY_FLAGS, trainer_for
from threedistill.representations.base import regularisation
from threedistill.core.cameras import Cameras, look_at_c2w, orbit_cameras
from threedistill.config import parse_run_args
from threedistill.core.errors import UserError
from threedistill.core.types import RenderOutput
from threedistill.render.volume_nerfacc import resolve_volume_backend
from threedistill.render.volume_torch import OccupancyGrid, camera_rays, render_volume_torch
from threedistill.representations.nerf import NeRF, NeRFConfig
from threedistill.representations.base import REPRESENTATIONS
from threedistill.engine.run import Run



class SlabField:
    """Density sigma where lo <= x < hi (world x), zero elsewhere; constant colour."""

    def __init__(self, sigma: float, lo: float, hi: float, color: tuple[float, float, float]) -> None:
        self.sigma, self.lo, self.hi, self.color = sigma, lo, hi, torch.tensor(color)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        x = points[:, 0]
        return torch.where((x >= self.lo) & (x < self.hi), torch.full_like(x, self.sigma), torch.zeros_like(x))

    def query(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.density(points), self.color.expand(points.shape[0], 3)


class BallField(SlabField):
    """Density sigma inside the ball |p| < radius."""

    def __init__(self, sigma: float, radius: float) -> None:
        super().__init__(sigma, 0.0, 0.0, (0.2, 0.5, 0.8))
        self.radius = radius

    def density(self, points: torch.Tensor) -> torch.Tensor:
        inside = points.norm(dim=-1) < self.radius
        return torch.where(inside, torch.full_like(points[:, 0], self.sigma), torch.zeros_like(points[:, 0]))


def _camera_looking_along_x(x: float, size: int, fov_deg: float) -> Cameras:
    pos = torch.tensor([[x, 0.0, 0.0]])
    return Cameras(c2w=look_at_c2w(pos, pos + torch.tensor([[1.0, 0.0, 0.0]])), fov_y=torch.tensor([math.radians(fov_deg)]),
                   width=size, height=size, elevation=torch.zeros(1), azimuth=torch.zeros(1), distance=torch.ones(1))


def test_constant_density_slab_matches_the_closed_form() -> None:
    # Camera at x = -1.5 looking along +x; slab x in [-0.25, 0.25]: camera z in [1.25, 1.75].
    sigma, z0, L = 4.0, 1.25, 0.5
    field = SlabField(sigma, -0.25, 0.25, (0.9, 0.1, 0.3))
    cams = _camera_looking_along_x(-1.5, 5, 50.0)
    bg = torch.tensor([0.0, 1.0, 0.5])
    out = render_volume_torch(field, cams, bg, bound=2.0, samples_per_ray=4000, early_stop_eps=0.0)
    _, _, z_scale = camera_rays(cams)
    cos = z_scale[0]  # camera z per unit distance along each pixel's ray
    t0, Lt = z0 / cos, L / cos  # distance to the slab and through it
    alpha = 1.0 - torch.exp(-sigma * Lt)
    # expected distance (not divided by alpha): int_t0^t0+Lt t sigma exp(-sigma (t - t0)) dt
    dist = t0 * alpha + 1.0 / sigma - (Lt + 1.0 / sigma) * torch.exp(-sigma * Lt)
    assert torch.allclose(out.alpha[0, 0], alpha, atol=3e-3)
    assert torch.allclose(out.depth[0, 0], dist * cos, atol=5e-3)
    expected_rgb = alpha * field.color[:, None, None] + (1 - alpha) * bg[:, None, None]
    assert torch.allclose(out.rgb[0], expected_rgb, atol=3e-3)
    assert alpha.min() > 0.86 and (alpha.max() - alpha.min()) > 0.01  # off-axis rays are longer


def test_rays_that_miss_the_box_see_the_background() -> None:
    field = SlabField(100.0, -1.0, 1.0, (1.0, 0.0, 0.0))
    cams = _camera_looking_along_x(-3.0, 5, 120.0)  # the box covers the centre only
    out = render_volume_torch(field, cams, torch.zeros(3), bound=1.0, samples_per_ray=16)
    assert out.alpha[0, 0, 0, 0] < 1e-6 and out.alpha[0, 0, 2, 2] > 0.99


def test_occupancy_skipping_keeps_the_image() -> None:
    cams = orbit_cameras(torch.tensor([10.0, 40.0]), torch.tensor([0.0, 120.0]), torch.full((2,), 2.8), torch.full((2,), 40.0), 24, 24)
    bg = torch.ones(3)
    # A fully occupied field: every cell stays occupied and the image is unchanged.
    full = SlabField(0.5, -2.0, 2.0, (0.3, 0.6, 0.9))
    grid = OccupancyGrid(16, 1.0)
    grid.update(full.density, step_size=2.0 / 32)
    assert bool(grid.binary.all())
    a = render_volume_torch(full, cams, bg, bound=1.0, samples_per_ray=32, occupancy=grid, early_stop_eps=0.0)
    b = render_volume_torch(full, cams, bg, bound=1.0, samples_per_ray=32, occupancy=None, early_stop_eps=0.0)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.depth, b.depth)
    # A ball: empty cells are skipped, the image stays the same.
    ball = BallField(20.0, 0.5)
    grid = OccupancyGrid(16, 1.0)
    grid.update(ball.density, step_size=2.0 / 32)
    assert 0.02 < grid.binary.float().mean() < 0.5
    a = render_volume_torch(ball, cams, bg, bound=1.0, samples_per_ray=32, occupancy=grid, early_stop_eps=0.0)
    b = render_volume_torch(ball, cams, bg, bound=1.0, samples_per_ray=32, occupancy=None, early_stop_eps=0.0)
    assert a.extras["samples"] < 0.5 * b.extras["samples"]
    assert torch.allclose(a.rgb, b.rgb, atol=1e-6) and torch.allclose(a.alpha, b.alpha, atol=1e-6)


def test_early_stopping_barely_changes_the_image() -> None:
    cams = orbit_cameras(torch.tensor([20.0]), torch.tensor([30.0]), torch.full((1,), 2.8), torch.full((1,), 40.0), 24, 24)
    ball = BallField(50.0, 0.6)
    a = render_volume_torch(ball, cams, torch.ones(3), bound=1.0, samples_per_ray=64, early_stop_eps=1e-4)
    b = render_volume_torch(ball, cams, torch.ones(3), bound=1.0, samples_per_ray=64, early_stop_eps=0.0)
    assert a.extras["samples"] < 0.9 * b.extras["samples"]
    assert torch.allclose(a.rgb, b.rgb, atol=1e-3)


def _cams(n: int = 2, size: int = 16) -> Cameras:
    return orbit_cameras(torch.full((n,), 20.0), torch.linspace(-90, 90, n), torch.full((n,), 2.8), torch.full((n,), 40.0), size, size)


def test_nerf_renders_and_gradients_reach_the_hash_grid() -> None:
    nerf = NeRF(NeRFConfig(**SMALL), torch.Generator().manual_seed(0))
    assert nerf.encoding.dense_res and nerf.encoding.hashed_res  # both kinds of level are exercised
    out = nerf.render(_cams(), torch.ones(3))
    assert out.rgb.shape == (2, 3, 16, 16) and out.alpha.shape == out.depth.shape == (2, 1, 16, 16)
    assert out.alpha.max() > 0.5  # the density blob is visible from the start
    ((out.rgb - 0.3) ** 2).mean().backward()
    grads = {n: p.grad for n, p in nerf.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["encoding.table"].abs().sum() > 0
    assert all(grads[f"encoding.dense.{i}"].abs().sum() > 0 for i in range(len(nerf.encoding.dense_res)))
    assert {g["name"] for g in nerf.param_groups()} == {"encoding", "network"}
    assert sum(p.numel() for g in nerf.param_groups() for p in g["params"]) == sum(p.numel() for p in nerf.parameters())


def test_normals_point_out_of_a_ball_and_regularisers_are_finite() -> None:
    cfg = NeRFConfig(**SMALL, lambda_orient=1.0, lambda_sparsity=1.0, lambda_opaque=0.1)
    nerf = NeRF(cfg, torch.Generator().manual_seed(0))
    points = torch.tensor([[0.3, 0.0, 0.0], [0.0, -0.3, 0.0], [0.0, 0.0, 0.35]])
    normals = nerf.normals(points)  # the blob's density falls off with |p|
    assert ((normals * torch.nn.functional.normalize(points, dim=-1)).sum(-1) > 0.9).all()
    nerf.before_step(1, frozenset({"orient", "sparsity", "opaque"}))  # the render keeps its samples for orient
    out = nerf.render(_cams(), torch.ones(3))
    assert "sample_points" in out.extras
    assert set(nerf.losses(out, frozenset({"orient", "sparsity", "opaque"}))) == {"orient", "sparsity", "opaque"}
    reg = regularisation(nerf, out, step=1)
    assert reg.dim() == 0 and torch.isfinite(reg) and reg > 0
    reg.backward()
    assert nerf.encoding.table.grad is not None
    plain = NeRF(NeRFConfig(**SMALL), torch.Generator().manual_seed(0))
    assert float(regularisation(plain, plain.render(_cams(), torch.ones(3)), step=1)) == 0.0


def test_occupancy_update_and_state_dict_round_trip() -> None:
    nerf = NeRF(NeRFConfig(**SMALL, occ_update_every=2), torch.Generator().manual_seed(0))
    occupied = float(nerf.occupancy.binary.float().mean())
    assert 0.0 < occupied < 0.6  # the blob fills a ball, not the box
    opt = torch.optim.Adam(nerf.param_groups(), eps=1e-15)
    for step in (1, 2):
        out = nerf.render(_cams(), torch.ones(3))
        out.rgb.mean().backward()
        opt.step()
        opt.zero_grad()
        nerf.after_step(step, out, opt)
    assert int(nerf.occupancy.updates) == 2
    state = nerf.state_dict()
    other = NeRF(NeRFConfig(**SMALL, occ_update_every=2), torch.Generator().manual_seed(1))
    other.load_state_dict(state)
    assert torch.equal(other.occupancy.binary, nerf.occupancy.binary)
    with torch.no_grad():
        a, b = nerf.render(_cams(), torch.ones(3)), other.render(_cams(), torch.ones(3))
    assert torch.equal(a.rgb, b.rgb)
    with pytest.raises(UserError, match="NeRF"):
        other.load_state_dict({"means": torch.zeros(3, 3)})


def test_backend_resolution_on_cpu() -> None:
    assert resolve_volume_backend("auto", "cpu") == "torch"
    assert resolve_volume_backend("torch", "cpu") == "torch"
    with pytest.raises(UserError, match="cuda"):
        resolve_volume_backend("cuda", "cpu")
    with pytest.raises(UserError, match="backend"):
        resolve_volume_backend("vulkan", "cpu")


def test_nerf_is_in_the_registry() -> None:
    assert REPRESENTATIONS["nerf"].Config is NeRFConfig and REPRESENTATIONS["nerf"] is NeRF


def test_five_step_toyworld_run(tmp_path: Path) -> None:
    flags = [f for i, f in enumerate(TINY_FLAGS) if f != "--representation.num-points" and TINY_FLAGS[i - 1] != "--representation.num-points"]
    small = [f"--representation.{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    names, cfg = parse_run_args([*flags, "--representation", "nerf", *small, "--steps", "5", "--out", str(tmp_path), "--prompt", "a red mug"])
    trainer = trainer_for(names, cfg)
    start = [p.detach().clone() for p in trainer.representation.parameters()]
    assert trainer.train()
    trainer.finish()  # splats.ply is skipped: it exists only for Gaussians
    exported = {p.name for p in (trainer.run_dir / "export").iterdir()}
    assert "splats.ply" not in exported and "turntable.mp4" in exported
    metrics = json.loads((trainer.run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["mask_iou"] <= 1.0 and math.isfinite(metrics["psnr"])
    assert trainer.step == 5 and trainer.skipped_steps == 0
    assert any(not torch.equal(a, b) for a, b in zip(start, trainer.representation.parameters()))
    resumed = Run.resume(trainer.run_dir).trainer  # checkpoints hold the NeRF and its occupancy grid
    assert resumed.step == 5
    assert torch.equal(resumed.representation.occupancy.binary, trainer.representation.occupancy.binary)


@pytest.mark.cuda
def test_cuda_and_torch_backends_agree() -> None:
    if resolve_volume_backend("auto", "cuda") != "cuda":
        pytest.skip("nerfacc's CUDA extension is unavailable")
    cams = orbit_cameras(torch.tensor([10.0, 40.0]), torch.tensor([0.0, 120.0]), torch.full((2,), 2.8), torch.full((2,), 40.0), 32, 32).to("cuda")
    bg = torch.tensor([0.3, 0.6, 0.9], device="cuda")
    outs = {}
    for backend in ("torch", "cuda"):
        nerf = NeRF(NeRFConfig(**{**SMALL, "samples_per_ray": 256}), torch.Generator().manual_seed(0), backend=backend).to("cuda")
        with torch.no_grad():
            outs[backend] = nerf.render(cams, bg)
        assert outs[backend].extras["backend"] == backend
    a, b = outs["torch"], outs["cuda"]
    assert (a.alpha - b.alpha).abs().mean() < 0.02 and (a.rgb - b.rgb).abs().mean() < 0.02
    assert (a.depth - b.depth).abs().mean() < 0.05
    nerf = NeRF(NeRFConfig(**SMALL), torch.Generator().manual_seed(0), backend="cuda").to("cuda")
    out = nerf.render(cams, bg)
    out.rgb.mean().backward()
    assert nerf.encoding.table.grad is not None and nerf.encoding.table.grad.abs().sum() > 0


def test_trainer_adds_the_regularisers_to_the_loss(tmp_path: Path) -> None:
    flags = [f for i, f in enumerate(TINY_FLAGS) if f != "--representation.num-points" and TINY_FLAGS[i - 1] != "--representation.num-points"]
    small = [f"--representation.{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    losses = {}
    for weight in ("0", "100"):
        names, cfg = parse_run_args([*flags, "--representation", "nerf", *small, "--steps", "1", "--out", str(tmp_path / weight),
                                     "--representation.lambda-sparsity", weight])
        trainer = trainer_for(names, cfg)
        losses[weight] = trainer.train_step()["loss"]
    assert losses["100"] > losses["0"] + 1.0


def test_regulariser_weights_follow_their_schedules() -> None:
    from threedistill.representations.nerf import sparsity_loss

    nerf = NeRF(NeRFConfig(**SMALL, lambda_sparsity=[(0.0, 0.0), (0.5, 100.0)]), torch.Generator().manual_seed(0))
    alpha = torch.full((1, 1, 4, 4), 0.5)
    out = RenderOutput(rgb=alpha.expand(1, 3, 4, 4), alpha=alpha, depth=alpha)
    assert float(regularisation(nerf, out, 0, 100)) == 0.0
    assert float(regularisation(nerf, out, 25, 100)) == pytest.approx(50.0 * float(sparsity_loss(alpha)))
    assert float(regularisation(nerf, out, 100, 100)) == pytest.approx(100.0 * float(sparsity_loss(alpha)))
    with pytest.raises(UserError, match="lambda-opaque"):
        NeRF(NeRFConfig(**SMALL, lambda_opaque=[(0.0,)]), torch.Generator())


def test_query_heads_in_one_product_equal_density_and_albedo() -> None:
    """`query` runs both heads as one product; it equals the separate density and albedo heads."""
    nerf = NeRF(NeRFConfig(**SMALL), torch.Generator().manual_seed(0), backend="torch")
    with torch.no_grad():
        for head in (nerf.density_head, nerf.albedo_head):
            head.weight.normal_(generator=torch.Generator().manual_seed(1))
    points = torch.rand(500, 3, generator=torch.Generator().manual_seed(2)) * 1.6 - 0.8
    sigma, rgb = nerf.query(points)
    torch.testing.assert_close(sigma, nerf.density(points), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rgb, nerf.albedo(points), atol=1e-6, rtol=1e-6)


def test_rays_outside_the_occupied_box_are_not_marched_and_the_render_is_unchanged() -> None:
    """Rays that miss the occupied cells' box are left out of the march; images, depth moments, kept samples and
    gradients equal those of marching every ray with the same sample offsets."""
    from threedistill.render.volume_torch import _march_rays, _render_rays, camera_rays

    nerf = NeRF(NeRFConfig(**SMALL), torch.Generator().manual_seed(0), backend="torch")
    nerf.occupancy.occs.zero_()
    nerf.occupancy.occs.view(16, 16, 16)[3:9, 6:12, 5:10] = 1.0  # an off-centre block of occupied cells
    nerf.occupancy.rebuild()
    box = nerf.occupancy.occupied_box()
    assert box is not None and bool((box[0] > -1.0).all() and (box[1] < 1.0).all())
    origins, dirs, _ = camera_rays(orbit_cameras(torch.tensor([20.0, -10.0]), torch.tensor([30.0, 200.0]),
                                                 torch.full((2,), 2.8), torch.full((2,), 40.0), 24, 24))
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)

    def render(culled: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        nerf.zero_grad()
        generator = torch.Generator().manual_seed(5)
        if culled:
            out = _render_rays(nerf, origins, dirs, 1.0, 16, nerf.occupancy, True, generator, 0.0, 0.0, True, True)
        else:
            offsets = torch.rand((origins.shape[0], 16), generator=generator)
            out = _march_rays(nerf, origins, dirs, offsets, 1.0, nerf.occupancy, 0.0, 0.0, True, True)
        (out["rgb"].square().sum() + out["alpha"].sum() + out["t2"].sum()).backward()
        return out, {name: p.grad.clone() for name, p in nerf.named_parameters() if p.grad is not None}

    (culled, culled_grads), (marched, marched_grads) = render(True), render(False)
    assert 0 < int(marched["samples"]) == int(culled["samples"])
    hit = marched["alpha"] > 0
    assert 0.05 < float(hit.float().mean()) < 0.6  # the test means something: many rays are culled, some are not
    for key in ("rgb", "alpha", "t", "t2", "sample_points", "sample_weights", "sample_dirs"):
        torch.testing.assert_close(culled[key], marched[key], atol=0.0, rtol=0.0)
    assert culled_grads.keys() == marched_grads.keys() and culled_grads
    for name, grad in marched_grads.items():
        torch.testing.assert_close(culled_grads[name], grad, atol=1e-7, rtol=1e-6)
    # no occupied cell at all: nothing is marched, nothing is drawn
    nerf.occupancy.occs.zero_()
    nerf.occupancy.rebuild()
    assert nerf.occupancy.occupied_box() is None
    empty = _render_rays(nerf, origins, dirs, 1.0, 16, nerf.occupancy, True, None, 0.0, 0.0)
    assert int(empty["samples"]) == 0 and float(empty["alpha"].detach().abs().sum()) == 0.0


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_dense_levels_sampled_in_one_batch_per_thread_equal_one_batch(threads: int) -> None:
    """The hash grid's dense levels split their points into one grid_sample batch per torch thread (3D grid_sample
    runs a thread per batch entry on the CPU): the features are exactly those of one batch, the gradients equal
    within rounding."""
    import torch.nn.functional as F

    from threedistill.representations.nerf import PARALLEL_GRID_SAMPLE_MIN_POINTS, sample_dense_level

    gen = torch.Generator().manual_seed(3)
    volume = torch.randn(1, 2, 17, 17, 17, generator=gen, requires_grad=True)
    x = torch.rand(PARALLEL_GRID_SAMPLE_MIN_POINTS + 7, 3, generator=gen) * 2 - 1
    weights = torch.randn(x.shape[0], 2, generator=gen)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        split = sample_dense_level(volume, x)
        (grad_split,) = torch.autograd.grad((split * weights).sum(), volume)
    finally:
        torch.set_num_threads(previous)
    whole = F.grid_sample(volume, x.view(1, -1, 1, 1, 3), mode="bilinear", align_corners=True).view(2, -1).t()
    (grad_whole,) = torch.autograd.grad((whole * weights).sum(), volume)
    torch.testing.assert_close(split, whole, atol=0.0, rtol=0.0)
    torch.testing.assert_close(grad_split, grad_whole, atol=1e-5, rtol=1e-5)
