"""`threedistill edit --method latent-dds` (ED-NeRF, scene/latent.py): a NeRF of the prior's latent image fitted to
cached encodings, edited by DDS without the VAE, then an RGB NeRF distilled from its decoded renders. End to end on a
tiny SD pipeline, on toyworld-sd and on toyworld's exact prior (its 'latent' is the image)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from support import SMALL_NERF, run_cli, assert_one_line_error
from threedistill.cli import main
from threedistill.engine.run import Run
from threedistill.core.cameras import OrbitSamplerConfig, scene_cameras
from threedistill.core.objective import StageContext
from threedistill.priors.base import PRIORS
from threedistill.priors.prompts import PromptEmbedder
from threedistill.priors.toyworld_sd.prior import ToyworldSDConfig
from threedistill.representations.nerf import NeRF, NeRFConfig
from threedistill.scene.latent import LatentDDSConfig, LatentDDSObjective, encode_views, latent_cameras
from threedistill.scene.loading import Scene
from threedistill.scene.objectives import SceneDDSConfig, SceneDDSObjective

QUICK = ["--device", "cpu", "--log.no-progress", "--log.turntable-frames", "2", "--log.turntable-resolution", "32",
         "--log.preview-every", "2", "--log.checkpoint-every", "0", "--log.log-every", "1", "--log.eval-views", "4",
         "--mesh.resolution", "24", "--mesh.calibration-views", "3", "--mesh.calibration-resolution", "24",
         "--sampler.batch-size", "2", "--log.export-formats", "glb", "video"]
NERF = [f"--representation.{k.replace('_', '-')}={v}" for k, v in SMALL_NERF.items()]
EDIT = ["edit", "--source", "a red mug", "--target", "a blue mug", "--method", "latent-dds", *NERF, *QUICK]


@pytest.fixture(scope="module")
def mug_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scene") / "mug"
    assert main(["toyworld", "scene", "a red mug", str(out), "--views", "6", "--resolution", "64"]) == 0
    return out


@pytest.fixture(scope="module")
def toyworld_sd() -> Any:
    return PRIORS["toyworld-sd"](ToyworldSDConfig(), OrbitSamplerConfig(), "cpu")


def _run_dir(capsys: pytest.CaptureFixture) -> Path:
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def _check_latent_run(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    assert [s["guidance"] for s in metrics["stages"]] == ["latent-fit", "latent-dds", "latent-distill"]
    assert [s["stage"] for s in metrics["stages"]] == ["reconstruct", "edit", "distill"]
    assert (run / "export" / "mesh.glb").exists() and (run / "export" / "turntable.mp4").exists()
    return metrics


def _errors(run: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def test_latent_edit_on_toyworld_sd_fits_the_encodings_and_is_scored(mug_scene: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    assert main([*EDIT, "--scene", str(mug_scene), "--prior", "toyworld-sd", "--reconstruct-steps", "60", "--steps", "2",
                 "--distill-steps", "2", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    run = _run_dir(capsys)
    metrics = _check_latent_run(run)
    assert metrics["prior"] == "toyworld-sd" and 0.0 <= metrics["mask_iou"] <= 1.0 and metrics["psnr"] > 0
    assert "psnr" not in metrics["stages"][0], "a latent stage is not scored: its renders are not RGB"
    latent = _errors(run, "latent_error")
    assert len(latent) == 60 and sum(latent[-10:]) < 0.75 * sum(latent[:10]), "the latent field fits the encodings"
    assert _errors(run, "anchor_alpha") and _errors(run, "rgb_error")  # the edit's anchors, the distillation
    config = (run / "config.yaml").read_text()
    assert "latent_channels: 4" in config and "latent-distill" in config
    resumed = Run.resume(run).trainer  # the decoded views come back from the checkpoint (the latent field is gone)
    assert resumed.stage.label == "distill" and resumed.objective.images.shape == (6, 3, 64, 64)


def test_latent_edit_on_a_tiny_sd_pipeline(tiny_sd: dict[str, Path], mug_scene: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    assert main([*EDIT, "--scene", str(mug_scene), "--prior", "sd", "--prior.model", str(tiny_sd["sd1"]), "--reconstruct-steps", "2",
                 "--steps", "2", "--distill-steps", "2", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    metrics = _check_latent_run(_run_dir(capsys))
    assert metrics["prior"] == "sd" and "psnr" not in metrics  # no ground truth on SD


def test_latent_edit_on_toyworlds_exact_prior_renders_the_image(mug_scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*EDIT, "--scene", str(mug_scene), "--prior", "toyworld", "--prior.resolution", "32", "--prior.num-references", "16",
                 "--reconstruct-steps", "2", "--steps", "2", "--distill-steps", "2", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    run = _run_dir(capsys)
    assert _check_latent_run(run)["psnr"] > 0
    assert "latent_channels: 3" in (run / "config.yaml").read_text(), "pixel space: the 'latent' is the RGB image"


class _Counter:
    """Wraps a module's method and counts its calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        self.calls = 0
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def test_the_latent_edit_step_calls_the_unet_and_no_vae(toyworld_sd: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    scene = Scene(images=torch.rand(4, 3, 64, 64, generator=g), cameras=scene_cameras(4, 64), masks=None, name="s", source=Path("."))
    field = NeRF(NeRFConfig(latent_channels=4, **SMALL_NERF), g)  # type: ignore[arg-type]
    bg = torch.ones(3)
    context = StageContext("a blue mug", "", torch.device("cpu"), scene, render=lambda c: field.render(c, bg),
                           embed=lambda text: PromptEmbedder(toyworld_sd, text))
    encoder = _Counter(monkeypatch, toyworld_sd.vae, "encode")
    decoder = _Counter(monkeypatch, toyworld_sd.vae, "decode")
    unet = _Counter(monkeypatch, toyworld_sd.unet, "forward")
    emb = PromptEmbedder(toyworld_sd, "a blue mug")
    views = torch.tensor([0, 2])

    def step(objective: Any, cams: Any) -> None:
        cams.view = views
        out = field.render(cams, bg)
        encoder.calls = decoder.calls = unet.calls = 0
        objective(out.rgb, cams, emb.for_cameras(cams), 1, out).loss.backward()

    latent = LatentDDSObjective(LatentDDSConfig(source_prompt="a red mug"), toyworld_sd, 10, g)
    latent.prepare(context)
    assert latent.source_x0 is not None and latent.source_x0.shape == (4, 4, 16, 16)  # the source field's latent renders
    step(latent, latent_cameras(toyworld_sd, scene.cameras[views]))
    assert encoder.calls == 0 and decoder.calls == 0 and unet.calls >= 1
    assert field.albedo_head.weight.grad is not None and field.refiner is not None
    assert any(p.grad is not None for p in field.refiner.parameters())

    rgb_field = NeRF(NeRFConfig(**SMALL_NERF), g)  # type: ignore[arg-type]
    context.render = lambda c: rgb_field.render(c, bg)
    field = rgb_field
    rgb = SceneDDSObjective(SceneDDSConfig(source_prompt="a red mug"), toyworld_sd, 10, g)
    rgb.prepare(context)
    step(rgb, scene.cameras[views])
    assert encoder.calls >= 1, "RGB DDS encodes every render (so the counter sees the encoder)"


def test_the_encodings_are_made_once_and_cached(toyworld_sd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from threedistill.scene.latent import encoding_cache

    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    cache = encoding_cache(tmp_path)
    encoder = _Counter(monkeypatch, toyworld_sd.vae, "encode")
    first = encode_views(toyworld_sd, images, cache)
    assert encoder.calls >= 1 and first.shape == (3, 4, 16, 16)
    encoder.calls = 0
    assert torch.equal(encode_views(toyworld_sd, images, cache), first) and encoder.calls == 0
    assert len(list((tmp_path / "latents").glob("*.pt"))) == 1
    images[0, 0, 0, 0] += 0.5  # other images: encoded anew
    encode_views(toyworld_sd, images, cache)
    assert encoder.calls >= 1


def test_a_latent_field_starts_as_its_volume_render_and_has_no_mesh() -> None:
    g = torch.Generator().manual_seed(0)
    field = NeRF(NeRFConfig(latent_channels=4, **SMALL_NERF), g)  # type: ignore[arg-type]
    cams = scene_cameras(2, 8)
    with torch.no_grad():
        out = field.render(cams, torch.ones(3))
        assert field.latent_background is not None
        plain = field._render_volume(cams, field.latent_background)
    assert out.rgb.shape == (2, 4, 8, 8) and torch.allclose(out.rgb, plain.rgb), "the refiner starts as the identity"
    assert field.as_field() is None
    rgb = NeRF(NeRFConfig(**SMALL_NERF), torch.Generator().manual_seed(5))  # type: ignore[arg-type]
    rgb.continue_from(field)  # the distilled RGB field keeps the latent field's geometry
    assert torch.equal(rgb.density_head.weight, field.density_head.weight) and rgb.albedo_head.weight.shape[0] == 3


@pytest.mark.parametrize("args,needle", [
    (["--prior", "toyworld-video"], "latent image"),
    (["--prior", "toyworld", "--representation", "gaussians"], "latent NeRF"),
    (["--prior", "toyworld", "--distill-steps", "0"], "--distill-steps"),
])
def test_bad_latent_edits_are_one_line_errors(args: list[str], needle: str, mug_scene: Path, tmp_path: Path) -> None:
    proc = run_cli("edit", "--scene", str(mug_scene), "--source", "a red mug", "--target", "a blue mug", "--method", "latent-dds",
                   *args, "--out", str(tmp_path))
    assert_one_line_error(proc, needle)
    assert not any(tmp_path.iterdir()), "no run folder"


def test_latent_edit_needs_a_source_and_a_latent_field_needs_a_latent_objective(mug_scene: Path, tmp_path: Path) -> None:
    proc = run_cli("edit", "--scene", str(mug_scene), "--target", "a blue mug", "--method", "latent-dds", "--out", str(tmp_path))
    assert_one_line_error(proc, "--source")
    proc = run_cli("run", "--prompt", "a red mug", "--prior", "toyworld", "--representation", "nerf", "--representation.latent-channels", "4",
                   "--steps", "2", "--out", str(tmp_path))
    assert_one_line_error(proc, "latent-channels")
    proc = run_cli("run", "--prompt", "a red mug", "--prior", "toyworld", "--guidance", "latent-distill", "--sampler.scene",
                   str(mug_scene), "--steps", "2", "--out", str(tmp_path))
    assert_one_line_error(proc, "follows a latent stage")
    assert not any(tmp_path.iterdir())
