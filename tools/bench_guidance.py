"""Benchmark every objective on toyworld, where the right answer is known.

    python tools/bench_guidance.py [--prior toyworld|toyworld-sd] [--steps 300] [--seeds 3] [--write docs/benchmarks.md]

`--prior toyworld` (the default) is the exact prior; `--prior toyworld-sd` runs the same table
through the Stable Diffusion code path on the toyworld-trained model (its own section of the
Markdown file).

Each objective runs with its own default settings (csd and csm at their default toyworld
temperature, 100; ism and tsm at their default data noise, 4) with 3D Gaussians on three prompts: a symmetric object, an asymmetric
object (whose back-view PSNR shows whether the back came out right) and the multi-modal
"a ball" (how many of its 4 colour modes the seeds reach). A last row runs VSD with several
particles on the multi-modal prompt: do they spread over the modes? Then each option of
OPTIONS (Perp-Neg, BSD's auto variant, HiFA's image term + square-root anneal, the z-variance
regulariser) runs as its own row on the same prompts, seeds and steps (`--options` picks them),
and a Janus table lists, for sds, esd, sds + Perp-Neg and bsd, the fraction of seeds whose back
views on the asymmetric object match its front better than its back. Everything is measured in
one process, one run after another; seconds are the optimisation loop's own time.

With --write the Markdown table replaces the section between the bench_guidance markers.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from threedistill.config import parse_run_args  # noqa: E402
from threedistill.core.objective import OBJECTIVES  # noqa: E402
from threedistill.engine.plan import single_stage  # noqa: E402
from threedistill.engine.run import Run  # noqa: E402
from markdown_section import write_marked_section  # noqa: E402  (tools/, beside this script)

PROMPTS = {"symmetric": "a red cube", "asymmetric": "a yellow duck", "multi-modal": "a ball"}
TOYWORLD_QUICK_FLAGS = ["--prior.num-references", "16", "--prior.resolution", "32"]
OPTIONS: dict[str, tuple[str, list[str]]] = {
    "sds + perp-neg": ("sds", ["--prompts.perp-neg"]),
    "bsd auto": ("bsd", ["--guidance.auto"]),
    "sds + hifa (image term 0.01 + sqrt anneal)": ("sds", ["--guidance.image-term-weight", "0.01", "--guidance.sqrt-anneal",
                                                          "--guidance.min-step", "300", "--guidance.max-step", "980"]),
    "sds + z-variance 100": ("sds", ["--representation.lambda-z-variance", "100"]),
}
"""Option rows: label -> (objective, flags)."""
JANUS_ROWS = ("sds", "esd", "sds + perp-neg", "bsd")
"""The rows of the Janus table (issue 15)."""
QUICK_FLAGS = ["--sampler.width", "32", "--sampler.height", "32",
               "--sampler.batch-size", "2", "--representation.num-points", "200", "--log.eval-views", "8"]


def run_once(objective: str, prompt: str, seed: int, steps: int, out: Path, extra: list[str], prior: str = "toyworld") -> dict[str, Any]:
    """One run with the objective's defaults on a ground-truth prior; returns its metrics.json summary."""
    argv = ["--prior", prior, "--guidance", objective, "--prompt", prompt, "--seed", str(seed), "--steps", str(steps),
            "--device", "cpu", "--out", str(out), "--log.no-progress", "--log.preview-every", "0",
            "--log.checkpoint-every", "0", "--log.turntable-frames", "4", "--log.turntable-resolution", "32", *extra]
    names, cfg = parse_run_args(argv)
    run = Run.start(single_stage(names, cfg))
    run.trainer.train()
    summary = run.trainer.finish()
    if prior == "toyworld":
        summary["settings"] = f"{cfg.prior.temperature or 1.0:g}, {cfg.prior.data_noise or 0.0:g}"  # type: ignore[attr-defined]
    else:
        summary["settings"] = "-"
    return summary


