"""--prior mvdream: the multi-view UNet against the public checkpoint layout, the tiny model through
the production loader, 4-view groups, the x0-reconstruction guidance, runs and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from support import KnownEpsPrior, assert_one_line_error, run_cli
from threedistill.core.cameras import OrbitSampler, OrbitSamplerConfig
from threedistill.core.types import TextEmbeddings
from threedistill.guidance.recon import ReconConfig, ReconGuidance, rescale_std
from threedistill.priors.base import add_noise, predict_x0
from threedistill.priors.diffusers.mv_unet import MultiViewUNetModel
from threedistill.priors.diffusers.mvdream import MVDreamConfig, MVDreamPrior, camera_condition

FIXTURE = Path(__file__).parent / "fixtures" / "mvdream_sd21_unet_params.txt"
QUICK = ["--device", "cpu", "--log.no-progress", "--log.turntable-frames", "2", "--log.turntable-resolution", "32",
         "--log.preview-every", "0", "--log.checkpoint-every", "0", "--representation.num-points", "300",
         "--log.export-formats", "splat", "--log.log-every", "1"]


def _public_layout() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in FIXTURE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split()
            shapes[name] = tuple(int(n) for n in shape.split("x"))
    return shapes


def test_full_size_unet_loads_the_public_layout_strictly() -> None:
    """Built at full size on the meta device (no memory), our module has exactly the public names and shapes."""
    public = _public_layout()
    assert len(public) == 690 and sum(torch.Size(s).numel() for s in public.values()) == 867_572_164
    with torch.device("meta"):
        unet = MultiViewUNetModel(image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=2,
                                  attention_resolutions=[4, 2, 1], channel_mult=[1, 2, 4, 4], num_head_channels=64,
                                  context_dim=1024, camera_dim=16, transformer_depth=1)
    result = unet.load_state_dict({k: torch.empty(s, device="meta") for k, s in public.items()}, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert {k: tuple(v.shape) for k, v in unet.state_dict().items()} == public


@pytest.fixture(scope="module")
def prior(tiny_mvdream: Path) -> MVDreamPrior:
    return MVDreamPrior(MVDreamConfig(model=str(tiny_mvdream)), None, "cpu")


def test_loads_through_the_production_loader(prior: MVDreamPrior, tiny_mvdream: Path) -> None:
    assert json.loads((tiny_mvdream / "model_index.json").read_text())["unet"] == ["mv_unet", "MultiViewUNetModel"]
    assert isinstance(prior.unet, MultiViewUNetModel) and prior.resolution == 64 and prior.view_group == 4
    assert not any(p.requires_grad for p in prior.unet.parameters())


def test_views_attend_within_their_group_only(prior: MVDreamPrior) -> None:
    """Changing one view changes the predictions of the other views of its group, never another group's."""
    gen = torch.Generator().manual_seed(0)
    cams = OrbitSampler(OrbitSamplerConfig(batch_size=8), group=4).sample(gen)
    x = torch.randn(8, 4, 8, 8, generator=gen)
    t = torch.full((8,), 400)
    emb = prior.embed(["a duck"]).expand(8, -1, -1)
    base = prior.predict_eps(x, t, emb, cams)
    x2 = x.clone()
    x2[1] += 1.0
    moved = (prior.predict_eps(x2, t, emb, cams) - base).flatten(1).abs().amax(1)
    assert moved[[0, 2, 3]].min() > 1e-4 and moved[4:].max() == 0.0
    other_cams = OrbitSampler(OrbitSamplerConfig(batch_size=8), group=4).sample(gen)
    assert not torch.allclose(prior.predict_eps(x, t, emb, other_cams), base)  # the camera embedding is used


def test_camera_condition_matches_threestudio() -> None:
    """OpenGL camera axes, unit-distance position: a camera on +x looking at the origin, z up."""
    cams = OrbitSampler(OrbitSamplerConfig(batch_size=4, elevation_range=(0, 0), azimuth_range=(0, 0), distance_range=(2, 2)),
                        group=4).sample(torch.Generator().manual_seed(0))
    c = camera_condition(cams).view(-1, 4, 4)[0]
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert torch.allclose(c, expected, atol=1e-6)


def test_sampler_draws_four_view_groups() -> None:
    cams = OrbitSampler(OrbitSamplerConfig(batch_size=8), group=4).sample(torch.Generator().manual_seed(1))
    for g in range(2):
        rows = slice(4 * g, 4 * g + 4)
        assert torch.allclose(cams.elevation[rows], cams.elevation[4 * g].expand(4))
        assert torch.allclose(cams.distance[rows], cams.distance[4 * g].expand(4))
        steps = torch.remainder(cams.azimuth[rows].diff(), 360.0)
        assert torch.allclose(steps, torch.full((3,), 90.0), atol=1e-4)


