"""Time-to-quality of whole runs, the old code against the new, measured in one run.

    python tools/bench_run.py [--old REF] [--jobs main,nerf,4d,edit] [--repeats 1] [--short] [--write FILE]

For every job (the README's command lines) and both versions of the code (REF, default the
merge-base with main, unpacked with `git archive` into a temporary folder, and this checkout)
it runs the command in a fresh Python process, alternating old, new, new, old, ... so that
machine noise hits both alike, and reports:

- loop seconds (metrics.json's `seconds`: the training steps only) and wall seconds of the
  whole command (start-up, steps, logging, checkpoints, scoring, exports);
- time to quality: loop seconds until the held-out scores first reach the job's thresholds
  (mask IoU >= 0.95 and PSNR >= 27 for the static runs; what the old code reaches at the end for
  the 4D run and the edit, whose final scores are lower), checked every `--eval-every` steps
  on toyworld's held-out cameras (the checks are not counted), and until they reach them for
  good (every later check and the final scores meet them: PSNR hovers around 27 dB on the
  mug, so a run can touch the thresholds early and end below them);
- the final mask IoU and PSNR, the share of wall time in each phase (render forward, prior,
  objective, backward, optimiser, logging, exports and scoring, start-up, other) and the peak
  resident memory (and peak CUDA memory on a GPU);
- ratios old / new.

Phases are measured from outside (methods of the trainer, the prior and the optimiser wrapped
in timers), so the same instrumentation serves both versions. `--short` runs every job for a
few steps: a check that the tool works, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from markdown_section import write_marked_section  # tools/, beside this script

ROOT = Path(__file__).resolve().parent.parent
SCENE_PROMPT = "a red mug"

# name: (command line after `threedistill`, thresholds {mask_iou, psnr}, steps with --short)
JOBS: dict[str, tuple[list[str], dict[str, float], list[str]]] = {
    "main": (["run", "--prompt", "a red mug", "--prior", "toyworld"], {"mask_iou": 0.95, "psnr": 27.0}, ["--steps", "60"]),
    "nerf": (["run", "--prompt", "a red mug", "--prior", "toyworld", "--representation", "nerf"],
             {"mask_iou": 0.95, "psnr": 27.0}, ["--steps", "60"]),
    "4d": (["run", "--prompt", "a bouncing ball", "--prior", "toyworld", "--dynamic"], {"mask_iou": 0.80, "psnr": 20.0},
           ["--steps", "20"]),
    "edit": (["edit", "--scene", "{scene}", "--source", "a red mug", "--target", "a blue mug", "--prior", "toyworld"],
             {"mask_iou": 0.95, "psnr": 25.0}, ["--steps", "30", "--reconstruct-steps", "30"]),
}
WARMUP = {"main": ["--steps", "2"], "nerf": ["--steps", "2"], "4d": ["--steps", "2"], "edit": ["--steps", "2", "--reconstruct-steps", "2"]}
PHASES = ("startup", "render", "prior", "objective", "backward", "optimiser", "logging", "finish", "other")
"""render: the representation's forward renders; prior: predict_eps/encode/decode inside the
objective; objective: the rest of it; backward: loss.backward (mostly the renderer's); optimiser:
Adam; logging: metrics rows, previews, checkpoints; finish: scoring and exports; startup: the
rest (imports, the plan, building the prior and its references)."""


# ---------------------------------------------------------------------- child: one instrumented command
def child(args: argparse.Namespace) -> None:
    """Run one job on the code in args.src and print one JSON line of results."""
    t_start = time.perf_counter()
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower()]  # the venv's editable install
    sys.path.insert(0, str(args.src))
    import resource

    import torch

    import threedistill
    from threedistill import cli
    from threedistill.engine import loop
    from threedistill.eval.scoring import score_asset

    assert Path(threedistill.__file__).resolve().is_relative_to(Path(args.src).resolve()), threedistill.__file__
    if args.threads:
        torch.set_num_threads(args.threads)
    phases = dict.fromkeys(PHASES, 0.0)
    state: dict[str, Any] = {"depth": 0, "hit": None, "loop_before": 0.0, "evals": []}
    thresholds = json.loads(args.thresholds)

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            if state["depth"]:  # nested in another timed phase: counted there
                return fn(*a, **k)
            state["depth"] += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] += time.perf_counter() - t0
                state["depth"] -= 1
        return wrapper

    class TimedObjective:
        """The stage's objective with its calls timed (prior calls inside are counted as prior)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __call__(self, *a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            before = phases["prior"]
            state["in_objective"] = True
            try:
                return self.inner(*a, **k)
            finally:
                state["in_objective"] = False
                phases["objective"] += time.perf_counter() - t0 - (phases["prior"] - before)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    def prior_timed(fn: Any) -> Any:
        if getattr(fn, "bench_timed", False):  # a prior shared by several stages is wrapped once
            return fn

        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                if state.get("in_objective"):
                    phases["prior"] += time.perf_counter() - t0
        wrapper.bench_timed = True  # type: ignore[attr-defined]
        return wrapper

    original_init = loop.StageTrainer.__init__

    def init(self: Any, *a: Any, **k: Any) -> None:
        original_init(self, *a, **k)
        self.representation.render = timed("render", self.representation.render)
        self.objective = TimedObjective(self.objective)
        objectives = [self.objective.inner]
        if self.image_objective is not None:  # the 4D hybrid's per-frame image objective
            self.image_objective.objective = TimedObjective(self.image_objective.objective)
            objectives.append(self.image_objective.objective.inner)
        for objective in objectives:
            prior = getattr(objective, "prior", None)
            if prior is not None:
                for name in ("predict_eps", "encode", "decode"):
                    setattr(prior, name, prior_timed(getattr(prior, name)))

    original_step = loop.StageTrainer.train_step
    original_backward = torch.Tensor.backward

    def train_step(self: Any) -> Any:
        if self.optimizer.step.__name__ != "wrapper":
            self.optimizer.step = timed("optimiser", self.optimizer.step)
        t0 = time.perf_counter()
        measured = sum(phases.values())
        torch.Tensor.backward = timed("backward", original_backward)  # type: ignore[method-assign]
        try:
            return original_step(self)
        finally:
            torch.Tensor.backward = original_backward  # type: ignore[method-assign]
            phases["other"] += (time.perf_counter() - t0) - (sum(phases.values()) - measured)
            if args.eval_every and self.step % args.eval_every == 0:
                check_quality(self)

    def check_quality(self: Any) -> None:
        truth = self.ground_truth()
        if truth is None:
            return
        state["depth"] += 1  # its renders are not a phase of the run
        try:
            with torch.no_grad():
                scores = score_asset(self.representation, truth, self.cfg.prompt, self.cfg.log.eval_views, self.background, self.frames)
        finally:
            state["depth"] -= 1
        last = self.index == len(self.context.plan) - 1
        loop_s = state["loop_before"] + self.elapsed
        met = last and all(scores[k] >= v for k, v in thresholds.items())
        state["evals"].append({"stage": self.index, "step": self.step, "loop_s": round(loop_s, 2), "met": met,
                               "mask_iou": round(scores["mask_iou"], 4), "psnr": round(scores["psnr"], 2)})
        if met and state["hit"] is None:
            state["hit"] = loop_s

    original_finish = loop.StageTrainer.finish

    def finish(self: Any) -> Any:
        t0 = time.perf_counter()
        state["depth"] += 1  # scoring's and the exports' renders count as finish
        try:
            return original_finish(self)
        finally:
            state["depth"] -= 1
            phases["finish"] += time.perf_counter() - t0
            state["loop_before"] += self.elapsed

    loop.StageTrainer.__init__ = init  # type: ignore[method-assign]
    loop.StageTrainer.train_step = train_step  # type: ignore[method-assign]
    loop.StageTrainer._periodic = timed("logging", loop.StageTrainer._periodic)  # type: ignore[method-assign]
    loop.StageTrainer.finish = finish  # type: ignore[method-assign]
    phases["startup"] = time.perf_counter() - t_start
    t_cmd = time.perf_counter()
    code = cli.main(json.loads(args.argv))
    wall = time.perf_counter() - t_start
    phases["startup"] += (time.perf_counter() - t_cmd) - sum(v for k, v in phases.items() if k != "startup")
    run_dirs = sorted(Path(args.out).glob("*/*/metrics.json"), key=lambda p: p.stat().st_mtime)
    metrics = json.loads(run_dirs[-1].read_text()) if run_dirs else {}
    stable = None  # the first check from which every later check (and the final scores) meets the thresholds
    final_met = bool(metrics) and all(metrics.get(k, -1.0) >= v for k, v in thresholds.items())
    for e in reversed(state["evals"]):
        if not (e["met"] and final_met):
            break
        stable = e["loop_s"]
    result = {
        "code": code, "wall_s": wall, "loop_s": metrics.get("seconds"), "time_to_quality_s": state["hit"],
        "time_to_stable_quality_s": stable,
        "mask_iou": metrics.get("mask_iou"), "psnr": metrics.get("psnr"), "phases": phases,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "evals": state["evals"], "threads": torch.get_num_threads(),
    }
    print("BENCH_RESULT " + json.dumps(result))


# ---------------------------------------------------------------------- parent: both versions, interleaved
def unpack(ref: str, dest: Path) -> Path:
    """The package and configs of git REF as a source folder (no worktree is registered)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "threedistill", "configs"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def merge_base() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], capture_output=True, text=True)
    return out.stdout.strip() or "main"


def run_child(src: Path, job: str, argv: list[str], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(dir=work))
    thresholds = JOBS[job][1]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--src", str(src), "--out", str(out),
           "--argv", json.dumps([*argv, "--out", str(out), "--log.no-progress"]), "--thresholds", json.dumps(thresholds),
           "--eval-every", str(args.eval_every), "--threads", str(args.threads)]
    env = {**os.environ, "THREEDISTILL_CACHE": str(work / "cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{job} on {src} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(lines[-1][len("BENCH_RESULT "):])


def median(values: list[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return statistics.median(known) if len(known) == len(values) and known else None


def fmt(v: Optional[float], digits: int = 1) -> str:
    return "not reached" if v is None else f"{v:.{digits}f}"


def ratio(old: Optional[float], new: Optional[float]) -> str:
    return "-" if old is None or new is None or new == 0 else f"{old / new:.2f}x"


def report(results: dict[str, dict[str, list[dict[str, Any]]]], ref: str, args: argparse.Namespace) -> str:
    import platform

    import torch

    lines = [f"Old code: {ref}; new code: this checkout. {args.repeats} run(s) each, alternating; medians.",
             f"Machine: {platform.machine()}, {os.cpu_count()} logical cores, torch {torch.__version__}, "
             f"{results[next(iter(results))]['new'][0]['threads']} threads; 1-min load at the end {os.getloadavg()[0]:.2f}; "
             f"{time.strftime('%Y-%m-%d')}.", "",
             "| job | code | loop s | wall s | time to quality s | ... and to stay there s | mask IoU | PSNR | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for job, by in results.items():
        for version in ("old", "new"):
            rs = by[version]
            lines.append(f"| {job} | {version} | {fmt(median([r['loop_s'] for r in rs]))} | {fmt(median([r['wall_s'] for r in rs]))} | "
                         f"{fmt(median([r['time_to_quality_s'] for r in rs]))} | {fmt(median([r['time_to_stable_quality_s'] for r in rs]))} | "
                         f"{fmt(median([r['mask_iou'] for r in rs]), 3)} | "
                         f"{fmt(median([r['psnr'] for r in rs]), 2)} | {fmt(median([r['peak_rss_mb'] for r in rs]), 0)} |")
        o, n = by["old"], by["new"]
        lines.append(f"| {job} | old / new | {ratio(median([r['loop_s'] for r in o]), median([r['loop_s'] for r in n]))} | "
                     f"{ratio(median([r['wall_s'] for r in o]), median([r['wall_s'] for r in n]))} | "
                     f"{ratio(median([r['time_to_quality_s'] for r in o]), median([r['time_to_quality_s'] for r in n]))} | "
                     f"{ratio(median([r['time_to_stable_quality_s'] for r in o]), median([r['time_to_stable_quality_s'] for r in n]))} | | | |")
    lines += ["", "Share of wall time by phase (%, medians):", "",
              "| job | code | " + " | ".join(PHASES) + " |", "|---|---|" + "---|" * len(PHASES)]
    for job, by in results.items():
        for version in ("old", "new"):
            shares = [statistics.median(100 * r["phases"][p] / r["wall_s"] for r in by[version]) for p in PHASES]
            lines.append(f"| {job} | {version} | " + " | ".join(f"{s:.0f}" for s in shares) + " |")
    lines += ["", "Thresholds: " + "; ".join(f"{job} " + ", ".join(f"{k} >= {v:g}" for k, v in JOBS[job][1].items())
                                              for job in results) + "."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", default=None, help="git ref of the old code (default: the merge-base of HEAD and main)")
    parser.add_argument("--jobs", default="main,nerf,4d,edit", help=f"comma-separated, of {', '.join(JOBS)}")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each version per job")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between quality checks (0: none)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each run (0: torch's default)")
    parser.add_argument("--short", action="store_true", help="a few steps per job: checks the tool, measures nothing")
    parser.add_argument("--write", type=Path, default=None, help="put the tables into this markdown file (between markers)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--argv", help=argparse.SUPPRESS)
    parser.add_argument("--thresholds", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        parser.error(f"unknown job(s) {unknown}; valid: {', '.join(JOBS)}")
    ref = args.old or merge_base()
    with tempfile.TemporaryDirectory(prefix="bench_run-") as tmp:
        work = Path(tmp)
        sources = {"old": unpack(ref, Path(tempfile.mkdtemp(dir=work))), "new": ROOT}
        results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for job in jobs:
            argv_job = list(JOBS[job][0])
            if "{scene}" in argv_job:
                scene = work / "scene"
                if not scene.exists():
                    subprocess.run([sys.executable, "-m", "threedistill.cli", "toyworld", "scene", SCENE_PROMPT, str(scene)],
                                   check=True, capture_output=True, env={**os.environ, "THREEDISTILL_CACHE": str(work / "cache")})
                argv_job = [str(scene) if a == "{scene}" else a for a in argv_job]
            if args.short:
                argv_job += JOBS[job][2]
            for version in ("old", "new"):  # references rendered and cached, files warm: not timed
                run_child(sources[version], job, [*argv_job, *WARMUP[job]], work, args)
            results[job] = {"old": [], "new": []}
            order = ["old", "new", "new", "old"] * args.repeats
            for version in order[: 2 * args.repeats]:
                r = run_child(sources[version], job, argv_job, work, args)
                results[job][version].append(r)
                print(f"{job:5s} {version}: loop {fmt(r['loop_s'])} s, wall {r['wall_s']:.1f} s, to quality "
                      f"{fmt(r['time_to_quality_s'])} s (for good {fmt(r['time_to_stable_quality_s'])} s), "
                      f"mask IoU {fmt(r['mask_iou'], 3)}, PSNR {fmt(r['psnr'], 2)}", flush=True)
    text = report(results, ref, args)
    if args.short:
        text = "(--short: a few steps per job, not a measurement)\n\n" + text
    print()
    print(text)
    if args.write:
        write_marked_section(args.write, "bench_run", text)


if __name__ == "__main__":
    main()
