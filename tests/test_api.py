"""The Python API (threedistill/api.py): td.run, td.load, Run.export / metrics / render, td.resume,
loop callbacks that watch and steer a run, and keywords parsed exactly as the command line's flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import threedistill as td
from support import tiny_run_kwargs
from threedistill.api import override_flags


def test_run_metrics_history_and_load(finished_run: Path) -> None:
    run = td.load(finished_run)
    assert run.finished and not run.interrupted
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert run.metrics == metrics and 0.0 <= run.metrics["mask_iou"] <= 1.0
    assert [row["step"] for row in run.history] == list(range(1, 7))
    assert run.config.steps == 6 and run.config.sampler.width == 32 and run.config.representation.num_points == 300
    assert {p.name for p in (finished_run / "export").iterdir()} >= {"splats.ply", "turntable.mp4", "mesh.glb", "mesh.ply"}


def test_render_and_export(finished_run: Path, tmp_path: Path) -> None:
    run = td.load(finished_run)
    out = run.render(td.turntable_cameras(3, 24, 16))
    assert out.rgb.shape == (3, 3, 16, 24) and out.alpha.shape == (3, 1, 16, 24)
    assert float(out.alpha.amax()) > 0.5, "the mug is in view"
    assert float((out.rgb - 1.0).abs().amax()) > 0.1, "not a blank (white) render"
    (finished_run / "export" / "mesh.ply").unlink()
    written = run.export(["ply"], mesh_resolution=32)
    assert written == [finished_run / "export" / "mesh.ply"] and written[0].stat().st_size > 0
    with pytest.raises(td.UserError, match="unknown export format 'gltf'"):
        run.export("gltf")


class Recorder(td.LoopCallback):
    """Counts the hooks and stops the run after `stop_at` steps."""

    def __init__(self, stop_at: int = 0) -> None:
        self.stop_at = stop_at
        self.calls: list[str] = []
        self.steps: list[int] = []

    def on_stage_start(self, trainer: Any) -> None:
        self.calls.append("stage_start")

    def on_step(self, trainer: Any, logs: dict[str, float]) -> None:
        self.steps.append(trainer.step)
        assert "loss" in logs and trainer.last_render is not None
        if trainer.step == self.stop_at:
            trainer.request_stop()

    def on_stage_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        self.calls.append("stage_end")

    def on_run_end(self, run_dir: Path, summary: dict[str, Any], exported: Any) -> None:
        self.calls.append("run_end")
        assert (run_dir / "metrics.json").exists() and any(p.name == "splats.ply" for p in exported)

    def close(self) -> None:
        self.calls.append("close")


def test_callbacks_watch_stop_and_resume(tmp_path: Path) -> None:
    """A callback sees every step; one that asks to stop ends the run as Ctrl-C does (a checkpoint,
    `interrupted`); td.resume finishes it with the parameters an uninterrupted run reaches."""
    kwargs = tiny_run_kwargs()
    kwargs["log"] = {**kwargs["log"], "export_formats": ["splat"]}  # type: ignore[dict-item]
    stopper = Recorder(stop_at=3)
    run = td.run(prompt="a red cube", out=tmp_path / "a", callbacks=[stopper], **kwargs)
    assert run.interrupted and not run.finished and stopper.steps == [1, 2, 3]
    assert stopper.calls == ["stage_start"], "the caller's callbacks are not closed by the run"
    watcher = Recorder()
    resumed = td.resume(run.run_dir, callbacks=[watcher])
    assert resumed.finished and watcher.steps == [4, 5, 6]
    assert watcher.calls == ["stage_start", "stage_end", "run_end"]
    whole = td.run(prompt="a red cube", out=tmp_path / "b", **kwargs)
    a, b = td.load(resumed.run_dir).loaded.representation, td.load(whole.run_dir).loaded.representation
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, msg=name, rtol=1e-4, atol=1e-5)


def test_bad_keywords_fail_before_work(tmp_path: Path) -> None:
    with pytest.raises(td.UserError, match="unknown guidance 'sdss'"):
        td.run(prompt="a red mug", guidance="sdss", out=tmp_path, **tiny_run_kwargs())
    with pytest.raises(td.UserError, match="num-poins"):
        td.run(prompt="a red mug", out=tmp_path, **{**tiny_run_kwargs(), "representation": {"num_poins": 3}})
    with pytest.raises(td.UserError, match="not in the toyworld catalogue|toyworld"):
        td.run(prompt="a purple giraffe", out=tmp_path, **tiny_run_kwargs())
    assert not any(tmp_path.iterdir()), "no run folder before the plan is valid"


def test_keywords_become_the_command_lines_flags() -> None:
    assert override_flags({"sampler": {"batch_size": 2}, "log.progress": False, "dynamic": True,
                           "guidance.max_step": [(0, 980), (0.5, 500)], "prior": {"name": "toyworld", "kappa": 50}}) == [
        "--sampler.batch-size", "2", "--log.no-progress", "--dynamic", "--guidance.max-step", "0", "980", "0.5", "500",
        "--prior", "toyworld", "--prior.kappa", "50"]
