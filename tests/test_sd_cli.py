"""`threedistill run --prior sd` end to end on tiny SD-shaped models, and the offline error."""

import json
from pathlib import Path

import pytest

from support import KINDS, run_cli, run_cli_process


@pytest.mark.parametrize("kind", KINDS)
def test_run_on_a_tiny_model(kind: str, tiny_sd: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli(
        "run", "--prompt", "a corgi", "--prior", "sd", "--prior.model", str(tiny_sd[kind]), "--steps", "5",
        "--device", "cpu", "--out", str(tmp_path), "--log.no-progress", "--log.turntable-frames", "4",
        "--log.turntable-resolution", "32", "--sampler.batch-size", "2", "--representation.num-points", "500",
    )
    assert proc.returncode == 0, proc.stderr
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert run.parent.name == "a-corgi"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["prior"] == "sd" and metrics["steps"] == 5 and metrics["skipped_steps"] == 0
    assert (run / "export" / "splats.ply").exists() and (run / "checkpoints" / "last.pt").exists()


def test_offline_hub_model_is_one_line(tmp_path: Path) -> None:
    proc = run_cli_process(  # a fresh process: the hub reads HF_HUB_OFFLINE when it is imported
        "run", "--prompt", "a corgi", "--prior", "sd", "--prior.model", "stabilityai/stable-diffusion-2-1-base",
        "--out", str(tmp_path),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "stabilityai/stable-diffusion-2-1-base" in lines[0] and "--prior toyworld" in lines[0]
