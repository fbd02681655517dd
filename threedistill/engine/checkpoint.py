"""Checkpoints are data: tensors, numbers, strings and plain containers, written atomically.

A checkpoint is read with `torch.load(weights_only=True)`, whose unpickler builds only those
types and refuses any other object before constructing it, so a checkpoint from someone else
cannot run code here. It carries `format` and `version`; a file of another format or a newer
version is refused with one line.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ..core.atomic import atomic_path
from ..core.errors import UserError

CHECKPOINT_FORMAT = "threedistill-checkpoint"
CHECKPOINT_VERSION = 2
"""2: `format`/`version` keys, loaded with weights_only=True; 1 (no format key) had the same content."""
READABLE_VERSIONS = (1, 2)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save of `state` (plus format and version) through a temporary file and a rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a Python file: a failed write is an OSError with its errno
        torch.save({"format": CHECKPOINT_FORMAT, **state, "version": CHECKPOINT_VERSION}, f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`; a missing, corrupt, foreign or unsafe file is a UserError."""
    if not path.exists():
        raise UserError(f"no checkpoint at '{path}'; pass a run folder that has checkpoints/last.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise UserError(f"checkpoint '{path}' holds Python objects other than tensors, numbers and strings, which could run "
                            "code, so it was not loaded; use a checkpoint written by threedistill") from None
        raise UserError(f"checkpoint '{path}' is corrupt or unreadable (UnpicklingError); resume from another step-*.pt") from None
    except Exception as exc:  # noqa: BLE001 - any other failure to read the file means a bad file
        raise UserError(f"checkpoint '{path}' is corrupt or unreadable ({type(exc).__name__}); resume from another step-*.pt") from None
    if not isinstance(state, dict) or "step" not in state or "representation" not in state:
        raise UserError(f"'{path}' is not a threedistill checkpoint; resume from another step-*.pt")
    version = state.get("version", 1)
    if state.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT or version not in READABLE_VERSIONS:
        raise UserError(f"'{path}' is a checkpoint of format {state.get('format')!r} version {version!r}, which this threedistill "
                        f"cannot read (versions {READABLE_VERSIONS}); use the threedistill version that wrote it")
    return state
