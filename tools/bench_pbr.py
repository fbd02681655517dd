"""PBR materials on toyworld: does a `--material pbr` run recover the object's known roughness and metallic?

    python tools/bench_pbr.py [--objects "a red ball,a red cube"] [--guidance dreammat,sds] [--steps 600]
                              [--seeds 0] [--write docs/benchmarks.md] [-- RUN FLAGS]

For every catalogue object and objective: the object's own mesh is written to a .ply without its
colours (the fixed mesh a DreamMat run distils a material for; the material starts from none), and `threedistill run --prior toyworld --representation mesh
--material pbr --representation.optimise texture --representation.lr-network 0.01` trains its
albedo / roughness / metallic fields against toyworld's PBR references (GGX-shaded under a light drawn
per view); dreammat's coefficient and t schedules are given as fractions of the run (`t-switch 0.25`,
s_u -1 -> -0.5 and s_n 0 -> -0.5 over the whole run) because the run is far shorter than DreamMat's
2000 steps. It tabulates the held-out scores (eval/materials.py): the recovered mean roughness and
metallic next to the truth, the mean absolute per-pixel errors, the albedo PSNR and the shaded PSNR
under the held-out light, checks the recovered means against the tolerances (`--tolerance`, default
0.1 for both), and that the exported mesh.glb has a baseColor and a metallicRoughness texture.

Cost: ~2 minutes per 600-step run on one CPU thread, plus ~1 minute the first time an object's
references are rendered (cached in $THREEDISTILL_CACHE).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from markdown_section import write_marked_section  # tools/, beside this script

SCHEDULES = {"dreammat": ["--guidance.t-switch", "0.25", "--guidance.uncond-scale", "0", "-1", "1.0", "-0.5",
                          "--guidance.null-scale", "0", "0", "1.0", "-0.5"]}


def write_object_mesh(prompt: str, path: Path) -> Path:
    """The catalogue object's geometry, without its colours, as a .ply (`threedistill toyworld mesh --geometry-only`)."""
    cmd = [sys.executable, "-m", "threedistill.cli", "toyworld", "mesh", prompt, str(path), "--geometry-only"]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def glb_textures(glb: Path) -> list[str]:
    """The PBR textures the glb's material carries."""
    import trimesh

    material = next(iter(trimesh.load(str(glb)).geometry.values())).visual.material
    return [name for name in ("baseColorTexture", "metallicRoughnessTexture") if getattr(material, name, None) is not None]


def run_one(prompt: str, guidance: str, seed: int, steps: int, flags: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench_pbr-") as tmp:
        mesh = write_object_mesh(prompt, Path(tmp) / "object.ply")
        cmd = [sys.executable, "-m", "threedistill.cli", "run", "--prior", "toyworld", "--prompt", prompt, "--guidance", guidance,
               "--representation", "mesh", "--material", "pbr", "--representation.path", str(mesh), "--representation.optimise", "texture",
               "--representation.lr-network", "0.01", "--steps", str(steps), "--seed", str(seed), "--out", str(Path(tmp) / "runs"),
               "--log.no-progress", "--log.export-formats", "glb", *SCHEDULES.get(guidance, []), *flags]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        if proc.returncode != 0:
            raise SystemExit(f"run failed ({prompt}, {guidance}, seed {seed}):\n{proc.stderr[-3000:]}")
        run = next(Path(tmp, "runs").glob("*/*/metrics.json")).parent
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["textures"] = glb_textures(run / "export" / "mesh.glb")
        metrics["wall_s"] = time.perf_counter() - t0
        return metrics


def table(rows: list[tuple[str, str, int, dict[str, Any]]], tolerance: float) -> tuple[str, bool]:
    lines = ["| object | guidance | seed | roughness (truth) | metallic (truth) | per-pixel error r / m | albedo PSNR | "
             "shaded PSNR, held-out light | glb textures | within ±%.2f | s |" % tolerance,
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    ok_all = True
    for prompt, guidance, seed, m in rows:
        ok = all(abs(m[f"{k}_mean"] - m[f"true_{k}_mean"]) <= tolerance for k in ("roughness", "metallic")) and len(m["textures"]) == 2
        ok_all &= ok
        lines.append(f"| {prompt} | {guidance} | {seed} | {m['roughness_mean']:.3f} ({m['true_roughness_mean']:.2f}) | "
                     f"{m['metallic_mean']:.3f} ({m['true_metallic_mean']:.2f}) | {m['roughness_error']:.3f} / {m['metallic_error']:.3f} | "
                     f"{m['albedo_psnr']:.2f} | {m['psnr']:.2f} | {', '.join(t.replace('Texture', '') for t in m['textures'])} | "
                     f"{'yes' if ok else 'NO'} | {m['wall_s']:.0f} |")
    return "\n".join(lines), ok_all


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", default="a red ball,a red cube")
    p.add_argument("--guidance", default="dreammat,sds")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seeds", default="0")
    p.add_argument("--tolerance", type=float, default=0.1)
    p.add_argument("--write", type=Path, default=None, help="put the table into this Markdown file (marked section 'pbr')")
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    rows = []
    for prompt in [o.strip() for o in args.objects.split(",") if o.strip()]:
        for guidance in [g.strip() for g in args.guidance.split(",") if g.strip()]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                metrics = run_one(prompt, guidance, seed, args.steps, extra)
                rows.append((prompt, guidance, seed, metrics))
                print(f"{prompt} / {guidance} / seed {seed}: roughness {metrics['roughness_mean']:.3f} (truth {metrics['true_roughness_mean']:.2f}), "
                      f"metallic {metrics['metallic_mean']:.3f} (truth {metrics['true_metallic_mean']:.2f}), {metrics['wall_s']:.0f} s", flush=True)
    text, ok = table(rows, args.tolerance)
    text += f"\n\n{args.steps} steps, `--representation.lr-network 0.01`{' ' + ' '.join(extra) if extra else ''}; all within tolerance: {'yes' if ok else 'no'}."
    print(text)
    if args.write:
        write_marked_section(args.write, "pbr", text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
