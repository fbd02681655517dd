"""Run folders: outputs/<prompt-slug>/<guidance>-<representation>-<timestamp>/, never reused."""

from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from pathlib import Path
from typing import Any

from ..core.atomic import append_text, atomic_write_text, remove_stale_temporaries
from ..core.errors import UserError, disk_full, is_disk_full


WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))})


def slugify(text: str, max_len: int = 60) -> str:
    """A folder name for user text: 'A red mug!' -> 'a-red-mug'.

    Only lower-case ASCII letters, digits and '-' (accents dropped: 'café' -> 'cafe'), at most
    `max_len` characters, so no separator, '..', control character or drive letter gets through.
    Text with nothing left ('一只杯子') becomes 'prompt-<hash of the text>', empty text 'prompt', and a
    name Windows reserves ('CON', 'lpt1') gets '-prompt' appended."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:max_len].rstrip("-")
    if not slug:
        return f"prompt-{hashlib.sha1(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}" if text.strip() else "prompt"
    return f"{slug}-prompt" if slug in WINDOWS_RESERVED else slug


def new_run_dir(out: str | Path, prompt: str, guidance: str, representation: str) -> Path:
    """Create a fresh run folder `out/<prompt slug>/<guidance>-<representation>-<time>[-N]`, always inside
    `out`: a name another run took (even in the same second) gets the next suffix."""
    root = Path(out)
    parent = root / slugify(prompt)
    stem = slugify(f"{guidance}-{representation}", 80) + f"-{time.strftime('%Y%m%d-%H%M%S')}"
    i = 0
    while i < 1000:
        candidate = parent / (stem if i == 0 else f"{stem}-{i}")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            if parent.is_symlink():
                raise UserError(f"'{parent}' is a link, so the run folder would not be inside --out '{root}'; remove the link "
                                "or pass another --out")
            candidate.mkdir()
            return candidate
        except FileExistsError:
            i += 1
        except FileNotFoundError:  # a failed run removed the empty prompt folder meanwhile: make it again
            continue
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(exc, candidate) from None
            raise UserError(f"cannot create a run folder under '{parent}' ({exc.strerror or exc}); pass a writable --out") from None
    raise UserError(f"could not create a new run folder under '{parent}' (1000 taken); pass another --out")


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

    def remove_stale_temporaries(self) -> None:
        """Delete what writers killed mid-write left behind (core/atomic.py; never a live process's files)."""
        for sub in ("", "checkpoints", "export", "previews"):
            remove_stale_temporaries(self.path / sub)

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
