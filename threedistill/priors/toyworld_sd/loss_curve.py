"""A training loss curve as CSV and a dependency-free SVG."""

from __future__ import annotations

import math
from pathlib import Path

from ...core.atomic import atomic_write_text


def smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def write_loss_curve(out: Path, losses: dict[str, list[float]]) -> None:
    """loss_curve.csv (phase, step, loss) and loss_curve.svg (both phases, log scale, smoothed)."""
    rows = ["phase,step,loss"] + [f"{name},{i},{v:.6g}" for name, values in losses.items() for i, v in enumerate(values)]
    atomic_write_text(out / "loss_curve.csv", "\n".join(rows) + "\n")
    width, height, pad = 640, 240, 40
    panels = []
    for k, (name, values) in enumerate(losses.items()):
        if not values:
            continue
        ys = [math.log10(max(v, 1e-8)) for v in smooth(values, max(1, len(values) // 100))]
        lo, hi = min(ys), max(ys)
        x0 = k * (width // 2) + pad
        w, h = width // 2 - 2 * pad, height - 2 * pad
        pts = " ".join(f"{x0 + w * i / max(1, len(ys) - 1):.1f},{pad + h * (hi - y) / max(hi - lo, 1e-9):.1f}"
                       for i, y in enumerate(ys))
        panels.append(
            f'<rect x="{x0}" y="{pad}" width="{w}" height="{h}" fill="none" stroke="#999"/>'
            f'<polyline points="{pts}" fill="none" stroke="#c33" stroke-width="1.5"/>'
            f'<text x="{x0}" y="{pad - 8}" font-size="12">{name} loss (log10, {len(values)} steps)</text>'
            f'<text x="{x0 + w + 2}" y="{pad + 10}" font-size="10">{10 ** hi:.3g}</text>'
            f'<text x="{x0 + w + 2}" y="{pad + h}" font-size="10">{10 ** lo:.3g}</text>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">'
           f'<rect width="100%" height="100%" fill="white"/>{"".join(panels)}</svg>\n')
    atomic_write_text(out / "loss_curve.svg", svg)