def test_std_rescale() -> None:
    gen = torch.Generator().manual_seed(0)
    x0_hat, x0_cond = 3.0 * torch.randn(8, 4, 2, 2, generator=gen), torch.randn(8, 4, 2, 2, generator=gen)
    assert torch.equal(rescale_std(x0_hat, x0_cond, 4, 0.0), x0_hat)
    full = rescale_std(x0_hat, x0_cond, 4, 1.0)
    for g in range(2):
        assert torch.allclose(full[4 * g:4 * g + 4].std(), x0_cond[4 * g:4 * g + 4].std(), rtol=1e-4)
    assert torch.allclose(rescale_std(x0_hat, x0_cond, 4, 0.5), 0.5 * (full + x0_hat))


def test_recon_gradient_is_x0_minus_its_reconstruction() -> None:
    prior = KnownEpsPrior(slope=0.3)
    prior.view_group = 4
    guidance = ReconGuidance(ReconConfig(cfg_scale=1.0, std_rescale=0.0), prior, 10, torch.Generator().manual_seed(3))
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    emb = TextEmbeddings(*(torch.full((4,), 2.0) for _ in range(3)))
    out = guidance(x, None, emb, 1)  # type: ignore[arg-type]
    out.loss.backward()
    replay = torch.Generator().manual_seed(3)
    t = torch.randint(20, 981, (1,), generator=replay).repeat_interleave(4)  # one timestep for the group of 4
    noise = torch.randn(x.shape, generator=replay)
    x_t = add_noise(prior.alphas_cumprod, x.detach(), noise, t)
    x0_hat = predict_x0(prior.alphas_cumprod, x_t, prior.predict_eps(x_t, t, emb.cond), t)
    assert torch.allclose(x.grad, (x.detach() - x0_hat) / 4, atol=1e-5)


@pytest.mark.parametrize("objective", ["recon", "sds"])
def test_run_five_steps(objective: str, tiny_mvdream: Path, tmp_path: Path) -> None:
    proc = run_cli("run", "--prior", "mvdream", "--prior.model", str(tiny_mvdream), "--guidance", objective,
                    "--steps", "5", "--out", str(tmp_path), *QUICK)
    assert proc.returncode == 0, proc.stderr
    run = Path(proc.stdout.strip().splitlines()[-1])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 5 and metrics["skipped_steps"] == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(r["loss"] == r["loss"] and r["grad_norm"] > 0 for r in rows)


def test_batch_must_hold_whole_groups(tiny_mvdream: Path, tmp_path: Path) -> None:
    proc = run_cli("run", "--prior", "mvdream", "--prior.model", str(tiny_mvdream), "--sampler.batch-size", "3",
                    "--out", str(tmp_path), *QUICK)
    assert_one_line_error(proc, "groups of 4 views", "--sampler.batch-size")


def test_offline_and_corrupt_models_are_one_line(tiny_mvdream: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    proc = run_cli("run", "--prior", "mvdream", "--out", str(tmp_path), *QUICK)
    assert_one_line_error(proc, "MVDream model 'ashawkey/mvdream-sd2.1-diffusers'", "huggingface-cli download")
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_mvdream, truncated)
    weights = truncated / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    proc = run_cli("run", "--prior", "mvdream", "--prior.model", str(truncated), "--out", str(tmp_path), *QUICK)
    assert_one_line_error(proc, f"MVDream model '{truncated}'", "truncated")
    other = tmp_path / "other-config"
    shutil.copytree(tiny_mvdream, other)
    config = json.loads((other / "unet" / "config.json").read_text())
    (other / "unet" / "config.json").write_text(json.dumps({**config, "camera_dim": None}))
    proc = run_cli("run", "--prior", "mvdream", "--prior.model", str(other), "--out", str(tmp_path), *QUICK)
    assert_one_line_error(proc, f"'{other}'", "unexpected keys")


def test_mvdream_preset(tiny_mvdream: Path, tmp_path: Path) -> None:
    """The recipe's two stages (64 px, then 256 px; annealed t bounds) on the tiny model, and with every
    objective that makes sense on 4-view groups."""
    nerf = ["--representation.levels", "4", "--representation.log2-table-size", "12", "--representation.max-resolution", "32",
            "--representation.hidden-dim", "16", "--sampler.width", "32", "--sampler.height", "32", "--mesh.resolution", "24"]
    proc = run_cli("run", "--config", "mvdream", "--prior.model", str(tiny_mvdream), "--steps", "4", "--out", str(tmp_path),
                    *QUICK[:11], "--log.export-formats", "glb", *nerf)
    assert proc.returncode == 0, proc.stderr
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert [s["stage"] for s in json.loads((run / "metrics.json").read_text())["stages"]] == ["low", "high"]


@pytest.mark.parametrize("objective", ["ism", "csd"])
def test_other_objectives_on_view_groups(objective: str, tiny_mvdream: Path, tmp_path: Path) -> None:
    proc = run_cli("run", "--prior", "mvdream", "--prior.model", str(tiny_mvdream), "--guidance", objective,
                    "--steps", "2", "--out", str(tmp_path), *QUICK)
    assert proc.returncode == 0, proc.stderr
