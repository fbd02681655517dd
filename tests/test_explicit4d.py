"""Explicit 4D (EG4D, PLA4D; threedistill/explicit4d): generated clips cached and reused, the photometric fit,
PLA4D's focal alignment, EG4D's refinement, and tiny end-to-end runs on toyworld-video and a tiny video-sd
pipeline (with a tiny SD image prior for the refinement)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from support import TINY_FLAGS
from threedistill.cli import main
from threedistill.config import pipeline_config
from threedistill.core.cameras import Cameras, OrbitSamplerConfig, ring_cameras
from threedistill.core.errors import UserError
from threedistill.core.objective import StageContext
from threedistill.core.types import RenderOutput
from threedistill.explicit4d.generate import GeneratedClips, generated_clips
from threedistill.explicit4d.losses import centroids, ssim, zoom
from threedistill.explicit4d.objective import Explicit4DObjective, ExplicitConfig
from threedistill.priors.prompts import PromptEmbedder
from threedistill.priors.toyworld.prior import render_ground_truth
from threedistill.priors.toyworld.catalogue import resolve_prompt
from threedistill.priors.toyworld.video import ToyworldVideoConfig, ToyworldVideoPrior

TINY_VIDEO = ["--prior.frames", "3", "--prior.resolution", "16", "--prior.num-references", "12",
              "--prior.uncond-references-per-object", "2"]
EXPLICIT = [*TINY_FLAGS, *TINY_VIDEO, "--prompt", "a bouncing ball", "--dynamic", "--pipeline", "explicit",
            "--guidance.views", "3", "--log.export-formats", "splat", "--log.checkpoint-every", "1"]


def _context(run_dir: Path, prior: ToyworldVideoPrior, views: Cameras) -> StageContext:
    return StageContext(prompt="a bouncing ball", negative_prompt="", device=torch.device("cpu"), scene=None,
                        render=lambda cams: (_ for _ in ()).throw(AssertionError("not rendered")),
                        embed=lambda text: PromptEmbedder(prior, text), views=views, run_dir=run_dir, log=lambda line: None)


def _tiny_prior() -> ToyworldVideoPrior:
    return ToyworldVideoPrior(ToyworldVideoConfig(frames=3, resolution=16, num_references=12), OrbitSamplerConfig())


def test_generated_clips_are_exact_samples_cached_in_the_run_folder_and_never_resampled(tmp_path: Path, monkeypatch) -> None:
    prior = _tiny_prior()
    views = ring_cameras(2, (10.0,), OrbitSamplerConfig(width=24, height=24))
    context = _context(tmp_path, prior, views)
    embed = PromptEmbedder(prior, "a bouncing ball").for_cameras
    first = generated_clips(context, prior, "a bouncing ball", embed, views, 3, 1, 0)
    assert not first.cached and first.clips.shape == (2, 3, 3, 24, 24) and first.masks.shape == (2, 3, 1, 24, 24)
    assert (tmp_path / "generated" / "contact_sheet.png").exists()
    truth = prior.render_ground_truth("a bouncing ball", _at_time(views[1:], 0.5))
    assert (first.clips[1, 1] - truth.rgb[0]).abs().max() < 2e-3  # the ball at t = 0.5 seen from camera 1 (fp16 cache)
    assert first.masks[1, 1].sum() > 0 and centroids(first.masks[1, 1:2])[0, 1] < centroids(first.masks[1, 0:1])[0, 1]  # it rose
    monkeypatch.setattr(ToyworldVideoPrior, "sample_clips", lambda *a, **k: pytest.fail("resampled"))
    again = generated_clips(context, prior, "a bouncing ball", embed, views, 3, 1, 0)
    assert again.cached and torch.equal(again.clips, first.clips) and torch.equal(again.masks, first.masks)


def _at_time(cams: Cameras, time: float) -> Cameras:
    cams = cams[torch.arange(len(cams))]
    cams.time = torch.full((len(cams),), time)
    return cams


def test_focal_alignment_recovers_the_focal_length_of_a_clip() -> None:
    """A mug seen at 34 degrees (the 'generated' clip) and rendered at 40: the learnt focal scale finds 34."""
    mug = resolve_prompt("a red mug")[0]
    sampler = OrbitSamplerConfig(width=48, height=48)
    cams = ring_cameras(2, (20.0,), sampler)
    narrow = Cameras(cams.c2w, torch.deg2rad(torch.full((2,), 34.0)), 48, 48, cams.elevation, cams.azimuth, cams.distance, view=cams.view)
    target = render_ground_truth(mug, narrow, torch.device("cpu"))
    render = render_ground_truth(mug, cams, torch.device("cpu"))
    objective = Explicit4DObjective(ExplicitConfig(views=2, focal_alignment=True, focal_lr=0.02, lambda_ssim=0.0),
                                    prior=None, total_steps=200, generator=torch.Generator())  # type: ignore[arg-type]
    objective.generated = GeneratedClips(target.rgb[:, None], target.alpha[:, None])
    objective.fov_deg = 40.0
    for step in range(1, 201):
        out = objective(render.rgb, cams, None, step, RenderOutput(render.rgb, render.alpha, render.depth))
        out.loss.backward()
        objective.after_step(step)
    assert abs(objective.aligned_fov() - 34.0) < 0.5, objective.aligned_fov()


def test_zoom_is_a_focal_change_and_ssim_is_one_on_equal_images() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(zoom(x, torch.tensor(1.0)), x, atol=1e-5)
    assert abs(float(ssim(x, x)) - 1.0) < 1e-5 and float(ssim(x, torch.rand(2, 3, 16, 16))) < 0.5
    dot = torch.zeros(1, 1, 17, 17)
    dot[..., 10, 10] = 1.0  # 2 px right of and below the centre: twice the focal length puts it 4 px away
    moved = zoom(dot, torch.tensor(2.0))
    assert torch.allclose(centroids(moved), centroids(dot) * 2.0, atol=0.02)


def test_the_explicit_pipeline_fits_refines_and_resumes_on_toyworld_video(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["run", *EXPLICIT, "--steps", "8", "--guidance.motion-alignment", "1", "--guidance.focal-alignment", "--out", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((run / "metrics.json").read_text())
    assert [s["stage"] for s in metrics["stages"]] == ["static", "fit", "refine"]
    assert metrics["guidance"] == "explicit-4d" and 0.0 <= metrics["mask_iou"] <= 1.0 and len(metrics["per_frame"]) == 3
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("refine" in r and r["refreshes"] >= 1 for r in rows) and any("motion" in r for r in rows)
    assert all("focal_scale" in r for r in rows if "l1" in r)
    log = (run / "log.txt").read_text()
    assert log.count("generate: sampled") == 1 and log.count("generate: read") == 2  # sampled once, then read by each stage
    assert "LPIPS" in log
    fit_checkpoint = sorted((run / "checkpoints").glob("fit-step-*.pt"))[0]
    assert main(["resume", str(run), "--checkpoint", str(fit_checkpoint)]) == 0, capsys.readouterr().err
    log = (run / "log.txt").read_text()
    assert log.count("generate: sampled") == 1 and log.count("generate: read") >= 3  # the resumed stage read the cache


def test_the_fit_loss_decreases(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    flags = [("30" if f == "6" and TINY_FLAGS[i - 1] == "--steps" else f) for i, f in enumerate(TINY_FLAGS)]
    argv = ["run", *flags, *TINY_VIDEO, "--guidance.coarse-to-fine", "0", "--prompt", "a bouncing ball", "--prior",
            "toyworld-video", "--guidance", "explicit-4d", "--guidance.views", "4", "--log.export-formats", "splat", "--out", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["l1"] + r["mask_l1"] for r in rows]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses


def test_the_explicit_pipeline_through_diffusers(tiny_t2v: Path, tiny_sd: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    """video-sd samples the clips with DDIM; the refinement's targets come from a (tiny) SD image prior."""
    argv = ["run", "--prior", "video-sd", "--prior.model", str(tiny_t2v), "--prior.frames", "2", "--prior.resolution", "32",
            "--dynamic", "--pipeline", "explicit", "--prompt", "a corgi running", "--guidance.views", "2",
            "--guidance.sampling-steps", "2", "--guidance.image-model", str(tiny_sd["sd1"]), "--guidance.refine-frames", "all",
            "--steps", "6", "--sampler.width", "32", "--sampler.height", "32", "--sampler.batch-size", "1",
            "--representation.num-points", "200", "--device", "cpu", "--log.no-progress", "--log.preview-every", "0",
            "--log.checkpoint-every", "0", "--log.log-every", "1", "--log.export-formats", "splat", "--out", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert (run / "generated" / "contact_sheet.png").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("refine" in r for r in rows)
    assert [s["prior"] for s in json.loads((run / "metrics.json").read_text())["stages"]] == ["video-sd"] * 3


@pytest.mark.parametrize("argv,message", [
    (["--prior", "toyworld", "--pipeline", "explicit"], "add --dynamic"),
    (["--prior", "toyworld", "--dynamic", "--pipeline", "explicit", "--config", "quick"], "drop --config"),
    (["--prior", "toyworld", "--dynamic", "--pipeline", "magic"], "unknown --pipeline"),
    (["--prior", "toyworld", "--guidance", "explicit-4d"], "cannot do; add --dynamic"),
    (["--prior", "toyworld", "--dynamic", "--pipeline", "explicit", "--guidance.refine-strength", "1.5"], "refine-strength"),
])
def test_bad_explicit_input_is_one_line_and_exit_2(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", *argv, "--prompt", "a bouncing ball", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())


def test_pipeline_names_the_preset() -> None:
    assert pipeline_config("explicit", None, True) == "eg4d" and pipeline_config(None, "quick", False) == "quick"
    with pytest.raises(UserError, match="add --dynamic"):
        pipeline_config("explicit", None, False)
