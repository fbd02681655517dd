"""Quality of the defaults on shapes they were never tuned on: procedural toyworld shapes.

    python tools/bench_shapes.py [--shapes 0-11] [--seeds 0,1,2] [--catalogue] [--parallel 2] [--write FILE] [-- RUN FLAGS]

Runs `threedistill run --prompt "shape K" --prior toyworld --seed S` (plus any run flags after
`--`, e.g. `-- --steps 500`) for every procedural shape K (priors/toyworld/procedural.py:
random asymmetric compositions of boxes, cylinders, spheres and tori with thin parts, several
colours) and seed S, each in its own process, and tabulates the held-out mask IoU and PSNR
per shape (mean and worst over seeds) and over the set (mean, worst). `--catalogue` adds the
same runs on catalogue objects (mug, chair, duck, lamp) as the reference the worst shape is
compared with. Only `splats.ply` is exported (scores need no mesh or video).

Cost: one default run is ~30-60 s on one thread, plus ~30 s the first time a shape's references
are rendered (cached in $THREEDISTILL_CACHE); 12 shapes x 3 seeds plus the catalogue (48 runs) is
20-30 minutes with `--parallel 2 --threads 1` on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from markdown_section import write_marked_section  # tools/, beside this script

CATALOGUE = ("a red mug", "a brown chair", "a yellow duck", "a white lamp")


def parse_range(text: str) -> list[int]:
    """'0-11' or '0,3,5' -> shape numbers."""
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out += list(range(int(lo), int(hi) + 1))
        elif part.strip():
            out.append(int(part))
    return out


def run_one(prompt: str, seed: int, flags: list[str], threads: int) -> dict[str, Any]:
    """metrics.json of one run (in a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="bench_shapes-") as out:
        cmd = [sys.executable, "-m", "threedistill.cli", "run", "--prompt", prompt, "--prior", "toyworld", "--seed", str(seed),
               "--out", out, "--log.no-progress", "--log.export-formats", "splat", *flags]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else dict(os.environ)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"run failed ({prompt}, seed {seed}):\n{proc.stderr[-3000:]}")
        metrics = json.loads(next(Path(out).glob("*/*/metrics.json")).read_text())
        metrics["wall_s"] = time.perf_counter() - t0
        return metrics


def table(results: dict[str, list[dict[str, Any]]], title: str) -> list[str]:
    lines = [f"| {title} | mask IoU mean | mask IoU worst | PSNR mean | PSNR worst | seconds |", "|---|---|---|---|---|---|"]
    for prompt, runs in results.items():
        ious, psnrs = [r["mask_iou"] for r in runs], [r["psnr"] for r in runs]
        lines.append(f"| {prompt} | {statistics.mean(ious):.3f} | {min(ious):.3f} | {statistics.mean(psnrs):.2f} | {min(psnrs):.2f} | "
                     f"{statistics.mean(r['seconds'] for r in runs):.0f} |")
    all_iou = [r["mask_iou"] for runs in results.values() for r in runs]
    all_psnr = [r["psnr"] for runs in results.values() for r in runs]
    lines.append(f"| **all ({len(all_iou)} runs)** | **{statistics.mean(all_iou):.3f}** | **{min(all_iou):.3f}** | "
                 f"**{statistics.mean(all_psnr):.2f}** | **{min(all_psnr):.2f}** | |")
    return lines


def main(argv: Optional[list[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="0-11", help="procedural shape numbers: '0-11' or '0,3,5'")
    parser.add_argument("--seeds", default="0,1,2", help="run seeds")
    parser.add_argument("--catalogue", action="store_true", help=f"also run {', '.join(CATALOGUE)} as the reference")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (2 single-thread runs fill 2 cores)")
    parser.add_argument("--threads", type=int, default=0, help="OMP threads per run (0: torch's default)")
    parser.add_argument("--write", type=Path, default=None, help="put the table into this markdown file (between markers)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    prompts = [f"shape {k}" for k in parse_range(args.shapes)] + (list(CATALOGUE) if args.catalogue else [])
    jobs = [(p, s) for s in seeds for p in prompts]  # seed-major: a stopped run still has every shape's first seed
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in prompts}
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        for done, ((prompt, seed), metrics) in enumerate(zip(jobs, pool.map(lambda job: run_one(job[0], job[1], flags, args.threads), jobs)), 1):
            results[prompt].append(metrics)
            print(f"{prompt:16s} seed {seed}: mask IoU {metrics['mask_iou']:.3f}, PSNR {metrics['psnr']:.2f}, "
                  f"{metrics['seconds']:.0f} s loop", flush=True)
            text = report(results, flags, args.seeds, done, len(jobs))
            if args.write:  # after every run, so a stopped benchmark keeps what it measured
                write_marked_section(args.write, "bench_shapes", text)
    print()
    print(text)


def report(results: dict[str, list[dict[str, Any]]], flags: list[str], seeds: str, done: int, total: int) -> str:
    """The Markdown tables of the runs so far (procedural shapes, then the catalogue)."""
    shapes = {p: r for p, r in results.items() if p.startswith("shape ") and r}
    partial = "" if done == total else f" ({done} of {total} runs so far)"
    lines = [f"Defaults{' with ' + ' '.join(flags) if flags else ''}; seeds {seeds}{partial}; 16 held-out views; "
             f"{time.strftime('%Y-%m-%d')}.", ""] + table(shapes, "procedural shape")
    catalogue = {p: r for p, r in results.items() if not p.startswith("shape ") and r}
    if catalogue:
        lines += [""] + table(catalogue, "catalogue object")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
