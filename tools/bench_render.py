"""Benchmark the splat renderers: forward + backward time of the tiled torch backend next to
the naive dense reference (and gsplat on CUDA), all measured in one run.

    python tools/bench_render.py [--device cpu|cuda] [--quick]

Times are medians over several repetitions after warm-up; the ratio column is dense / tiled.
Dense configurations whose estimated memory exceeds --dense-budget-gb are skipped.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Optional

import torch

from threedistill.core.cameras import orbit_cameras
from threedistill.render.splats import resolve_splat_backend
from threedistill.render.splats_gsplat import render_splats_gsplat
from threedistill.render.splats_torch import render_splats_dense, render_splats_torch

DENSE_BYTES_PER_ENTRY = 80  # float32 view x Gaussian x pixel tensors kept for dense autograd


def make_scene(n: int, views: int, size: int, device: str, seed: int = 0):
    """Gaussians like an early text-to-3D run (N(0, 0.3) means, scale ~0.04) and orbit cameras."""
    gen = torch.Generator().manual_seed(seed)
    params = [
        torch.randn(n, 3, generator=gen) * 0.3,
        torch.randn(n, 4, generator=gen),
        0.04 * torch.exp(0.3 * torch.randn(n, 3, generator=gen)),
        torch.rand(n, generator=gen) * 0.8 + 0.1,
        torch.rand(n, 3, generator=gen),
    ]
    params = [p.to(device).requires_grad_() for p in params]
    cams = orbit_cameras(
        torch.rand(views, generator=gen) * 70 - 10, torch.linspace(-180, 180, views + 1)[:-1],
        torch.full((views,), 2.8), torch.full((views,), 40.0), size, size,
    ).to(device)
    return params, cams, torch.ones(3, device=device)


def time_fwd_bwd(render: Callable, params, cams, bg, warmup: int, reps: int) -> float:
    """Median seconds of one forward + backward pass."""
    def step() -> None:
        out = render(*params, cams, bg)
        (out.rgb.mean() + out.alpha.mean() + 0.1 * out.depth.mean()).backward()
        for p in params:
            p.grad = None

    sync = torch.cuda.synchronize if cams.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fmt_ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer configurations and repetitions")
    parser.add_argument("--views", type=int, default=4, help="cameras rendered per pass")
    parser.add_argument("--dense-budget-gb", type=float, default=4.0, help="skip dense runs estimated above this")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    sizes, counts = ([64, 128], [1000, 5000]) if args.quick else ([64, 128, 256], [1000, 5000, 20000])
    warmup, reps = (1, 3) if args.quick else (2, 5)
    with_gsplat = args.device == "cuda" and resolve_splat_backend("auto", "cuda") == "cuda"

    print(f"device={args.device} threads={torch.get_num_threads()} views={args.views} warmup={warmup} reps={reps}")
    header = f"{'px':>5} {'N':>6} {'tiled ms':>9} {'dense ms':>9} {'dense/tiled':>11}"
    print(header + (f" {'gsplat ms':>9} {'tiled/gsplat':>12}" if with_gsplat else ""))
    skipped = []
    for size in sizes:
        for n in counts:
            params, cams, bg = make_scene(n, args.views, size, args.device)
            tiled = time_fwd_bwd(render_splats_torch, params, cams, bg, warmup, reps)
            dense_gb = args.views * n * size * size * DENSE_BYTES_PER_ENTRY / 2**30
            dense = None
            if dense_gb <= args.dense_budget_gb:
                dense = time_fwd_bwd(render_splats_dense, params, cams, bg, warmup, reps)
            else:
                skipped.append(f"{size}px/{n}: ~{dense_gb:.0f} GB")
            ratio = f"{dense / tiled:.1f}x" if dense is not None else "skipped"
            line = f"{size:>5} {n:>6} {fmt_ms(tiled):>9} {fmt_ms(dense):>9} {ratio:>11}"
            if with_gsplat:
                gs = time_fwd_bwd(render_splats_gsplat, params, cams, bg, warmup, reps)
                line += f" {fmt_ms(gs):>9} {tiled / gs:>11.1f}x"
            print(line, flush=True)
    if skipped:
        print(f"dense skipped (estimated memory over {args.dense_budget_gb:g} GB): " + ", ".join(skipped))
    if args.device == "cuda" and not with_gsplat:
        print("gsplat not timed: its CUDA kernels are unavailable")


if __name__ == "__main__":
    main()
