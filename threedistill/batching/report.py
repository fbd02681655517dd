"""The batch report, rewritten as runs finish: batch.csv and batch.json (one row per run),
report.md (a table per prompt) and contact_sheet.png (each run's thumbnail, a row per prompt).

Columns: run (its folder inside the batch folder), prompt, seed, overrides (JSON), status
(queued, finished, skipped: finished by an earlier submission, failed, interrupted: the
driver was stopped; stopped: a sweep's trial stopped early), attempt (task attempts
on the folder so far), resumed_from (the checkpoint's step when the run continued one), steps,
seconds (the run's own training time, metrics.json), wall_s (the task's time: loading, training,
scoring, exports, thumbnail), gpu, node, the run's scores (mask_iou, psnr, chamfer, ...) and error.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from ..core.atomic import atomic_write_text
from .task import THUMBNAIL

FIRST_COLUMNS = ("run", "prompt", "seed", "overrides", "status", "attempt", "resumed_from", "steps", "seconds", "wall_s", "gpu", "node")
LAST_COLUMNS = ("error",)
HIDDEN = ("pid",)


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The fixed columns, then every score column any row has (sorted), then error."""
    seen = {k for row in rows for k in row}
    scores = sorted(seen - set(FIRST_COLUMNS) - set(LAST_COLUMNS) - set(HIDDEN))
    return [*FIRST_COLUMNS, *scores, *LAST_COLUMNS]


def write_tables(out: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> None:
    """batch.csv and batch.json (with `meta`: timings of the batch itself), atomically."""
    names = columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in names})
    atomic_write_text(out / "batch.csv", buffer.getvalue())
    atomic_write_text(out / "batch.json", json.dumps({"meta": meta, "rows": list(rows)}, indent=2, default=str) + "\n")


def write_markdown(out: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> None:
    """report.md: counts, then a table per prompt (best first by mask IoU when there is one)."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    lines = ["# Batch report", "", ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + f" of {len(rows)} runs.", ""]
    if meta:
        lines += [", ".join(f"{k}: {v}" for k, v in meta.items()), ""]
    best = best_row(rows)
    if best is not None:
        metric = meta.get("metric", "")
        lines += [f"Best by {metric}: {best['run']} (overrides {best['overrides']}): {_cell(best.get(metric, ''))}", ""]
    if (out / "contact_sheet.png").is_file():
        lines += ["![contact sheet](contact_sheet.png)", ""]
    names = [c for c in columns(rows) if c not in ("prompt", "node")]
    for prompt, group in grouped(rows).items():
        group = sorted(group, key=lambda r: -float(r["mask_iou"]) if isinstance(r.get("mask_iou"), (int, float)) else 0.0)
        lines += [f"## {prompt}", "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        lines += ["| " + " | ".join(_cell(row.get(k, "")) for k in names) + " |" for row in group]
        lines.append("")
    atomic_write_text(out / "report.md", "\n".join(lines))


def best_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The row a sweep marked best (tune.py), if any."""
    return next((row for row in rows if row.get("best") is True), None)


def grouped(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["prompt"], []).append(row)
    return groups


def _cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def write_contact_sheet(out: Path, rows: Sequence[dict[str, Any]], label_height: int = 14, gap: int = 12) -> Path | None:
    """contact_sheet.png: a row per prompt (its label above), each run's thumbnail in spec order;
    None while no run has a thumbnail."""
    import numpy as np
    from PIL import Image, ImageDraw

    from ..export.images import save_image

    strips: list[np.ndarray] = []
    for prompt, group in grouped(rows).items():
        thumbs = [np.asarray(Image.open(path).convert("RGB")) for row in group
                  if (path := out / row["run"] / THUMBNAIL).is_file()]
        if not thumbs:
            continue
        height = max(t.shape[0] for t in thumbs)
        strip = np.concatenate([np.pad(t, ((0, height - t.shape[0]), (0, gap), (0, 0)), constant_values=255) for t in thumbs], axis=1)
        label = Image.new("RGB", (strip.shape[1], label_height), "white")
        ImageDraw.Draw(label).text((2, 1), prompt[:200], fill="black")
        strips.append(np.concatenate([np.asarray(label), strip], axis=0))
    if not strips:
        return None
    width = max(s.shape[1] for s in strips)
    sheet = np.concatenate([np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips], axis=0)
    return save_image(out / "contact_sheet.png", sheet)


def write_report(out: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any], sheet: bool = True) -> None:
    """Every report file (the contact sheet only when `sheet`: it reads every thumbnail)."""
    write_tables(out, rows, meta)
    if sheet:
        write_contact_sheet(out, rows)
    write_markdown(out, rows, meta)
