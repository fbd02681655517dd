"""--log.tensorboard: scalars, preview images and the turntable video in RUN_DIR/tensorboard, read back
with TensorBoard's own reader; and the one-line error naming the extra when a dependency is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import TINY_FLAGS, assert_one_line_error


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


def _cli_without(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a Python where `module` cannot be imported (as if its extra were not installed)."""
    code = f"import sys; sys.modules[{module!r}] = None; from threedistill.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_missing_extras_are_one_line_naming_the_extra(tmp_path: Path, finished_run: Path) -> None:
    proc = _cli_without("tensorboard", "run", *TINY_FLAGS, "--log.tensorboard", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(proc, "--log.tensorboard", "pip install 'threedistill[tensorboard]'")
    assert not (tmp_path / "out").exists(), "no run folder: the error comes before any work"
    proc = _cli_without("viser", "view", str(finished_run), cwd=tmp_path)
    assert_one_line_error(proc, "the viewer", "pip install 'threedistill[viewer]'")
    proc = _cli_without("viser", "run", *TINY_FLAGS, "--viewer", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(proc, "the viewer", "pip install 'threedistill[viewer]'")
    assert not (tmp_path / "out").exists()
