"""Stable run folder names: the same (prompt, seed, overrides) gives the same folder on every
submission, so a resubmitted batch finds its finished and unfinished runs."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..engine.run_dir import slugify


def overrides_key(overrides: dict[str, Any]) -> str:
    """The overrides as canonical JSON (sorted keys): what the folder name's hash is taken of."""
    return json.dumps(overrides, sort_keys=True, default=str)


def run_folder_name(prompt: str, seed: int, overrides: dict[str, Any]) -> str:
    """`<prompt slug>/seed-<seed>` and, for a run with overrides, `-<readable overrides>-<hash>`:
    the readable part is cut at 40 characters, the hash of the canonical overrides keeps it unique."""
    name = f"{slugify(prompt)}/seed-{seed}"
    if not overrides:
        return name
    readable = slugify("-".join(f"{k}-{v}" for k, v in sorted(overrides.items())), 40)
    digest = hashlib.sha1(overrides_key(overrides).encode()).hexdigest()[:6]
    return f"{name}-{readable}-{digest}"
