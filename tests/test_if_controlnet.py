"""--prior deepfloyd-if (pixel-space IF stage I) and --prior.controlnet (SD conditioned on the renders), on
tiny models built from configs and loaded through the production loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from support import assert_one_line_error, build_tiny_controlnet, run_cli
from threedistill.core.cameras import orbit_cameras
from threedistill.priors.diffusers.controlnet import render_condition
from threedistill.priors.diffusers.deepfloyd import DeepFloydIFConfig, DeepFloydIFPrior
from threedistill.priors.diffusers.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior
from threedistill.render.mesh_torch import render_mesh
from threedistill.priors.toyworld.catalogue import resolve_prompt

QUICK = ["--device", "cpu", "--log.no-progress", "--log.turntable-frames", "2", "--log.turntable-resolution", "32",
         "--log.preview-every", "0", "--log.checkpoint-every", "0", "--representation.num-points", "300",
         "--log.export-formats", "splat", "--log.log-every", "1", "--sampler.batch-size", "2", "--steps", "5"]


def _rows(proc) -> list[dict]:
    run = Path(proc.stdout.strip().splitlines()[-1])
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_if_prior_is_pixel_space(tiny_if: Path) -> None:
    prior = DeepFloydIFPrior(DeepFloydIFConfig(model=str(tiny_if)), None, "cpu")
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    x0 = prior.encode(images)
    assert torch.allclose(x0, images * 2 - 1)  # no VAE: the gradient reaches the renders unchanged
    emb = prior.embed(["a yellow duck", ""])
    assert emb.shape == (2, 77, 32)
    eps = prior.predict_eps(x0.detach(), torch.tensor([100, 900]), emb)
    assert eps.shape == x0.shape and torch.isfinite(eps).all()


def test_if_runs_five_steps(tiny_if: Path, tmp_path: Path) -> None:
    proc = run_cli("run", "--prior", "deepfloyd-if", "--prior.model", str(tiny_if), "--out", str(tmp_path), *QUICK)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc)
    assert len(rows) == 5 and all(r["grad_norm"] > 0 for r in rows)


def test_if_offline_and_corrupt_are_one_line(tiny_if: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    proc = run_cli("run", "--prior", "deepfloyd-if", *QUICK)
    assert_one_line_error(proc, "DeepFloyd IF model 'DeepFloyd/IF-I-XL-v1.0'", "licence", "huggingface-cli login")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_if, broken)
    shutil.rmtree(broken / "text_encoder")
    proc = run_cli("run", "--prior", "deepfloyd-if", "--prior.model", str(broken), *QUICK)
    assert_one_line_error(proc, f"DeepFloyd IF model '{broken}'", "'text_encoder' folder is missing")
    shutil.copytree(tiny_if / "text_encoder", broken / "text_encoder")
    (broken / "unet" / "config.json").write_text("{not json")
    proc = run_cli("run", "--prior", "deepfloyd-if", "--prior.model", str(broken), *QUICK)
    assert_one_line_error(proc, f"'{broken}'")


def test_condition_images() -> None:
    """Depth is brighter near the camera; a ball's normal at the centre of the image faces the viewer."""
    cams = orbit_cameras(torch.zeros(1), torch.zeros(1), torch.full((1,), 2.8), torch.full((1,), 40.0), 64, 64)
    v, f, c = resolve_prompt("a red ball")[0].to_torch("cpu")
    out = render_mesh(v, f, c, cams)
    depth = render_condition(out, cams, ("depth",), 64)
    normal = render_condition(out, cams, ("normal",), 64)
    assert depth.shape == normal.shape == (1, 3, 64, 64)
    assert depth[0, 0, 32, 32] > depth[0, 0, 32, 52] > 0 and depth[0, 0, 0, 0] == 0
    assert torch.allclose(normal[0, :, 32, 32], torch.tensor([0.5, 0.5, 1.0]), atol=0.08)
    assert normal[0, 0, 32, 50] > 0.6  # right of centre the surface turns right
    assert render_condition(out, cams, ("rgb", "alpha", "depth", "normal"), 32).shape == (1, 8, 32, 32)


def test_controlnet_conditions_the_prior(tiny_sd: dict, tiny_controlnet: Path) -> None:
    prior = StableDiffusionPrior(StableDiffusionConfig(model=str(tiny_sd["sd1"]), controlnet=str(tiny_controlnet)), None, "cpu")
    cams = orbit_cameras(torch.zeros(2), torch.tensor([0.0, 90.0]), torch.full((2,), 2.8), torch.full((2,), 40.0), 64, 64)
    v, f, c = resolve_prompt("a blue mug")[0].to_torch("cpu")
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t, emb = torch.tensor([500] * 4), prior.embed(["a mug", "a mug", "", ""])
    plain = prior.predict_eps(x, t, emb)
    prior.observe_render(render_mesh(v, f, c, cams), cams)
    conditioned = prior.predict_eps(x, t, emb)
    assert not torch.allclose(plain, conditioned)
    assert not torch.allclose(conditioned[0], conditioned[1])  # each view reads its own render (cond and uncond rows repeat it)


def test_controlnet_runs_five_steps(tiny_sd: dict, tiny_controlnet: Path, tmp_path: Path) -> None:
    flags = ["run", "--prior", "sd", "--prior.model", str(tiny_sd["sd1"]), "--out", str(tmp_path), *QUICK]
    for condition in (["normal"], ["depth"]):
        proc = run_cli(*flags, "--prior.controlnet", str(tiny_controlnet), "--prior.controlnet-condition", *condition)
        assert proc.returncode == 0, proc.stderr
        rows = _rows(proc)
        assert len(rows) == 5 and all(r["grad_norm"] > 0 for r in rows)


def test_controlnet_errors_are_one_line(tiny_sd: dict, tiny_controlnet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    flags = ["run", "--prior", "sd", "--prior.model", str(tiny_sd["sd1"]), "--out", str(tmp_path), *QUICK]
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    proc = run_cli(*flags, "--prior.controlnet", "lllyasviel/sd-controlnet-depth")
    assert_one_line_error(proc, "ControlNet 'lllyasviel/sd-controlnet-depth' is not in the local Hugging Face cache", "huggingface-cli download")
    proc = run_cli(*flags, "--prior.controlnet", str(tmp_path / "missing"))
    assert_one_line_error(proc, "ControlNet path", "does not exist")
    proc = run_cli(*flags, "--prior.controlnet", str(tiny_controlnet), "--prior.controlnet-condition", "depth", "alpha")
    assert_one_line_error(proc, f"ControlNet '{tiny_controlnet}' reads 3 condition channels", "makes 2")
    proc = run_cli(*flags, "--prior.controlnet", str(tiny_controlnet), "--prior.controlnet-condition", "colour")
    assert_one_line_error(proc, "unknown --prior.controlnet-condition colour")
    broken = tmp_path / "broken-controlnet"
    shutil.copytree(tiny_controlnet, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:500])
    assert_one_line_error(run_cli(*flags, "--prior.controlnet", str(broken)), f"ControlNet '{broken}'", "truncated")
