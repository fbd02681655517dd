"""tools/gpu_check.sh on a machine without a GPU: every part runs (and fails fast or skips), each is
recorded with its exit status and time, and the report is one markdown table naming every part, so
the one call a lent GPU machine gets is not spent on the script's own plumbing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("gsplat_build", "cuda_tests", "bench_render", "bench_prior", "main_job")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script does the real check (minutes)")
def test_gpu_check_runs_every_part_and_reports_them_without_a_gpu(tmp_path: Path) -> None:
    out = tmp_path / "check"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_INSTALL": "0"}
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = dict(line.split(maxsplit=1) for line in (out / "status.txt").read_text().splitlines())
    assert tuple(status) == PARTS
    assert status["cuda_tests"].startswith("0 ")  # the cuda-marked tests are collected and skip here
    assert all(not status[p].startswith("0 ") for p in ("gsplat_build", "bench_render", "bench_prior", "main_job"))  # no GPU
    report = (out / "gpu_check.md").read_text()
    assert report.startswith("GPU check (") and "available False" in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| part ")]
    for name in ("gsplat kernels", "cuda tests (`pytest -m cuda`)", "render", "SD prior, 512 px, B=4: SDS step", "main job on the GPU"):
        assert any(row.startswith(f"| {name}") for row in rows), (name, report)
    assert "skipped" in next(row for row in rows if row.startswith("| cuda tests"))
