"""`threedistill batch SPEC --tune`: the batch's runs as Ray Tune trials, compared on a metric,
the worst stopped early (ASHA), the best reported; resumable with `Tuner.restore`.

Each trial is one run of the spec (its grid values, seed and prompt) trained by task.py's
`execute` in its stable folder, so a trial Tune restarts (after `Tuner.restore`, or a lost
worker) resumes from the run's last checkpoint, and a finished run reports its scores at once.
Every `report_every` steps the run reports its mean loss and, for `mask_iou` / `psnr`, the score
on the held-out cameras (eval/scoring.py, without the mesh); ASHA stops the trials that trail at
`grace_steps`, `grace_steps x reduction_factor`, ... steps. Tune's own files live in OUT/tune.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from rich.console import Console

from ..core.atomic import atomic_write_text
from ..core.errors import UserError
from ..engine.callbacks import LoopCallback
from .cluster import BatchOptions, connect, ray_module, resources
from .report import write_report
from .runner import BatchResult, base_row
from .spec import BatchRun
from .task import Job, execute

if TYPE_CHECKING:
    from ..engine.loop import StageTrainer

METRICS = {"mask_iou": "max", "psnr": "max", "loss": "min"}
"""What a sweep can compare runs on, and which way is better."""


@dataclass
class TuneOptions:
    """The sweep's metric and early stopping (--tune, --tune.metric, --tune.grace-steps, ...)."""

    metric: str = "mask_iou"
    report_every: int = 0
    """Steps between reports (0: the runs' log.checkpoint_every)."""
    grace_steps: int = 0
    """Steps every trial runs before ASHA may stop it (0: no early stopping)."""
    reduction_factor: int = 2

    def check(self, runs: Sequence[BatchRun]) -> None:
        if self.metric not in METRICS:
            raise UserError(f"unknown --tune.metric '{self.metric}'; metrics: {', '.join(METRICS)}")
        if self.report_every < 0 or self.grace_steps < 0 or self.reduction_factor < 2:
            raise UserError("--tune.report-every and --tune.grace-steps must be >= 0 and --tune.reduction-factor >= 2")
        if self.metric != "loss":
            from ..engine.plan import parse_run_plan
            from ..priors.base import PRIORS

            for run in runs:
                prior = parse_run_plan(run.flags, "threedistill batch")[-1].names.prior
                if not PRIORS[prior].has_ground_truth:
                    raise UserError(f"--tune.metric {self.metric} needs a prior with ground truth (toyworld), and "
                                    f"{run.name} uses '{prior}'; use --tune.metric loss")


class TuneReporter(LoopCallback):
    """Reports a trial's progress to Tune every `every` steps: step (over all stages), mean loss, the score."""

    def __init__(self, every: int, metric: str, report: Callable[[dict[str, Any]], None]) -> None:
        self.every, self.metric, self.report = every, metric, report
        self.losses: list[float] = []
        self.last: dict[str, Any] = {}

    def on_step(self, trainer: "StageTrainer", logs: dict[str, float]) -> None:
        loss = logs.get("loss", float("nan"))
        if loss == loss:
            self.losses.append(loss)
        every = self.every or trainer.cfg.log.checkpoint_every or trainer.cfg.steps
        if trainer.step % every or trainer.step >= trainer.cfg.steps:  # a stage's end: `trial` reports the scores
            return
        step = sum(stage.cfg.steps for stage in trainer.context.plan[:trainer.index]) + trainer.step
        row: dict[str, Any] = {"step": step, "loss": sum(self.losses) / max(len(self.losses), 1)}
        self.losses.clear()
        if self.metric != "loss":
            row.update(_scores(trainer))
        self.last = row
        self.report(row)

    def final_loss(self, run_dir: Path) -> float:
        """The mean loss since the last report; else the last one reported; else (a run finished
        before) metrics.jsonl's last logged loss; NaN without any."""
        if self.losses:
            return sum(self.losses) / len(self.losses)
        if "loss" in self.last:
            return float(self.last["loss"])
        path = run_dir / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        return float(next((row["loss"] for row in reversed(rows) if "loss" in row), float("nan")))


def _scores(trainer: "StageTrainer") -> dict[str, Any]:
    """mask_iou and psnr on the held-out cameras now (no mesh)."""
    from ..eval.scoring import score_asset

    truth = trainer.ground_truth()
    if truth is None:
        return {}
    cfg = trainer.cfg
    scores = score_asset(trainer.representation, truth, cfg.prompt, cfg.log.eval_views, trainer.background, trainer.frames)
    return {k: scores[k] for k in ("mask_iou", "psnr") if k in scores}


def trial(config: dict[str, Any], jobs: dict[str, Job], options: TuneOptions) -> None:
    """A Tune trial: train `jobs[config["run"]]`, reporting as it goes; the final row last."""
    from ray import tune

    job = jobs[config["run"]]
    reporter = TuneReporter(options.report_every, options.metric, tune.report)
    row = execute(job, callbacks=[reporter])
    final = {k: v for k, v in row.items() if isinstance(v, (int, float, str)) and k != "started"}
    tune.report({**reporter.last, **final, "loss": reporter.final_loss(Path(job.run_dir)), "step": row.get("steps", 0),
                 "done_run": True})


