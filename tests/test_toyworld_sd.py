"""toyworld-sd: its training (seeded, resumable, the loss falls), the shipped model (loads through
the Stable Diffusion path, knows the data), and runs on it scored against toyworld's ground truth."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from support import SMALL_NERF, assert_one_line_error, run_cli
from threedistill.cli import main
from threedistill.core.cameras import OrbitSampler, OrbitSamplerConfig
from threedistill.eval.metrics import psnr
from threedistill.priors.base import PRIORS
from threedistill.priors.toyworld.catalogue import resolve_prompt
from threedistill.priors.toyworld.prior import render_ground_truth
from threedistill.priors.toyworld_sd.prior import SHIPPED_MODEL, ToyworldSDConfig
from threedistill.priors.toyworld_sd.training import TrainConfig, Trainer

TINY_TRAINING = TrainConfig(objects=("mug", "duck"), colours=("red", "blue"), views=8, holdout_views=2, vae_steps=16,
                            unet_steps=16, vae_batch=8, unet_batch=8, warmup=4, checkpoint_every=8,
                            vae_channels=(8, 16), unet_channels=(32, 32), text_hidden=32, text_layers=1, max_length=40)


class Interrupt(Exception):
    pass


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_training_loss_falls_and_a_resume_continues_exactly(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    try:
        whole = Trainer(TINY_TRAINING, tmp_path / "whole")
        whole.train()
        for phase in ("vae", "unet"):
            losses = whole.losses[phase]
            assert len(losses) == 16 and _mean(losses[-4:]) < 0.8 * _mean(losses[:4]), (phase, losses)

        def stop_at_unet_step_11(phase: str, step: int, total: int, loss: float) -> None:
            if phase == "unet" and step == 11:
                raise Interrupt

        with pytest.raises(Interrupt):
            Trainer(TINY_TRAINING, tmp_path / "split").train(stop_at_unet_step_11)
        resumed = Trainer(TINY_TRAINING, tmp_path / "split")
        resumed.train()  # from the state written at step 8
        for phase in ("vae", "unet"):
            assert resumed.losses[phase] == pytest.approx(whole.losses[phase], rel=1e-5)
        out = resumed.save_pipeline(tmp_path / "model", "test")
    finally:
        torch.set_num_threads(2)
    record = json.loads((out / "training.json").read_text())
    assert set(record["heldout_eps_mse_by_timestep"]) and (out / "loss_curve.svg").read_text().startswith("<svg")
    assert (out / "model_index.json").exists() and (out / "unet" / "diffusion_pytorch_model.safetensors").exists()


REPRODUCED_STEPS = 16


@pytest.mark.slow
def test_training_from_the_recorded_config_reproduces_the_shipped_loss_curve(tmp_path: Path) -> None:
    """The shipped training.json's config and seed give the shipped loss curve's first VAE steps."""
    record = json.loads((SHIPPED_MODEL / "training.json").read_text())
    config = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in record["config"].items()})
    with (SHIPPED_MODEL / "loss_curve.csv").open() as f:
        shipped = [float(r["loss"]) for r in csv.DictReader(f) if r["phase"] == "vae"][:REPRODUCED_STEPS]

    def stop(phase: str, step: int, total: int, loss: float) -> None:
        if step == REPRODUCED_STEPS:
            raise Interrupt

    trainer = Trainer(config, tmp_path, render_on_demand=True)
    with pytest.raises(Interrupt):
        trainer.train(stop)
    losses = trainer.losses["vae"]
    assert losses == pytest.approx(shipped, rel=0.02), list(zip(losses, shipped))
    assert _mean(losses[-4:]) < 0.8 * _mean(losses[:4])


def test_a_training_state_of_another_config_is_refused(tmp_path: Path) -> None:
    Trainer(replace(TINY_TRAINING, vae_steps=1, unet_steps=0), tmp_path).save_state()
    with pytest.raises(ValueError, match="another config"):
        Trainer(TINY_TRAINING, tmp_path).load_state()


# ---------------------------------------------------------------------- the shipped model
@pytest.fixture(scope="module")
def prior():
    cls = PRIORS["toyworld-sd"]
    return cls(ToyworldSDConfig(), OrbitSamplerConfig(), "cpu")


def test_the_shipped_model_is_small_and_documented() -> None:
    size = sum(f.stat().st_size for f in SHIPPED_MODEL.rglob("*") if f.is_file())
    assert size < 30e6
    record = json.loads((SHIPPED_MODEL / "training.json").read_text())
    assert record["command"].startswith("python tools/train_toyworld_sd.py")
    with open(SHIPPED_MODEL / "loss_curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["phase"] for r in rows} == {"vae", "unet"}


def test_the_shipped_vae_reconstructs_catalogue_renders(prior) -> None:
    cams = OrbitSampler(OrbitSamplerConfig()).sample(torch.Generator().manual_seed(5), batch_size=8)
    truth = render_ground_truth(resolve_prompt("a yellow duck")[0], cams, torch.device("cpu")).rgb
    with torch.no_grad():
        recon = prior.decode(prior.encode(truth))
    assert prior.resolution == 64 and psnr(recon, truth) > 24.0


def test_the_shipped_unet_denoises_better_with_the_right_prompt(prior) -> None:
    """Held-out views: epsilon error with the object's prompt beats the unconditional and a wrong prompt."""
    cams = OrbitSampler(OrbitSamplerConfig()).sample(torch.Generator().manual_seed(6), batch_size=16)
    truth = render_ground_truth(resolve_prompt("a red mug")[0], cams, torch.device("cpu")).rgb
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x0 = prior.encode(truth)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.full((16,), 600)
        a, s = prior.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1), (1 - prior.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
        x_t = a * x0 + s * noise
        errors = {text: float((prior.predict_eps(x_t, t, prior.embed([text] * 16)) - noise).pow(2).mean())
                  for text in ("a red mug", "", "a green tree")}
    assert errors["a red mug"] < errors[""] < errors["a green tree"] * 1.5, errors
    assert errors["a red mug"] < 0.9 * errors["a green tree"], errors


# ---------------------------------------------------------------------- runs on it
QUICK = ["--device", "cpu", "--log.no-progress", "--log.turntable-frames", "2", "--log.turntable-resolution", "32",
         "--log.preview-every", "0", "--log.checkpoint-every", "0", "--log.eval-views", "8", "--log.export-formats", "splat"]
GAUSSIANS = ["--representation.num-points", "300"]


@pytest.mark.parametrize("image_space", [[], ["--guidance.image-space"]], ids=["latent-loss", "image-space-loss"])
def test_a_run_on_toyworld_sd_is_scored_against_ground_truth(image_space: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--prompt", "a red mug", "--prior", "toyworld-sd", "--steps", "4", *image_space, *QUICK, *GAUSSIANS,
                 "--out", str(tmp_path)]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["mask_iou"] <= 1.0 and metrics["psnr"] > 0 and "back_psnr" in metrics


NERF = [f"--representation.{k.replace('_', '-')}={v}" for k, v in SMALL_NERF.items()]
MESHES = ["--mesh.resolution", "24", "--mesh.calibration-views", "3", "--mesh.calibration-resolution", "24"]


@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    ["--representation", "nerf", *NERF, "--steps", "2"],
    ["--representation", "mesh", "--representation.init-subdivisions", "2", "--steps", "2"],
    ["--config", "dreamfusion", *NERF, "--steps", "2"],
    ["--config", "magic3d", *NERF, "--steps", "3"],
    ["--config", "prolificdreamer", *NERF, "--steps", "6"],
    ["--config", "dreamgaussian", *GAUSSIANS, "--steps", "12"],
], ids=["nerf", "mesh", "dreamfusion", "magic3d", "prolificdreamer", "dreamgaussian"])
def test_representations_and_presets_on_toyworld_sd_are_scored(flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--prompt", "a blue cube", *flags, "--prior", "toyworld-sd", *QUICK, *MESHES, "--sampler.batch-size", "1",
                 "--log.export-formats", "glb", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    metrics = json.loads((Path(capsys.readouterr().out.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert metrics["prior"] == "toyworld-sd" and 0.0 <= metrics["mask_iou"] <= 1.0 and "chamfer" in metrics
    for stage in metrics.get("stages", []):
        assert "mask_iou" in stage, stage


def test_a_scene_edit_on_toyworld_sd_is_scored_against_the_target(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scene = tmp_path / "mug"
    assert main(["toyworld", "scene", "a red mug", str(scene), "--views", "6", "--resolution", "64"]) == 0
    assert main(["edit", "--scene", str(scene), "--source", "a red mug", "--target", "a blue mug", "--prior", "toyworld-sd",
                 "--representation", "gaussians", "--reconstruct-steps", "2", "--steps", "2", *QUICK,
                 *GAUSSIANS, "--out", str(tmp_path / "edits")]) == 0, capsys.readouterr().err
    metrics = json.loads((Path(capsys.readouterr().out.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert [s["guidance"] for s in metrics["stages"]] == ["photometric", "scene-dds"] and metrics["psnr"] > 0


def test_an_image_edit_on_toyworld_sd_is_scored_against_a_truth_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for colour in ("red", "blue"):
        assert main(["toyworld", "scene", f"a {colour} mug", str(tmp_path / colour), "--views", "2", "--resolution", "64"]) == 0
    frame = "images/frame_00000.png"
    assert main(["edit-image", str(tmp_path / "red" / frame), "--source", "a red mug", "--target", "a blue mug",
                 "--truth", str(tmp_path / "blue" / frame), "--prior", "toyworld-sd", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "edits")]) == 0, capsys.readouterr().err
    record = json.loads((Path(capsys.readouterr().out.strip().splitlines()[-1]) / "edit.json").read_text())
    assert record["source_psnr"] > 0 and record["edited_psnr"] > 0


def test_toyworld_sd_refuses_prompts_outside_the_catalogue_and_missing_models(tmp_path: Path) -> None:
    proc = run_cli("run", "--prompt", "a corgi", "--prior", "toyworld-sd", "--steps", "2", "--out", str(tmp_path))
    assert_one_line_error(proc, "unknown toyworld prompt 'a corgi'")
    proc = run_cli("run", "--prompt", "a red mug", "--prior", "toyworld-sd", "--prior.model", str(tmp_path / "nope"),
                   "--steps", "2", "--out", str(tmp_path))
    assert_one_line_error(proc, "does not exist")

