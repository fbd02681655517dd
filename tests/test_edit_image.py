"""`threedistill edit-image`: DDS on one toyworld render turns a red cube blue."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from support import assert_one_line_error, run_cli
from threedistill.core.cameras import orbit_cameras
from threedistill.export.images import read_image, save_image
from threedistill.priors.toyworld.prior import ToyworldConfig, ToyworldPrior
from threedistill.priors.toyworld.catalogue import resolve_prompt
from threedistill.core.cameras import OrbitSamplerConfig

SMALL = ["--prior", "toyworld", "--prior.resolution", "32", "--prior.num-references", "96", "--device", "cpu"]


def _red_cube_png(path: Path, size: int = 32) -> Path:
    prior = ToyworldPrior(ToyworldConfig(resolution=32), OrbitSamplerConfig(width=32, height=32))
    one = torch.ones(1)
    cams = orbit_cameras(one * 20, one * 30, one * 2.8, one * 40, size, size)
    render = prior.render_ground_truth(resolve_prompt("a red cube")[0], cams)
    return save_image(path, render.rgb[0])


def test_edit_image_turns_a_red_cube_blue(tmp_path: Path) -> None:
    """At the input's size (48 px, edited by a 32 px prior), and only where the cube is."""
    image = _red_cube_png(tmp_path / "red.png", 48)
    proc = run_cli("edit-image", str(image), "--source", "a red cube", "--target", "a blue cube", "--out", str(tmp_path / "edits"),
                   "--steps", "80", *SMALL)
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.strip().splitlines()[-1])
    for name in ("edited.png", "source.png", "comparison.png", "edit.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "edit.json").read_text())["target"] == "a blue cube"
    before, after = read_image(out / "source.png"), read_image(out / "edited.png")
    assert before.shape == after.shape == (3, 48, 48) and torch.equal(before, read_image(image))
    obj = (before.min(0).values < 0.9)  # the cube's pixels (the background is white)
    assert obj.float().mean() > 0.1
    r0, b0 = before[0][obj].mean(), before[2][obj].mean()
    r1, b1 = after[0][obj].mean(), after[2][obj].mean()
    assert r0 > b0 + 0.2, "the source is red"
    assert b1 > r1 + 0.2, f"the edit is blue: red {r1:.2f}, blue {b1:.2f}"
    assert float(after[:, ~obj].mean()) > 0.9, "the white background stays white"


def test_edit_image_bad_inputs_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("edit-image", str(tmp_path / "none.png"), "--source", "a", "--target", "b", *SMALL), "not found")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert_one_line_error(run_cli("edit-image", str(bad), "--source", "a red cube", "--target", "a blue cube", *SMALL), "cannot read image")
    image = _red_cube_png(tmp_path / "red.png")
    assert_one_line_error(run_cli("edit-image", str(image), "--source", "a red cube", "--target", "a unicorn", *SMALL), "unicorn")
    assert_one_line_error(run_cli("edit-image", str(image), "--target", "a blue cube", *SMALL), "--source")
