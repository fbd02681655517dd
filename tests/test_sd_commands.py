"""Every command through the real diffusers code path, on tiny pipelines built from configs:
`run` with each objective, each representation and each preset, `resume`, `export` (with the
model gone), `animate`, `edit` (dds, in2n, a run folder) and `edit-image`, all with `--prior sd`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from support import SMALL_NERF
from threedistill.cli import main

QUICK = ["--device", "cpu", "--log.no-progress", "--log.turntable-frames", "2", "--log.turntable-resolution", "32",
         "--log.preview-every", "0", "--log.checkpoint-every", "0", "--mesh.resolution", "24", "--mesh.calibration-views", "3",
         "--mesh.calibration-resolution", "24", "--sampler.batch-size", "1"]
SMALL_GAUSSIANS = ["--representation.num-points", "300"]
NERF = [f"--representation.{k.replace('_', '-')}={v}" for k, v in SMALL_NERF.items()]


def _sd(model: Path) -> list[str]:
    return ["--prior", "sd", "--prior.model", str(model)]


def _run_dir(capsys: pytest.CaptureFixture) -> Path:
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def sd1(tiny_sd: dict[str, Path]) -> Path:
    return tiny_sd["sd1"]


@pytest.mark.parametrize("objective", ["sds", "vsd", "esd", "ism", "tsm", "csd", "csm", "bsd", "dsd"])
def test_run_each_objective(objective: str, sd1: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", *_sd(sd1), "--guidance", objective, "--steps", "2", *SMALL_GAUSSIANS, *QUICK,
                 "--log.export-formats", "splat", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    run = _run_dir(capsys)
    assert _metrics(run)["guidance"] == objective and (run / "export" / "splats.ply").exists()


@pytest.mark.parametrize("objective,flags", [
    ("sds", ["--prompts.perp-neg", "--guidance.image-term-weight", "0.01", "--guidance.sqrt-anneal"]),
    ("bsd", ["--guidance.auto", "--prompts.perp-neg"]),
    ("dsd", ["--prompts.perp-neg"]),
])
def test_run_perp_neg_hifa_and_x0_previews(objective: str, flags: list[str], sd1: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    assert main(["run", *_sd(sd1), "--guidance", objective, *flags, "--steps", "2", *SMALL_GAUSSIANS, *QUICK,
                 "--log.preview-every", "2", "--log.x0-previews", "--log.export-formats", "splat", "--out", str(tmp_path)]) == 0, \
        capsys.readouterr().err
    width, height = Image.open(_run_dir(capsys) / "previews" / "step-000002.png").size
    assert height > width  # one training view above its decoded x0 estimate


@pytest.mark.parametrize("representation,flags", [("nerf", NERF), ("mesh", ["--representation.init-subdivisions", "2"])])
def test_run_each_representation(representation: str, flags: list[str], sd1: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", *_sd(sd1), "--representation", representation, *flags, "--steps", "2", *QUICK,
                 "--log.export-formats", "glb", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    assert (_run_dir(capsys) / "export" / "mesh.glb").exists()


@pytest.mark.parametrize("preset,steps", [("dreamfusion", 2), ("magic3d", 3), ("prolificdreamer", 6), ("dreamgaussian", 12),
                                          ("hifa", 2), ("stabledreamer", 4), ("quick", 2), ("toyworld-sds", 2)])
def test_run_each_preset(preset: str, steps: int, sd1: Path, tiny_if: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    flags = NERF if preset in ("dreamfusion", "magic3d", "prolificdreamer", "hifa") else SMALL_GAUSSIANS
    config = preset
    if preset == "stabledreamer":  # its geometry stage runs on IF: the shipped preset with a tiny IF stage-I model
        data = yaml.safe_load(Path("threedistill/configs/stabledreamer.yaml").read_text())
        data["stages"][0]["prior"] = {"model": str(tiny_if)}
        config = str(tmp_path / "stabledreamer.yaml")
        Path(config).write_text(yaml.safe_dump(data))
    assert main(["run", "--config", config, *_sd(sd1), *flags, "--steps", str(steps), *QUICK, "--log.export-formats", "glb",
                 "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    metrics = _metrics(_run_dir(capsys))
    assert metrics["prior"] == "sd" and metrics["steps"] >= 1
    if preset == "stabledreamer":
        assert [s["prior"] for s in metrics["stages"]] == ["deepfloyd-if", "sd"]


def test_the_4d_preset_with_an_image_and_a_video_model(sd1: Path, tiny_t2v: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    preset = yaml.safe_load(Path("threedistill/configs/4d-gaussians.yaml").read_text())
    preset["stages"][1]["prior"] = {"model": str(tiny_t2v), "frames": 3, "resolution": 32}  # the video stage's model
    path = tmp_path / "4d.yaml"
    path.write_text(yaml.safe_dump(preset))
    assert main(["run", "--config", str(path), *_sd(sd1), *SMALL_GAUSSIANS, "--steps", "3", *QUICK, "--log.export-formats", "video",
                 "--out", str(tmp_path), "--prompt", "a corgi running"]) == 0, capsys.readouterr().err
    metrics = _metrics(_run_dir(capsys))
    assert [s["prior"] for s in metrics["stages"]] == ["sd", "video-sd"]


def test_resume_export_after_the_model_is_gone_and_animate(tiny_sd: dict[str, Path], tiny_t2v: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_sd["sd1"], model)
    assert main(["run", *_sd(model), "--guidance", "vsd", "--steps", "2", *SMALL_GAUSSIANS, *QUICK, "--log.export-formats", "splat",
                 "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    run = _run_dir(capsys)
    assert main(["resume", str(run)]) == 0
    capsys.readouterr()
    assert main(["animate", str(run), "--prompt", "a corgi running", "--prior.model", str(tiny_t2v), "--prior.frames", "3",
                 "--prior.resolution", "32", "--guidance", "sds", "--steps", "2", *QUICK, "--log.export-formats", "video",
                 "--out", str(tmp_path / "animated")]) == 0, capsys.readouterr().err
    assert (_run_dir(capsys) / "export" / "clips.mp4").exists()
    shutil.rmtree(model)  # the Stable Diffusion weights are gone: export reads the checkpoint alone
    (run / "export" / "splats.ply").unlink()
    assert main(["export", str(run), "--format", "splat", "--format", "glb", "--mesh-resolution", "24"]) == 0, capsys.readouterr().err
    assert (run / "export" / "splats.ply").exists() and (run / "export" / "mesh.glb").exists()
    capsys.readouterr()
    assert main(["resume", str(run)]) == 2  # resuming needs the model: one line naming it
    assert str(model) in capsys.readouterr().err


@pytest.fixture(scope="module")
def mug_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scene") / "mug"
    assert main(["toyworld", "scene", "a red mug", str(out), "--views", "6", "--resolution", "64"]) == 0
    return out


def test_edit_a_scene_with_dds(sd1: Path, mug_scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["edit", "--scene", str(mug_scene), "--source", "a red mug", "--target", "a blue mug", *_sd(sd1),
                 "--representation", "gaussians", *SMALL_GAUSSIANS, "--reconstruct-steps", "2", "--steps", "2", *QUICK,
                 "--log.export-formats", "splat", "glb", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    run = _run_dir(capsys)
    metrics = _metrics(run)
    assert [s["guidance"] for s in metrics["stages"]] == ["photometric", "scene-dds"] and metrics["prior"] == "sd"
    assert (run / "export" / "splats.ply").exists() and (run / "export" / "mesh.glb").exists()
    assert main(["edit", "--scene", str(run), "--source", "a blue mug", "--target", "a green mug", *_sd(sd1), "--steps", "2",
                 *QUICK, "--log.export-formats", "splat", "--out", str(tmp_path / "again")]) == 0, capsys.readouterr().err
    edited = _metrics(_run_dir(capsys))
    assert edited["guidance"] == "scene-dds" and "stages" not in edited  # a run folder is edited without reconstruction


def test_edit_a_scene_with_in2n(tiny_ip2p: Path, mug_scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["edit", "--scene", str(mug_scene), "--target", "a blue mug", "--method", "in2n", "--guidance.model", str(tiny_ip2p),
                 "--guidance.steps", "2", "--guidance.update-every", "1", "--representation", "gaussians", *SMALL_GAUSSIANS,
                 "--reconstruct-steps", "2", "--steps", "2", *QUICK, "--log.export-formats", "splat",
                 "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    assert _metrics(_run_dir(capsys))["guidance"] == "in2n"


def test_edit_image(sd1: Path, mug_scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = mug_scene / "images" / "frame_00000.png"
    assert main(["edit-image", str(image), "--source", "a red mug", "--target", "a blue mug", *_sd(sd1), "--steps", "2",
                 "--device", "cpu", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    from threedistill.export.images import read_image

    assert read_image(_run_dir(capsys) / "edited.png").shape == read_image(image).shape, "the input's size"
