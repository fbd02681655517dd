"""Every objective reaches the issue's mask IoU on a symmetric toyworld object with its defaults.

Shortened to 300 steps (the defaults run 500) to keep the suite's time in check. Thresholds
are the issue's: 0.8 for sds, vsd, esd, ism and tsm (ism and tsm at their default toyworld
data noise, 4), 0.7 for csd and csm (at their default toyworld temperature, 100), 0.85 for bsd (at
its default toyworld temperature, 100) and dsd (issue 15).
docs/benchmarks.md has the full table over 3 prompts x 3 seeds.
"""

import json
from pathlib import Path

import pytest

from threedistill.cli import main

THRESHOLDS = {"sds": 0.8, "vsd": 0.8, "esd": 0.8, "ism": 0.8, "tsm": 0.8, "csd": 0.7, "csm": 0.7, "bsd": 0.85, "dsd": 0.85}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(THRESHOLDS))
def test_objective_converges_on_a_symmetric_object(name: str, tmp_path: Path) -> None:
    args = ["run", "--prior", "toyworld", "--prompt", "a red cube", "--guidance", name, "--steps", "300", "--out", str(tmp_path),
            "--log.no-progress", "--log.turntable-frames", "4", "--log.preview-every", "0", "--log.checkpoint-every", "0",
            "--log.export-formats", "splat"]
    assert main(args) == 0
    (metrics,) = tmp_path.rglob("metrics.json")
    m = json.loads(metrics.read_text())
    assert m["mask_iou"] >= THRESHOLDS[name], m
