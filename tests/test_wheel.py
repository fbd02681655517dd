"""Packaging: the built wheel, installed in a fresh virtual environment, works from any directory
(presets, prompt suites and the toyworld-sd model ship inside it), and a feature whose extra is not
installed says which extra to install."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import threedistill

REPO = Path(__file__).resolve().parent.parent


def _ok(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_from_any_directory(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _ok([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-w", str(dist), "-q"])
    wheel = next(dist.glob("threedistill-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"threedistill/configs/quick.yaml", "threedistill/prompts/toyworld.txt", "threedistill/viewer/live.py",
            "threedistill/priors/toyworld_sd/model/unet/diffusion_pytorch_model.safetensors"} <= names
    venv = tmp_path / "venv"
    _ok([sys.executable, "-m", "venv", str(venv)])
    pip, tool = venv / "bin" / "pip", venv / "bin" / "threedistill"
    _ok([str(pip), "install", "-q", "torch==2.13.0"])  # first, as the README says: the CPU build
    _ok([str(pip), "install", "-q", str(wheel)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": "", "THREEDISTILL_CACHE": str(tmp_path / "cache")}
    version = _ok([str(tool), "--version"], cwd=elsewhere, env=env)
    assert version.stdout.strip() == f"threedistill {threedistill.__version__}"
    run = _ok([str(tool), "run", "--config", "quick", "--prior", "toyworld", "--out", "out", "--log.no-progress"], cwd=elsewhere, env=env)
    run_dir = elsewhere / run.stdout.strip().splitlines()[-1]
    assert (run_dir / "metrics.json").exists() and (run_dir / "export" / "splats.ply").exists()
    import yaml

    preset = yaml.safe_load((REPO / "threedistill" / "configs" / "quick.yaml").read_text())
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["steps"] == preset["steps"], "the preset came from the wheel"
    # the [viewer] extra is not installed in this venv: one line naming it, exit 2
    view = subprocess.run([str(tool), "view", str(run_dir)], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300)
    assert view.returncode == 2 and view.stderr.strip().count("\n") == 0, view.stderr
    assert "pip install 'threedistill[viewer]'" in view.stderr and "Traceback" not in view.stderr
