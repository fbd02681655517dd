"""--log.tensorboard: scalars, preview images and the turntable video in RUN_DIR/tensorboard, read back
with TensorBoard's own reader; and the one-line error naming the extra when a dependency is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from support import TINY_FLAGS


def test_tensorboard_scalars_previews_and_turntable(finished_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/t_mean", "train/num_points", "eval/mask_iou", "eval/psnr"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 7))
    assert abs(events.Scalars("eval/mask_iou")[0].value - json.loads((finished_run / "metrics.json").read_text())["mask_iou"]) < 1e-5
    previews = events.Images("previews")
    assert [p.step for p in previews] == [3, 6] and previews[0].encoded_image_string.startswith(b"\x89PNG")
    turntable = events.Images("turntable")
    assert len(turntable) == 1 and turntable[0].encoded_image_string.startswith(b"GIF8")
    assert turntable[0].encoded_image_string == (finished_run / "export" / "turntable.gif").read_bytes()


def test_missing_extras_are_one_line_naming_the_extra(tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    """As if the extras were not installed (their modules cannot be imported): one line naming the
    extra, exit 2, and no run folder."""
    from threedistill.cli import main

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "viser", None)
    for argv, needle in ((["run", *TINY_FLAGS, "--log.tensorboard"], "--log.tensorboard needs the optional package 'tensorboard'"),
                         (["run", *TINY_FLAGS, "--viewer"], "the viewer needs the optional package 'viser'"),
                         (["view", str(finished_run)], "the viewer needs the optional package 'viser'")):
        assert main([*argv, "--out", str(tmp_path / "out")] if argv[0] == "run" else argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "pip install 'threedistill[" in err, err
    assert not (tmp_path / "out").exists(), "the errors come before any work"
