"""What a batch on Ray costs beside its runs: Ray's start, each task's launch, the report, measured
in one run on a local Ray.

    python tools/bench_batch.py [--prompts 3] [--seeds 2] [--ray-cpus 2] [--out DIR] [-- RUN FLAGS...]

Runs the first --prompts toyworld catalogue prompts x --seeds seeds as one batch (default run flags:
`--config quick --prior toyworld --device cpu`, one CPU per run) on a local Ray of --ray-cpus
CPUs, then prints:

- ray start: `ray.init` of the local cluster (once per batch);
- launch: a task's time from submission to its first line in the worker, for the first wave
  (cold: a worker process starts and imports threedistill) and, after the batch, for 20 empty
  tasks on warm workers (Ray's own per-task cost);
- per run: the run's own training time (metrics.json `seconds`) and the task's wall time
  (building the prior and the run, training, scoring, exports, thumbnail);
- report: the time the driver spent rewriting batch.csv/json, report.md and the contact sheet;
- the batch's wall clock against the runs' own time divided by the slots (ray CPUs / CPUs per run).

Take the numbers on a quiet machine: other work on the cores changes every one of them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster

import ray  # noqa: E402

import threedistill as td  # noqa: E402
from threedistill.priors.toyworld.catalogue import describe_catalogue  # noqa: E402


def main() -> int:
    argv = sys.argv[1:]
    run_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="the batch folder (default: a temporary folder)")
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    flags = run_flags or ["--config", "quick", "--prior", "toyworld", "--device", "cpu"]
    prompts = [prompt for prompt, _ in describe_catalogue()][:args.prompts]
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-batch-"))

    start = time.perf_counter()
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - start
    try:
        begin = time.perf_counter()
        table = td.batch(prompts, seeds=list(range(args.seeds)), out=out, flags=flags,
                         options=td.BatchOptions(cpus_per_run=1, progress=False))
        batch_wall = time.perf_counter() - begin
        warm = _empty_task_roundtrips(20)
    finally:
        ray.shutdown()

    rows = [r for r in table.rows if r["status"] == "finished"]
    if not rows:
        print("no run finished; see", out / "report.md")
        return 1
    own = [float(r["seconds"]) for r in rows]
    wall = [float(r["wall_s"]) for r in rows]
    waits = sorted(float(r["wait_s"]) for r in rows)
    slots = max(1, args.ray_cpus)
    first_wave = waits[:slots]
    report = float(table.meta.get("report_s", 0.0))
    ideal = sum(own) / slots
    print(f"{len(rows)} runs ({args.prompts} prompts x {args.seeds} seeds), {slots} slots, flags: {' '.join(flags)}")
    print(f"ray start                 {ray_start:8.3f} s (once per batch)")
    print(f"launch, cold (1st wave)   {statistics.mean(first_wave):8.3f} s per task (worker start + imports)")
    print(f"launch, warm (empty task) {statistics.mean(warm) * 1000:8.3f} ms per task")
    print(f"run's own training        {statistics.mean(own):8.3f} s per run (metrics.json seconds)")
    print(f"task wall                 {statistics.mean(wall):8.3f} s per run (prior, build, train, score, export, thumbnail)")
    print(f"report                    {report / len(rows):8.3f} s per run ({report:.3f} s in all)")
    print(f"batch wall                {batch_wall:8.3f} s; runs' own time / slots {ideal:.3f} s; ratio {batch_wall / max(ideal, 1e-9):.2f}")
    print(f"overhead per run vs its own time: ray start {ray_start / len(rows) / statistics.mean(own):.2f}x, "
          f"task beyond training {(statistics.mean(wall) - statistics.mean(own)) / statistics.mean(own):.2f}x, "
          f"report {report / len(rows) / statistics.mean(own):.3f}x")
    print(f"batch folder: {out}")
    return 0


def _empty_task_roundtrips(n: int) -> list[float]:
    """Submit-to-result times of `n` empty tasks, one after another, on warm workers."""
    @ray.remote(num_cpus=1)
    def empty() -> None:
        return None

    ray.get(empty.remote())
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        ray.get(empty.remote())
        times.append(time.perf_counter() - t0)
    return times


if __name__ == "__main__":
    sys.exit(main())
