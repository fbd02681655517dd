"""Run folders: outputs/<prompt-slug>/<guidance>-<representation>-<timestamp>/, never reused."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from ..core.atomic import append_text, atomic_write_text
from ..core.errors import UserError


def slugify(text: str, max_len: int = 60) -> str:
    """'A red mug!' -> 'a-red-mug'."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (slug[:max_len].rstrip("-")) or "prompt"


def new_run_dir(out: str | Path, prompt: str, guidance: str, representation: str) -> Path:
    """Create a fresh run folder; a clash with an existing one gets a numeric suffix."""
    parent = Path(out) / slugify(prompt)
    parent.mkdir(parents=True, exist_ok=True)
    stem = f"{guidance}-{representation}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1000):
        candidate = parent / (stem if i == 0 else f"{stem}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder under {parent}")


class RunFolder:
    """A run folder's log, config and metrics files (every write atomic except the appended log)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def log(self, message: str) -> None:
        """Append a timestamped line to log.txt."""
        append_text(self.path / "log.txt", f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append a row to metrics.jsonl."""
        append_text(self.path / "metrics.jsonl", json.dumps(row) + "\n")

    def save_config(self, text: str) -> None:
        atomic_write_text(self.path / "config.yaml", text)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_text(self.path / "metrics.json", json.dumps(metrics, indent=2) + "\n")

    def read_metrics(self) -> dict[str, Any]:
        """metrics.json ({} when the run has not finished)."""
        path = self.path / "metrics.json"
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"'{path}' is unreadable ({type(exc).__name__}); delete it and run `threedistill export` again") from None
        return data if isinstance(data, dict) else {}

    def update_metrics(self, values: dict[str, Any]) -> None:
        """Add `values` to an existing metrics.json (nothing when there is none yet)."""
        if (self.path / "metrics.json").exists():
            self.write_metrics({**self.read_metrics(), **values})