def mean_std(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def table(rows: list[dict[str, Any]], steps: int, seeds: int, particles: int, prior: str = "toyworld") -> str:
    lines = [
        f"`--prior {prior}`: every objective with its defaults, 3D Gaussians, {steps} steps, seeds 0..{seeds - 1}; mean ± std over seeds.",
        "PSNR in dB on 16 held-out views against the closest mode; back PSNR on the 4 views within 45° of the back.",
        "Janus: seeds whose back views match the object's front (seen from behind, as is or mirrored) better than its back.",
        "",
        f"| objective | prompt | {'prior T, data noise' if prior == 'toyworld' else 'prior settings'} | mask IoU | PSNR | back PSNR | Janus | modes reached | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        runs = r["runs"]
        kind = r["kind"]
        back = mean_std([x["back_psnr"] for x in runs]) if kind == "asymmetric" else ""
        janus = f"{sum(janus_seed(x) for x in runs)} of {len(runs)}" if kind == "asymmetric" else ""
        if kind == "multi-modal":
            reached = {x["mode"] for x in runs} if "particles" not in runs[0] else None
            modes = f"{len(reached)} of 4 over the seeds" if reached is not None else (
                ", ".join(str(x["modes_reached"]) for x in runs) + f" of {particles} particles, per seed")
        else:
            modes = ""
        lines.append(
            f"| {r['label']} | {r['prompt']} | {runs[0]['settings']} | {mean_std([x['mask_iou'] for x in runs])} | "
            f"{mean_std([x['psnr'] for x in runs])} | {back} | {janus} | {modes} | {mean_std([x['seconds'] for x in runs])} |"
        )
    return "\n".join(lines)


def janus_table(rows: list[dict[str, Any]]) -> str:
    """The fraction of seeds with a Janus back on the asymmetric prompt, for the JANUS_ROWS that ran."""
    found = {r["label"]: r for r in rows if r["kind"] == "asymmetric" and r["label"] in JANUS_ROWS}
    if not found:
        return ""
    lines = ["| objective | prompt | Janus seeds | back PSNR | PSNR |", "|---|---|---|---|---|"]
    for label in JANUS_ROWS:
        if label in found:
            runs = found[label]["runs"]
            lines.append(f"| {label} | {found[label]['prompt']} | {sum(janus_seed(x) for x in runs)} of {len(runs)} | "
                         f"{mean_std([x['back_psnr'] for x in runs])} | {mean_std([x['psnr'] for x in runs])} |")
    return "\n".join(lines)


def janus_seed(summary: dict[str, Any]) -> bool:
    """The back views look more like the object's front than its back (eval/metrics.py)."""
    return bool(summary.get("back_front_psnr", -math.inf) > summary.get("back_psnr", math.inf))


def machine_line() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    return (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; 1-min load at the end {load:.2f}; {time.strftime('%Y-%m-%d')}.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", choices=("toyworld", "toyworld-sd"), default="toyworld")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3)
    distillation = [n for n in OBJECTIVES if OBJECTIVES[n].needs.prior and not OBJECTIVES[n].needs.scene and not OBJECTIVES[n].needs.source_image]
    p.add_argument("--objectives", default=",".join(distillation))
    p.add_argument("--kinds", default=",".join(PROMPTS), help="which prompts: symmetric, asymmetric, multi-modal")
    p.add_argument("--particles", type=int, default=4, help="VSD particles on the multi-modal prompt (0: skip that row)")
    p.add_argument("--options", default=",".join(OPTIONS), help=f"option rows to run ('' for none): {', '.join(OPTIONS)}")
    p.add_argument("--quick", action="store_true", help="tiny settings (a smoke test of this script)")
    p.add_argument("--write", type=Path, default=None, help="replace the bench_guidance section of this Markdown file")
    args = p.parse_args()
    extra = ((TOYWORLD_QUICK_FLAGS if args.prior == "toyworld" else []) + QUICK_FLAGS) if args.quick else []
    kinds = [k for k in args.kinds.split(",") if k]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:  # build and cache each prompt's references (and the null set) outside the timings
            run_once("csd", PROMPTS[kind], 0, 1, Path(tmp), extra, args.prior)
        jobs: list[tuple[str, str, str, list[str]]] = [(o, o, k, []) for k in kinds for o in args.objectives.split(",") if o]  # a prompt's rows together
        if args.particles > 1 and "multi-modal" in kinds:
            jobs.append((f"vsd, {args.particles} particles", "vsd", "multi-modal", ["--guidance.particles", str(args.particles)]))
        for label in [o for o in args.options.split(",") if o]:
            if label not in OPTIONS:
                p.error(f"unknown option row '{label}'; valid: {', '.join(OPTIONS)}")
            objective, flags = OPTIONS[label]
            jobs += [(label, objective, k, flags) for k in kinds]
        for label, objective, kind, flags in jobs:
            runs = []
            for seed in range(args.seeds):
                summary = run_once(objective, PROMPTS[kind], seed, args.steps, Path(tmp), extra + flags, args.prior)
                runs.append(summary)
                print(f"{label:>18} {kind:>11} seed {seed}: iou {summary['mask_iou']:.3f} psnr {summary['psnr']:.2f} "
                      f"back {summary.get('back_psnr', math.nan):.2f} mode {summary.get('mode', summary.get('modes_reached'))} "
                      f"{summary['seconds']:.1f} s", flush=True)
            rows.append({"label": label, "kind": kind, "prompt": PROMPTS[kind], "runs": runs})
            if args.write:  # after every row, so a stopped benchmark keeps what it measured
                partial = table(rows, args.steps, args.seeds, args.particles, args.prior)
                write_marked_section(args.write, section_marker(args.prior),
                                     partial + f"\n\n{len(rows)} of {len(jobs)} rows measured. " + machine_line())
    janus = janus_table(rows)
    text = table(rows, args.steps, args.seeds, args.particles, args.prior) + "\n\n" + (
        f"Janus on the asymmetric prompt (seeds whose back views match the front better than the back):\n\n{janus}\n\n" if janus else ""
    ) + machine_line()
    print(text)
    if args.write:
        write_marked_section(args.write, section_marker(args.prior), text)
    return 0


def section_marker(prior: str) -> str:
    """The Markdown markers' name of a prior's table (toyworld's keeps the plain name)."""
    return "bench_guidance" if prior == "toyworld" else f"bench_guidance:{prior}"


if __name__ == "__main__":
    raise SystemExit(main())
