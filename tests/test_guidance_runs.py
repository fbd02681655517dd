"""Every objective end to end through the trainer and CLI, particles, and toyworld's exact VSD model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from support import assert_one_line_error, run_cli, tiny_config, trainer_for
from threedistill.engine.loop import StageTrainer
from threedistill.core.cameras import OrbitSampler, OrbitSamplerConfig
from threedistill.config import parse_run_args
from threedistill.core.objective import OBJECTIVES
from threedistill.priors.base import VariationalConfig
from threedistill.priors.toyworld.prior import ReferenceSet, ToyworldConfig, ToyworldPrior
from threedistill.engine.run import Run

RUN_OBJECTIVES = [name for name in OBJECTIVES if OBJECTIVES[name].needs.prior and not OBJECTIVES[name].needs.scene and not OBJECTIVES[name].needs.source_image
                  and not OBJECTIVES[name].needs.samples_clips]  # scenes: test_scene_edit; explicit 4D: test_explicit4d


def _trainer(tmp_path: Path, *extra: str) -> StageTrainer:
    names, cfg = tiny_config("--out", str(tmp_path), *extra)
    trainer = trainer_for(names, cfg)
    return trainer


@pytest.mark.parametrize("name", RUN_OBJECTIVES)
def test_every_objective_runs_and_moves_the_asset(name: str, tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "--guidance", name, "--prompt", "a red cube")
    start = [p.detach().clone() for p in trainer.representation.parameters()]
    assert trainer.train()
    summary = trainer.finish()
    assert summary["guidance"] == name and summary["skipped_steps"] == 0
    assert any(not torch.equal(a, b) for a, b in zip(start, trainer.representation.parameters()))


def test_dds_is_refused_by_run_with_a_pointer_to_edit_image() -> None:
    proc = run_cli("run", "--prior", "toyworld", "--guidance", "dds", "--device", "cpu")
    assert_one_line_error(proc, "dds", "edit-image")


def test_classifier_objectives_soften_toyworld_unless_told_otherwise(tmp_path: Path) -> None:
    for name, expected in (("csd", 100.0), ("csm", 100.0), ("sds", None), ("vsd", None)):
        _, cfg = tiny_config("--guidance", name)
        assert cfg.prior.temperature == expected, name
    _, cfg = tiny_config("--guidance", "csd", "--prior.temperature", "5")
    assert cfg.prior.temperature == 5.0
    for name, expected in (("ism", 4.0), ("tsm", 4.0), ("sds", None)):
        assert tiny_config("--guidance", name)[1].prior.data_noise == expected, name
    assert tiny_config("--guidance", "ism", "--prior.data-noise", "0")[1].prior.data_noise == 0.0
    trainer = _trainer(tmp_path, "--guidance", "csm")
    assert trainer.prior.temperature == 100.0
    saved = yaml.safe_load((trainer.run_dir / "config.yaml").read_text())
    assert saved["prior"]["temperature"] == 100.0


def test_particles_render_their_own_views_and_report_modes(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "--guidance", "vsd", "--guidance.particles", "3", "--prompt", "a ball")
    assert trainer.train(until=3)
    assert trainer.last_render.shape[0] == 3 * trainer.cfg.sampler.batch_size
    trainer.save_checkpoint()
    resumed = Run.resume(trainer.run_dir).trainer
    assert len(resumed.representation) == 3 and resumed.step == 3
    for a, b in zip(trainer.representation.members(), resumed.representation.members()):
        torch.testing.assert_close(a.means, b.means, atol=0, rtol=0)
    assert resumed.train()
    summary = resumed.finish()
    assert len(summary["particles"]) == 3 and 1 <= summary["modes_reached"] <= 3
    assert summary["mask_iou"] == pytest.approx(sum(p["mask_iou"] for p in summary["particles"]) / 3)
    exported = {p.name for p in (resumed.run_dir / "export").iterdir()}
    assert {"splats.ply", "splats_particle1.ply", "splats_particle2.ply", "turntable.mp4"} <= exported


def test_toyworld_variational_model_is_the_exact_denoiser_of_its_buffer() -> None:
    prior = ToyworldPrior(ToyworldConfig(resolution=4, kappa=3.0), OrbitSamplerConfig(width=4, height=4))
    model = prior.variational_model(VariationalConfig(buffer_size=5))
    gen = torch.Generator().manual_seed(0)
    sampler = OrbitSampler(OrbitSamplerConfig(width=4, height=4))
    renders, cams = [], []
    for _ in range(3):  # 6 renders pushed, the oldest falls out
        x0 = torch.rand(2, 3, 4, 4, generator=gen) * 2 - 1
        c = sampler.sample(gen, batch_size=2)
        model.update(x0, torch.zeros(2), c, gen)
        renders.append(x0)
        cams.append(c.directions())
    assert len(model) == 5
    x = torch.cat(renders)[1:].flatten(1).double()
    dirs = torch.cat(cams)[1:].double()
    x_t = torch.randn(2, 3, 4, 4, generator=gen)
    t = torch.tensor([300, 800])
    query = sampler.sample(gen, batch_size=2)
    for with_cams in (True, False):
        got = model.predict_eps(x_t, t, torch.zeros(2), query if with_cams else None)
        # brute force: softmax over -|x_t - a x_i|^2 / (2 s^2) + kappa cos(angle), then eps = (x_t - a D) / s
        abar = prior.alphas_cumprod.double()[t].view(2, 1)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        d2 = ((x_t.flatten(1).double()[:, None] - a[:, :, None] * x[None]) ** 2).sum(-1)
        logits = -d2 / (2 * s * s)
        if with_cams:
            logits = logits + 3.0 * query.directions().double() @ dirs.T
        D = torch.softmax(logits, -1) @ x
        expected = ((x_t.flatten(1).double() - a * D) / s).view_as(x_t).float()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    state = model.state_dict()
    other = prior.variational_model(VariationalConfig(buffer_size=5))
    other.load_state_dict(state)
    torch.testing.assert_close(other.predict_eps(x_t, t, torch.zeros(2), query), model.predict_eps(x_t, t, torch.zeros(2), query))
    assert isinstance(ReferenceSet, type)


@pytest.mark.parametrize("name", ["vsd", "esd"])
def test_vsd_and_esd_train_lora_on_a_tiny_sd(name: str, tiny_sd: dict[str, Path], tmp_path: Path) -> None:
    names, cfg = parse_run_args([
        "--out", str(tmp_path), "--prior", "sd", "--prior.model", str(tiny_sd["sd2v"]), "--guidance", name, "--steps", "5",
        "--representation.num-points", "200", "--sampler.batch-size", "2", "--device", "cpu", "--log.no-progress",
        "--log.log-every", "1",
    ])
    trainer = trainer_for(names, cfg)
    model = trainer.objective.variational
    frozen = {k: v.clone() for k, v in trainer.prior.unet.state_dict().items()}
    lora = [p.detach().clone() for p in model.trainable_parameters()]
    assert trainer.train()
    assert all(not torch.equal(a, b.detach()) for a, b in zip(lora, model.trainable_parameters())), "every LoRA/camera weight moved"
    assert all(torch.equal(frozen[k], v) for k, v in trainer.prior.unet.state_dict().items()), "the frozen prior is untouched"
    rows = [json.loads(ln) for ln in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("vsd_lora_loss" in r for r in rows)
