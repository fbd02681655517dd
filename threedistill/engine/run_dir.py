"""Run folders: outputs/<prompt-slug>/<guidance>-<representation>-<timestamp>/, never reused."""

from __future__ import annotations

import re
import time
from pathlib import Path


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
