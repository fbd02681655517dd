"""Dynamic (4D) runs: clips, --dynamic, per-frame metrics and exports, animate, video-sd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from support import TINY_FLAGS, run_for, trainer_for
from threedistill.core.cameras import heldout_cameras
from threedistill.cli import main
from threedistill.config import parse_run_args
from threedistill.core.errors import UserError
from threedistill.core.motion import MotionConfig, amplify_motion, clips_of
from threedistill.representations.deformation import Deformed
from threedistill.engine.run_dir import new_run_dir
from threedistill.engine.plan import parse_run_plan, single_stage
from threedistill.engine.validate import validate_plan
from threedistill.engine.run import Run

from support import build_tiny_t2v

FRAMES = ["--prior.frames", "3", "--prior.resolution", "16", "--prior.num-references", "12", "--prior.uncond-references-per-object", "2"]
DYNAMIC = [*TINY_FLAGS, "--dynamic", *FRAMES, "--prompt", "a bouncing ball", "--log.export-formats", "splat", "video", "sequence",
           "--mesh.resolution", "32", "--mesh.calibration-views", "0", "--mesh.level", "0.3"]


def test_clips_are_view_major_with_frame_times() -> None:
    cams = heldout_cameras(2, 8, 8)
    clips = clips_of(cams, 3, MotionConfig())
    assert len(clips) == 6 and clips.time.tolist() == [0.0, 0.5, 1.0, 0.0, 0.5, 1.0]
    assert torch.equal(clips.c2w[:3], cams.c2w[[0, 0, 0]]) and torch.equal(clips.c2w[3:], cams.c2w[[1, 1, 1]])
    moving = clips_of(cams, 3, MotionConfig(camera_motion="orbit", orbit_degrees=30.0))
    assert torch.allclose(moving.azimuth[:3] - cams.azimuth[0], torch.tensor([-15.0, 0.0, 15.0]))


def test_motion_amplification_scales_deviations_from_the_clip_mean() -> None:
    x = torch.zeros(1, 2, 1, requires_grad=True)
    clip = x * 1.0
    amplify_motion(clip, 3.0)
    (clip * torch.tensor([[[1.0], [3.0]]])).sum().backward()
    assert x.grad.flatten().tolist() == [2.0 + 3.0 * -1.0, 2.0 + 3.0 * 1.0]


def test_dynamic_flag_picks_the_video_prior_and_round_trips() -> None:
    names, cfg = parse_run_args([*TINY_FLAGS, "--dynamic", "--prompt", "a bouncing ball"])
    assert names.prior == "toyworld-video" and cfg.dynamic
    plan = parse_run_plan(["--config", "threedistill/configs/4d-gaussians.yaml", "--prior", "toyworld"])
    assert [(s.names.prior, s.cfg.dynamic) for s in plan] == [("toyworld", False), ("toyworld-video", True)]


def test_static_prior_without_dynamic_is_refused(tmp_path: Path) -> None:
    names, cfg = parse_run_args([*TINY_FLAGS, "--prior", "toyworld-video", *FRAMES, "--prompt", "a bouncing ball", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="add --dynamic"):
        validate_plan(single_stage(names, cfg))


def test_dynamic_run_scores_every_frame_and_exports_a_sequence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", *DYNAMIC, "--out", str(tmp_path)]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((run / "metrics.json").read_text())
    assert [f["time"] for f in metrics["per_frame"]] == [0.0, 0.5, 1.0]
    assert metrics["mask_iou"] == pytest.approx(sum(f["mask_iou"] for f in metrics["per_frame"]) / 3)
    exported = {p.name for p in (run / "export").iterdir()}
    assert {f"splats_t{i:03d}.ply" for i in range(3)} <= exported and {f"mesh_t{i:03d}.glb" for i in range(3)} <= exported
    assert not any(name.startswith("splats_t003") for name in exported)
    assert {"splats.ply", "turntable.mp4", "clips.mp4"} <= exported
    resumed = Run.resume(run).trainer
    assert isinstance(resumed.representation, Deformed) and resumed.frames == 3


def test_animate_starts_from_the_static_asset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", *TINY_FLAGS, "--prompt", "a bouncing ball", "--out", str(tmp_path / "static")]) == 0
    static = Path(capsys.readouterr().out.strip().splitlines()[-1])
    source = Run.resume(static).trainer
    assert main(["animate", str(static), "--prompt", "a bouncing ball", "--out", str(tmp_path), *TINY_FLAGS, *FRAMES,
                 "--steps", "2", "--log.export-formats", "video"]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    animated = Run.resume(run).trainer
    assert animated.cfg.dynamic and animated.names.prior == "toyworld-video"
    assert animated.representation.num_points == source.representation.num_points
    assert "animating" in (run / "log.txt").read_text()
    assert main(["animate", str(run), "--prompt", "a bouncing ball"]) == 2
    assert "already a dynamic run" in capsys.readouterr().err


def test_zero_motion_at_start_reproduces_the_static_asset(tmp_path: Path) -> None:
    names, cfg = parse_run_args([*DYNAMIC, "--out", str(tmp_path)])
    trainer = trainer_for(names, cfg, new_run_dir(tmp_path, "x", "sds", "gaussians"))
    cams = clips_of(heldout_cameras(2, 16, 16), 3, MotionConfig())
    out = trainer.representation.render(cams, trainer.background)
    static = trainer.representation.static().render(cams, trainer.background)
    assert torch.equal(out.rgb, static.rgb)


def test_tiny_text_to_video_pipeline_runs_three_dynamic_steps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = build_tiny_t2v(tmp_path / "t2v")
    no_prior = [f for i, f in enumerate(TINY_FLAGS) if not f.startswith("--prior") and not TINY_FLAGS[i - 1].startswith("--prior")]
    argv = ["run", "--prior", "video-sd", "--prior.model", str(model), "--prior.frames", "3", "--prior.resolution", "32", "--dynamic",
            *no_prior, "--steps", "3", "--log.export-formats", "video",
            "--out", str(tmp_path), "--prompt", "a corgi running"]
    assert main(argv) == 0, capsys.readouterr().err
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in rows)
    assert (run / "export" / "clips.mp4").exists()


def test_hybrid_objective_adds_per_frame_image_sds(tmp_path: Path) -> None:
    losses = {}
    for weight in ("0", "50"):
        names, cfg = parse_run_args([*DYNAMIC, "--out", str(tmp_path / weight), "--motion.image-weight", weight])
        trainer = trainer_for(names, cfg)
        assert (trainer.image_objective is not None) == (weight != "0")
        torch.manual_seed(0)
        losses[weight] = trainer.train_step()
    assert "image_loss" in losses["50"] and "image_loss" not in losses["0"]
    assert losses["50"]["loss"] > losses["0"]["loss"]


def test_a_failed_start_leaves_no_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "outputs"
    assert main(["run", *TINY_FLAGS, "--dynamic", "--prompt", "a red mug", "--out", str(out)]) == 2
    assert "unknown animated toyworld prompt" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_a_dynamic_stage_continues_the_motion_of_the_one_before(tmp_path: Path) -> None:
    preset = tmp_path / "two.yaml"
    preset.write_text("dynamic: true\nstages:\n  - {name: a, share: 0.5}\n  - {name: b, deformation: {lambda_time_l1: 0.5}}\n")
    plan = parse_run_plan(["--config", str(preset), *DYNAMIC, "--out", str(tmp_path)])
    run = run_for(plan[0].names, plan[0].cfg, new_run_dir(tmp_path, "x", "sds", "gaussians"), plan)
    first = run.trainer
    assert first.train()
    first.finish()
    second = run.next_stage()
    before, after = first.representation.state_dict(), second.representation.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(k.startswith("deformation.") and not torch.equal(v, trainer_for(plan[0].names, plan[0].cfg, tmp_path / "fresh").representation.state_dict()[k])
               for k, v in before.items())  # the motion it carries is the trained one, not a fresh field
