"""One batch run inside a Ray worker: skip it when finished, resume it from its last checkpoint
when started, else start it in its stable folder; then a thumbnail and one report row.

This is the only place a batch trains, and it trains through the engine's own paths
(`api.run_plan` into the given folder, `api.resume` from last.pt), so a task retried after its
worker died, a run interrupted by SIGTERM (preemption) and a resubmitted batch all continue the
same way: from the last checkpoint, losing at most the steps since it (`log.checkpoint_every`).
A stop signal inside a step lets the step finish and checkpoints (core/interrupts.py); the task
then raises `Preempted`, which the batch retries (runner.py).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..core.atomic import append_text
from ..core.errors import RunStopped, UserError
from ..core.interrupts import raising_on_signals
from ..engine.callbacks import LoopCallback

THUMBNAIL = "thumbnail.png"
ATTEMPTS = "attempts.jsonl"
"""One line per task attempt on the run (pid, node, GPUs, time): retries and resumes are visible."""
SUMMARY_KEYS = ("prompt", "prior", "guidance", "representation", "steps", "skipped_steps", "seconds", "stages")
"""metrics.json fields that are not scores (the report gives the rest as metric columns)."""


class Preempted(Exception):
    """A stop signal ended the run with a checkpoint; the batch retries the task, which resumes it."""


@dataclass
class Job:
    """What a task gets (plain data, pickled to the worker)."""

    name: str
    prompt: str
    seed: int
    overrides: dict[str, Any]
    flags: list[str]
    run_dir: str
    threads: int = 1
    """torch threads: the task's CPUs, so runs sharing a node do not oversubscribe it."""


def run_state(run_dir: Path) -> str:
    """'finished' (metrics.json), 'started' (a checkpoint to resume) or 'new'."""
    if (run_dir / "metrics.json").is_file():
        return "finished"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "started"
    return "new"


def execute(job: Job, callbacks: Sequence[LoopCallback] = ()) -> dict[str, Any]:
    """Run (or skip, or resume) one batch run; its report row (report.py). Raises `Preempted` after a
    stop signal. `callbacks` watch the training (tune.py reports to Ray Tune)."""
    import torch

    torch.set_num_threads(max(1, job.threads))
    started, start = time.time(), time.perf_counter()
    run_dir = Path(job.run_dir)
    state = run_state(run_dir)
    placement = _placement()
    attempt = _record_attempt(run_dir, state, placement)
    resumed_from: Optional[int] = None
    row: dict[str, Any] = {"status": "skipped" if state == "finished" else "finished", "attempt": attempt, "started": started,
                           **placement}
    try:
        with raising_on_signals():
            if state != "finished":
                resumed_from = _train(job, run_dir, state, callbacks)
            make_thumbnail(run_dir)
    except KeyboardInterrupt:  # a signal outside a step: the engine saved what it could
        raise Preempted(f"{job.name} stopped by a signal; its checkpoint is kept") from None
    except (RunStopped, UserError) as exc:
        row.update(status="failed", error=str(exc))
    return {**row, "resumed_from": resumed_from, "wall_s": round(time.perf_counter() - start, 3),
            **metrics_columns(run_dir)}


def _train(job: Job, run_dir: Path, state: str, callbacks: Sequence[LoopCallback]) -> Optional[int]:
    """Resume from last.pt or start in `run_dir`; the step resumed from (None for a new run)."""
    from rich.console import Console

    from ..api import resume, run_plan
    from ..engine.checkpoint import load_checkpoint
    from ..engine.plan import parse_run_plan

    console = Console(stderr=True, soft_wrap=True)  # the worker's log (Ray's logs folder)
    if state == "started":
        resumed_from = int(load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"])
        result = resume(run_dir, callbacks=callbacks, console=console)
    else:
        resumed_from = None
        result = run_plan(parse_run_plan(job.flags, "threedistill batch"), run_dir=run_dir, callbacks=callbacks, console=console)
    if result.interrupted:
        raise Preempted(f"{job.name} stopped by a signal at a checkpoint")
    return resumed_from


def _placement() -> dict[str, Any]:
    """Where the task runs: node, pid and its GPUs (Ray's accelerator ids; 'cpu' without)."""
    gpus: list[str] = []
    try:
        import ray

        gpus = [str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]
    except Exception:  # noqa: BLE001 - outside Ray (tests, td.batch's own fallbacks): no accelerator ids
        pass
    return {"node": socket.gethostname(), "pid": os.getpid(), "gpu": ",".join(gpus) or "cpu"}


def _record_attempt(run_dir: Path, state: str, placement: dict[str, Any]) -> int:
    """Append this attempt to attempts.jsonl; its number (1 for the first task on this folder)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ATTEMPTS
    attempt = 1 + (len(path.read_text().splitlines()) if path.is_file() else 0)
    append_text(path, json.dumps({"attempt": attempt, "state": state, "time": time.time(), **placement}) + "\n")
    return attempt


def metrics_columns(run_dir: Path) -> dict[str, Any]:
    """A finished run's steps, own seconds and scalar scores (metrics.json); {} before it finishes."""
    from ..engine.run_dir import RunFolder

    metrics = RunFolder(run_dir).read_metrics()
    columns: dict[str, Any] = {k: metrics[k] for k in ("steps", "seconds") if k in metrics}
    columns.update({k: v for k, v in metrics.items() if k not in SUMMARY_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return columns


def make_thumbnail(run_dir: Path, views: int = 4, size: int = 96) -> Path:
    """RUN_DIR/thumbnail.png: the asset from `views` turntable cameras side by side (kept once made)."""
    import torch

    from ..api import load
    from ..core.cameras import turntable_cameras
    from ..export.images import image_grid, save_image

    path = run_dir / THUMBNAIL
    if path.is_file():
        return path
    run = load(run_dir, device="cpu")
    out = run.render(turntable_cameras(views, size, size))
    return save_image(path, image_grid(out.rgb.clamp(0, 1).cpu(), nrow=views))
