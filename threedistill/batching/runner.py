"""The batch driver: one Ray task per unfinished run, a progress display, the report rewritten
as each run finishes (report.py).

Runs an earlier submission finished are reported as `skipped` without a task (and without
starting Ray when nothing is left). A task whose worker dies (a killed process, a lost node) or
that a stop signal ends (`task.Preempted`) is retried up to `max_retries` times; each retry
resumes the run from its last checkpoint (task.py). Ctrl-C on the driver cancels the tasks, whose
runs keep their last checkpoint, and the next submission resumes them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .cluster import BatchOptions, connect, ray_module, resources
from .report import write_report
from .spec import BatchRun
from .task import Job, Preempted, execute, metrics_columns, run_state

SHEET_EVERY_S = 30.0
"""The contact sheet (it reads every thumbnail) is redrawn at most this often while runs finish, and at the end."""


@dataclass
class BatchResult:
    """A batch's table (one row per run, report.py's columns), its folder and its own timings."""

    out: Path
    rows: list[dict[str, Any]]
    meta: dict[str, Any]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["status"] == "failed"]


def base_row(run: BatchRun) -> dict[str, Any]:
    return {"run": run.name, "prompt": run.prompt, "seed": run.seed, "overrides": json.dumps(run.overrides, sort_keys=True, default=str)}


def run_batch(runs: Sequence[BatchRun], out: Path, options: BatchOptions, console: Optional[Console] = None) -> BatchResult:
    """Train every run of a checked batch (spec.py `check_runs`) on Ray; the finished table."""
    console = console or Console(stderr=True)
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for run in runs:
        finished = run_state(run.run_dir(out)) == "finished"
        rows[run.name] = {**base_row(run), "status": "skipped" if finished else "queued",
                          **(metrics_columns(run.run_dir(out)) if finished else {})}
        if not finished:
            todo.append(run)
    meta: dict[str, Any] = {"runs": len(runs), "submitted": len(todo)}
    result = BatchResult(out, list(rows.values()), meta)
    if not todo:
        write_report(out, result.rows, meta)
        return result
    started = time.perf_counter()
    ray = ray_module()
    owned = connect(options)
    meta["ray_start_s"] = round(time.perf_counter() - started, 3)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _run_tasks(ray, todo, out, options, rows, meta, console)
    finally:
        if owned:
            ray.shutdown()
    result.rows = list(rows.values())
    return result


def _run_tasks(ray: Any, todo: list[BatchRun], out: Path, options: BatchOptions, rows: dict[str, dict[str, Any]],
               meta: dict[str, Any], console: Console) -> None:
    cpus, gpus = resources(options)
    task = ray.remote(execute).options(num_cpus=cpus, num_gpus=gpus, max_retries=options.max_retries,
                                       retry_exceptions=[Preempted])
    submitted: dict[Any, tuple[BatchRun, float]] = {}
    for run in todo:
        job = Job(run.name, run.prompt, run.seed, run.overrides, run.flags, str(run.run_dir(out)), max(1, int(cpus)))
        submitted[task.remote(job)] = (run, time.time())
    pending = list(submitted)
    report_s, last_sheet = 0.0, time.perf_counter()
    done_before = len(rows) - len(todo)
    columns = (TextColumn("[bold]batch[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not options.progress) as progress:
        bar = progress.add_task(_counts(rows), total=len(rows), completed=done_before)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    run, sent = submitted[ref]
                    rows[run.name] = {**base_row(run), **_outcome(ray, ref, sent, options)}
                t0 = time.perf_counter()
                sheet = not pending or t0 - last_sheet > SHEET_EVERY_S
                last_sheet = t0 if sheet else last_sheet
                write_report(out, list(rows.values()), meta, sheet=sheet)
                report_s += time.perf_counter() - t0
                meta["report_s"] = round(report_s, 3)
                progress.update(bar, advance=len(ready), description=_counts(rows))
        except KeyboardInterrupt:
            _cancel(ray, pending, console)
            for ref in pending:
                run, _ = submitted[ref]
                rows[run.name] = {**base_row(run), "status": "interrupted",
                                  "error": "the batch was interrupted; submit it again to resume this run from its last checkpoint"}
            write_report(out, list(rows.values()), meta)
            raise


def _outcome(ray: Any, ref: Any, sent: float, options: BatchOptions) -> dict[str, Any]:
    """A finished task's row, or a failed row saying why (its run keeps its checkpoint)."""
    try:
        row: dict[str, Any] = ray.get(ref)
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None)
        why = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).strip().splitlines()[-1]
        return {"status": "failed", "error": f"{why[:300]} (after {options.max_retries} retries); resubmit the batch to "
                                             "resume it from its last checkpoint"}
    started = row.pop("started", None)
    if started is not None:
        row["wait_s"] = round(started - sent, 3)
    return row


def _counts(rows: dict[str, dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _cancel(ray: Any, pending: list[Any], console: Console, grace_s: float = 60.0) -> None:
    """Ctrl-C: cancel the unfinished tasks and wait for them a while. The cancel is forced (the
    worker process ends; a running run keeps its last checkpoint): a gentle cancel makes the run
    raise `Preempted`, which Ray 2.60 then tries to retry for a cancelled task and aborts the driver."""
    console.print(f"[yellow]interrupted[/]: cancelling {len(pending)} run(s); each keeps its last checkpoint and the next "
                  "submission resumes it")
    for ref in pending:
        ray.cancel(ref, force=True)
    ray.wait(pending, num_returns=len(pending), timeout=grace_s)
