"""Explicit 4D against score distillation on "a bouncing ball" (toyworld-video), one after the other.

    python tools/bench_explicit4d.py [--out DIR] [--explicit-first] [--write docs/benchmarks.md] [-- EXTRA RUN FLAGS FOR BOTH]

Runs, each in its own process with OMP_NUM_THREADS=1 (unless set), first the SDS 4D run
`threedistill run --prompt "a bouncing ball" --prior toyworld --dynamic`, then the explicit pipeline
`threedistill run --prompt "a bouncing ball" --prior toyworld --dynamic --pipeline explicit`, and prints
per run the mean per-frame mask IoU and PSNR (metrics.json, 16 held-out views x 8 frames), the
loop's seconds and the process's wall time, and the ratios. `--write FILE` puts the table between
`<!-- bench_explicit4d:start/end -->` in FILE. Both runs cost ~5-15 minutes on 2 CPU cores; the
numbers are only comparable when nothing else changes between them (a quiet machine, or the same load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from markdown_section import write_marked_section  # tools/, beside this script

BASE = ["--prompt", "a bouncing ball", "--prior", "toyworld", "--dynamic"]
RUNS = {"SDS 4D (`--dynamic`)": [], "explicit 4D (`--dynamic --pipeline explicit`)": ["--pipeline", "explicit"]}


def run_one(flags: list[str], out: Path) -> dict[str, Any]:
    """One run in a fresh process; its metrics.json plus the process's wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    argv = [sys.executable, "-m", "threedistill.cli", "run", *flags, "--out", str(out), "--log.no-progress"]
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}): {' '.join(argv)}\n{done.stderr[-2000:]}")
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"run_dir": str(run_dir), "mask_iou": metrics["mask_iou"], "psnr": metrics["psnr"], "seconds": metrics["seconds"],
            "wall": wall, "per_frame": [round(p["mask_iou"], 3) for p in metrics["per_frame"]]}


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = ["| run | mask IoU (mean per frame) | PSNR dB | loop time | wall time (process) | IoU per frame |",
            "|---|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['mask_iou']:.3f} | {r['psnr']:.2f} | {minutes(r['seconds'])} | {minutes(r['wall'])} | "
                    f"{', '.join(f'{v:.2f}' for v in r['per_frame'])} |")
    sds, explicit = results.values()
    rows.append("")
    rows.append(f"Ratios (explicit / SDS): wall time {explicit['wall'] / sds['wall']:.2f}x, loop time "
                f"{explicit['seconds'] / sds['seconds']:.2f}x, mask IoU {explicit['mask_iou'] - sds['mask_iou']:+.3f}, "
                f"PSNR {explicit['psnr'] - sds['psnr']:+.2f} dB.")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_explicit4d"))
    parser.add_argument("--write", type=Path, default=None)
    parser.add_argument("--explicit-first", action="store_true", help="run the explicit pipeline first (the other order)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    results = {}
    order = list(RUNS.items())[::-1] if args.explicit_first else list(RUNS.items())
    for name, flags in order:
        results[name] = run_one([*BASE, *flags, *extra], args.out)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    text = table({name: results[name] for name in RUNS})
    print(text)
    if args.write:
        write_marked_section(args.write, "bench_explicit4d", text)


if __name__ == "__main__":
    main()
