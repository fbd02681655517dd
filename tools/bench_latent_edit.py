"""Latent-space editing (ED-NeRF, `--method latent-dds`) against RGB DDS (`--method dds`) on one scene, one
after the other in this process: PSNR and mask IoU against the target's ground truth, time per edit step,
and the whole run's time; prints a Markdown table with the ratios (--write puts it into docs/benchmarks.md).

    OMP_NUM_THREADS=1 python tools/bench_latent_edit.py --write docs/benchmarks.md

The scene is `threedistill toyworld scene "a red mug"` (made in --out unless --scene is given); both edits use
the CLI's defaults (500 reconstruction steps, 400 edit steps; latent-dds adds 200 distillation steps).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from markdown_section import write_marked_section  # noqa: E402

METHODS = ("dds", "latent-dds")


def edit(method: str, scene: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One `threedistill edit` run; its metrics.json with the edit stage's time per step."""
    from threedistill.cli import main

    flags = ["edit", "--scene", str(scene), "--source", args.source, "--target", args.target, "--prior", args.prior,
             "--method", method, "--seed", str(args.seed), "--out", str(out / method), "--log.no-progress", *args.flags]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(flags)
    if code != 0:
        raise SystemExit(f"{method}: threedistill edit exited {code}")
    run = Path(stdout.getvalue().strip().splitlines()[-1])
    metrics = json.loads((run / "metrics.json").read_text())
    stage = next(s for s in metrics["stages"] if s["stage"] == "edit")
    metrics["edit_step_s"] = stage["seconds"] / stage["steps"]
    metrics["run"] = str(run)
    return metrics


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    rgb, latent = results["dds"], results["latent-dds"]
    rows = ["| method | PSNR vs target (dB) | mask IoU | time per edit step (s) | edit stage (s) | whole run (s) |",
            "|---|---|---|---|---|---|"]
    for method, m in results.items():
        stage = next(s for s in m["stages"] if s["stage"] == "edit")
        rows.append(f"| `--method {method}` | {m['psnr']:.2f} | {m['mask_iou']:.3f} | {m['edit_step_s']:.3f} | "
                    f"{stage['seconds']:.1f} | {m['seconds']:.1f} |")
    stages = ", ".join(f"{s['stage']} {s['seconds']:.1f} s" for s in latent["stages"])
    return "\n".join([
        f"`{args.prior}`, \"{args.source}\" -> \"{args.target}\", seed {args.seed}, measured one after the other in one process "
        f"(tools/bench_latent_edit.py{' ' + ' '.join(args.flags) if args.flags else ''}).",
        "",
        *rows,
        "",
        f"latent / RGB: time per edit step {latent['edit_step_s'] / rgb['edit_step_s']:.2f}x, whole run "
        f"{latent['seconds'] / rgb['seconds']:.2f}x, PSNR {latent['psnr'] - rgb['psnr']:+.2f} dB. latent-dds stages: {stages}.",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", type=Path, default=None, help="a scene folder (default: the toyworld red mug, made in --out)")
    p.add_argument("--prior", default="toyworld-sd")
    p.add_argument("--source", default="a red mug")
    p.add_argument("--target", default="a blue mug")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("outputs/bench_latent_edit"))
    p.add_argument("--write", type=Path, default=None, help="put the table into this Markdown file (marker bench_latent_edit)")
    p.add_argument("flags", nargs="*", help="more `threedistill edit` flags for both runs (after --)")
    args = p.parse_args()
    scene = args.scene
    if scene is None:
        from threedistill.cli import main as cli

        scene = args.out / "scene"
        if not (scene / "transforms.json").exists():
            with contextlib.redirect_stdout(io.StringIO()):
                assert cli(["toyworld", "scene", args.source, str(scene)]) == 0
    results = {method: edit(method, scene, args.out, args) for method in METHODS}
    text = table(results, args)
    print(text)
    if args.write:
        write_marked_section(args.write, "bench_latent_edit", text)


if __name__ == "__main__":
    main()