def run_sweep(runs: Sequence[BatchRun], out: Path, options: BatchOptions, tune_options: TuneOptions,
              console: Optional[Console] = None) -> BatchResult:
    """The batch as a Tune experiment in OUT/tune (restored when it exists); the table with a `best` column."""
    ray = ray_module()
    require_tune()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    console = console or Console(stderr=True)
    check_same_sweep(out, runs, tune_options)
    owned = connect(options)
    try:
        out.mkdir(parents=True, exist_ok=True)
        cpus, gpus = resources(options)
        jobs = {run.name: Job(run.name, run.prompt, run.seed, run.overrides, run.flags, str(run.run_dir(out)), max(1, int(cpus)))
                for run in runs}
        trainable = tune.with_resources(tune.with_parameters(trial, jobs=jobs, options=tune_options), {"cpu": cpus, "gpu": gpus})
        storage, name = str((out / "tune").resolve()), "sweep"
        mode = METRICS[tune_options.metric]
        if tune.Tuner.can_restore(f"{storage}/{name}"):
            console.print(f"restoring the sweep in {storage}/{name}")
            tuner = tune.Tuner.restore(f"{storage}/{name}", trainable=trainable, resume_errored=True)
        else:
            atomic_write_text(out / "tune" / SWEEP_FILE, json.dumps(sweep_identity(runs, tune_options), indent=2) + "\n")
            scheduler = None
            if tune_options.grace_steps:
                scheduler = ASHAScheduler(time_attr="step", max_t=max(_steps(run) for run in runs),
                                          grace_period=tune_options.grace_steps, reduction_factor=tune_options.reduction_factor)
            tuner = tune.Tuner(trainable, param_space={"run": tune.grid_search([run.name for run in runs])},
                               tune_config=tune.TuneConfig(metric=tune_options.metric, mode=mode, scheduler=scheduler,
                                                           max_concurrent_trials=None),
                               run_config=tune.RunConfig(storage_path=storage, name=name, verbose=0,
                                                         failure_config=tune.FailureConfig(max_failures=options.max_retries)))
        with contextlib.redirect_stdout(sys.stderr):  # Tune's tables; stdout is the batch folder alone
            grid = tuner.fit()
    finally:
        if owned:
            ray.shutdown()
    rows = _rows(runs, grid, tune_options.metric)
    meta = {"runs": len(runs), "tune": f"{storage}/{name}", "metric": tune_options.metric, "mode": mode}
    write_report(out, rows, meta)
    return BatchResult(out, rows, meta)


def _rows(runs: Sequence[BatchRun], grid: Any, metric: str) -> list[dict[str, Any]]:
    """One row per run from its trial's last report: finished, stopped (early, by ASHA) or failed;
    `best` marks the best finished run by `metric`."""
    by_run = {result.config["run"]: result for result in grid}
    rows = []
    for run in runs:
        result = by_run.get(run.name)
        metrics = dict(result.metrics or {}) if result is not None else {}
        row = {**base_row(run), **{k: v for k, v in metrics.items() if k in REPORTED or k == metric}}
        if result is None or result.error is not None:
            row.update(status="failed", error=str(result.error if result is not None else "no trial")[:300])
        elif not metrics.get("done_run"):
            row.update(status="stopped", resumed_from=None)
        rows.append(row)
    better = max if METRICS[metric] == "max" else min
    scored = [row for row in rows if row["status"] in ("finished", "skipped") and isinstance(row.get(metric), (int, float))
              and row[metric] == row[metric]]  # a stopped run's last score is from fewer steps
    best = better(scored, key=lambda row: row[metric]) if scored else None
    for row in rows:
        row["best"] = row is best
    return rows


REPORTED = ("status", "attempt", "resumed_from", "steps", "seconds", "wall_s", "gpu", "node", "mask_iou", "psnr", "chamfer", "loss",
            "step", "error")


SWEEP_FILE = "sweep.json"
"""OUT/tune/sweep.json: the runs and options the Tune experiment there was made for."""


def sweep_identity(runs: Sequence[BatchRun], options: TuneOptions) -> dict[str, Any]:
    return {"runs": [run.name for run in runs], "options": dataclasses.asdict(options)}


def check_same_sweep(out: Path, runs: Sequence[BatchRun], options: TuneOptions) -> None:
    """`Tuner.restore` brings back the experiment as it was made: a spec with other runs or other
    --tune.* options than OUT/tune's is refused (before Ray starts)."""
    path = out / "tune" / SWEEP_FILE
    if path.is_file() and json.loads(path.read_text()) != sweep_identity(runs, options):
        raise UserError(f"the sweep in '{path.parent}' was made for other runs or --tune.* options; submit the same spec and "
                        "options to restore it, or pass another --out")


def _steps(run: BatchRun) -> int:
    from ..engine.plan import parse_run_plan

    return sum(stage.cfg.steps for stage in parse_run_plan(run.flags, "threedistill batch"))


def require_tune() -> None:
    """Ray Tune's own dependencies (pandas, pyarrow: Ray's [tune] extra), or the one-line error."""
    from ..core.extras import require

    require("ray.tune", "ray", "threedistill batch --tune")
