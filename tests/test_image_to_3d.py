"""Image-to-3D (`threedistill run --image`): the reference view, zero123 through the production loader
(both public layouts), toyworld's identification of the object, Magic123's text prior, and the
one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from support import assert_one_line_error, build_tiny_zero123, run_cli
from threedistill.core.types import ReferenceImage
from threedistill.priors.diffusers.zero123 import Zero123Config, Zero123Prior
from threedistill.priors.toyworld.identify import identify_catalogue_object
from threedistill.reference.view import ReferenceConfig, read_reference, reference_camera

QUICK = ["--device", "cpu", "--log.no-progress", "--log.turntable-frames", "2", "--log.turntable-resolution", "32",
         "--log.preview-every", "0", "--log.checkpoint-every", "0", "--representation.num-points", "300",
         "--log.export-formats", "splat", "--log.log-every", "1", "--sampler.batch-size", "2"]


def _without(flags: list[str], *names: str) -> list[str]:
    """`flags` less each named flag and the value after it."""
    drop = {i + k for i, flag in enumerate(flags) if flag in names for k in (0, 1)}
    return [flag for i, flag in enumerate(flags) if i not in drop]


def _reference(path: Path) -> ReferenceImage:
    rgb, alpha = read_reference(path)
    return ReferenceImage(rgb[None], alpha[None], reference_camera(ReferenceConfig(), 64, 64))


def _rows(proc) -> list[dict]:
    run = Path(proc.stdout.strip().splitlines()[-1])
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_rgb_without_alpha_is_one_line_saying_how_to_make_one(duck_front: Path, tmp_path: Path) -> None:
    rgb = tmp_path / "photo.png"
    iio.imwrite(rgb, iio.imread(duck_front)[..., :3])
    proc = run_cli("run", "--image", str(rgb), "--prior", "toyworld", "--out", str(tmp_path), *QUICK)
    assert_one_line_error(proc, "photo.png' has no alpha channel", "RGBA PNG", "rembg")
    assert not (tmp_path / "photo").exists()
    empty = tmp_path / "empty.png"
    iio.imwrite(empty, np.zeros((8, 8, 4), np.uint8))
    assert_one_line_error(run_cli("run", "--image", str(empty), "--prior", "toyworld", *QUICK), "fully transparent")


def test_priors_that_need_an_image_or_a_prompt(tiny_zero123: Path, tiny_sd: dict, duck_front: Path) -> None:
    proc = run_cli("run", "--prior", "zero123", "--prior.model", str(tiny_zero123), *QUICK)
    assert_one_line_error(proc, "--prior zero123 is conditioned on an image", "--image PATH")
    proc = run_cli("run", "--image", str(duck_front), "--prior", "sd", "--prior.model", str(tiny_sd["sd1"]), *QUICK)
    assert_one_line_error(proc, "--prior sd guides the unseen views by text", "--prompt TEXT")


def test_toyworld_identifies_the_object_in_the_image(duck_front: Path, tmp_path: Path) -> None:
    assert identify_catalogue_object(_reference(duck_front), torch.device("cpu")) == "a yellow duck"
    from threedistill.cli import main

    mug = tmp_path / "mug.png"
    assert main(["toyworld", "render", "a red mug", str(mug), "--resolution", "64", "--azimuth", "30", "--elevation", "20"]) == 0
    reference = _reference(mug)
    reference.cameras = reference_camera(ReferenceConfig(elevation=20, azimuth=30), 64, 64)
    assert identify_catalogue_object(reference, torch.device("cpu")) == "a red mug"


def test_toyworld_image_run(duck_front: Path, tmp_path: Path) -> None:
    proc = run_cli("run", "--image", str(duck_front), "--prior", "toyworld", "--prior.num-references", "32",
                    "--prior.resolution", "32", "--sampler.width", "32", "--sampler.height", "32", "--log.eval-views", "4",
                    "--steps", "3", "--out", str(tmp_path), *QUICK)
    assert proc.returncode == 0, proc.stderr
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert run.parent.name == "duck"  # the folder is named after the image
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["prompt"] == "a yellow duck" and metrics["image"] == str(duck_front) and "mask_iou" in metrics
    rows = _rows(proc)
    assert rows[-1]["reference_mask"] < rows[0]["reference_mask"]


@pytest.mark.parametrize("layout", ["ashawkey", "kxic"])
def test_zero123_runs_five_steps(layout: str, tiny_zero123: Path, duck_front: Path, tmp_path: Path) -> None:
    model = tiny_zero123 if layout == "ashawkey" else build_tiny_zero123(tmp_path / "kxic", "kxic")
    proc = run_cli("run", "--image", str(duck_front), "--prior", "zero123", "--prior.model", str(model),
                    "--steps", "5", "--out", str(tmp_path), *QUICK)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc)
    assert len(rows) == 5 and all(r["grad_norm"] > 0 and "reference_rgb" in r for r in rows)


def test_zero123_conditioning(tiny_zero123: Path, duck_front: Path, tmp_path: Path) -> None:
    from threedistill.cli import main

    prior = Zero123Prior(Zero123Config(model=str(tiny_zero123)), None, "cpu")
    duck = _reference(duck_front)
    assert prior.condition_on_image(duck) == "the reference image"
    cams = reference_camera(ReferenceConfig(azimuth=180.0), 64, 64)
    pose = prior.relative_camera(reference_camera(ReferenceConfig(), 64, 64))
    assert torch.allclose(pose, torch.tensor([[0.0, 0.0, 1.0, 0.0]]), atol=1e-6)
    assert torch.allclose(prior.relative_camera(cams), torch.tensor([[0.0, 0.0, -1.0, 0.0]]), atol=1e-6)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 500])
    both = cams[torch.tensor([0, 0])]
    emb = prior.embed(["the reference image", ""])
    eps = prior.predict_eps(x, t, emb, both)
    mug = tmp_path / "mug.png"
    assert main(["toyworld", "render", "a red mug", str(mug), "--resolution", "64"]) == 0
    prior.condition_on_image(_reference(mug))
    eps_mug = prior.predict_eps(x, t, emb, both)
    assert not torch.allclose(eps[0], eps_mug[0]) and torch.allclose(eps[1], eps_mug[1])  # only the conditional row reads the image


def test_magic123_text_prior(tiny_zero123: Path, tiny_sd: dict, duck_front: Path, tmp_path: Path) -> None:
    flags = ["--image", str(duck_front), "--prior", "zero123", "--prior.model", str(tiny_zero123),
             "--reference.text-prior", "sd", "--reference.text-model", str(tiny_sd["sd1"]), "--steps", "2", "--out", str(tmp_path), *QUICK]
    assert_one_line_error(run_cli("run", *flags), "--reference.text-prior sd distils the prompt", "--prompt TEXT")
    proc = run_cli("run", *flags, "--prompt", "a rubber duck")
    assert proc.returncode == 0, proc.stderr
    assert all(r["text_loss"] > 0 for r in _rows(proc))


def test_zero123_offline_and_corrupt_are_one_line(tiny_zero123: Path, duck_front: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    proc = run_cli("run", "--image", str(duck_front), "--prior", "zero123", *QUICK)
    assert_one_line_error(proc, "Zero123 model 'ashawkey/zero123-xl-diffusers'", "huggingface-cli download")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_zero123, broken)
    shutil.rmtree(broken / "image_encoder")
    proc = run_cli("run", "--image", str(duck_front), "--prior", "zero123", "--prior.model", str(broken), *QUICK)
    assert_one_line_error(proc, f"Zero123 model '{broken}'", "'image_encoder' folder is missing")
    for f in (tiny_zero123 / "unet").glob("*.safetensors"):
        target = broken / "unet" / f.name
    shutil.copytree(tiny_zero123 / "image_encoder", broken / "image_encoder")
    target.write_bytes(b"junk")
    proc = run_cli("run", "--image", str(duck_front), "--prior", "zero123", "--prior.model", str(broken), *QUICK)
    assert_one_line_error(proc, f"Zero123 model '{broken}'")


def test_image_presets(tiny_zero123: Path, tiny_sd: dict, duck_front: Path, tmp_path: Path) -> None:
    """magic123 (zero123 + SD text prior, NeRF then mesh) on the tiny models; dreamgaussian-image
    (Gaussians then mesh texture) on toyworld, scored."""
    mesh = ["--log.export-formats", "glb", "--mesh.resolution", "24", "--mesh.calibration-views", "3", "--mesh.calibration-resolution", "24"]
    quick = _without(QUICK, "--log.export-formats", "--representation.num-points") + mesh
    nerf = ["--representation.levels", "4", "--representation.log2-table-size", "12", "--representation.max-resolution", "32",
            "--representation.hidden-dim", "16"]
    proc = run_cli("run", "--config", "magic123", "--image", str(duck_front), "--prompt", "a rubber duck", "--prior.model",
                    str(tiny_zero123), "--reference.text-model", str(tiny_sd["sd1"]), "--steps", "4", "--out", str(tmp_path), *quick, *nerf)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("run", "--config", "dreamgaussian-image", "--image", str(duck_front), "--prior", "toyworld",
                    "--prior.num-references", "32", "--prior.resolution", "32", "--sampler.width", "32", "--sampler.height", "32",
                    "--log.eval-views", "4", "--steps", "60", "--out", str(tmp_path), *quick, "--representation.num-points", "300")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((Path(proc.stdout.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert [s["stage"] for s in metrics["stages"]] == ["gaussians", "texture"] and metrics["prompt"] == "a yellow duck"


@pytest.mark.slow
def test_duck_from_its_front_view_recovers_the_back(duck_front: Path, tmp_path: Path) -> None:
    """The issue's acceptance run at the defaults (500 steps, ~75 s on 2 cores): `run --image <front view of the
    duck> --prior toyworld` matches the true duck's outline and its unseen back, which is not the front mirrored
    (measured: mask IoU 0.977, back PSNR 31.5 dB, the back against the front 14.5 dB)."""
    proc = run_cli("run", "--image", str(duck_front), "--prior", "toyworld", "--device", "cpu", "--log.no-progress",
                   "--log.export-formats", "splat", "--log.turntable-frames", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((Path(proc.stdout.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert metrics["prompt"] == "a yellow duck" and metrics["steps"] == 500
    assert metrics["mask_iou"] >= 0.85 and metrics["back_psnr"] >= 20.0, metrics
    assert metrics["back_psnr"] > metrics["back_front_psnr"] + 5.0, metrics


def test_toyworld_image_run_on_a_user_mesh(duck_front: Path, tmp_path: Path) -> None:
    """With --prior.mesh the image shows the user's mesh: the run distils it and is scored against it."""
    import trimesh

    mesh = tmp_path / "crate.ply"
    mesh.write_bytes(trimesh.creation.box().export(file_type="ply"))
    proc = run_cli("run", "--image", str(duck_front), "--prior", "toyworld", "--prior.mesh", str(mesh), "--prior.num-references", "32",
                   "--prior.resolution", "32", "--sampler.width", "32", "--sampler.height", "32", "--log.eval-views", "4",
                   "--steps", "3", "--out", str(tmp_path), *QUICK)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((Path(proc.stdout.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert metrics["prompt"] == "crate" and "mask_iou" in metrics  # scored against the user mesh
