"""Checkpoints: written atomically, read with a clear error when corrupt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.atomic import atomic_path
from ..core.errors import UserError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` (UserError when missing or corrupt)."""
    if not path.exists():
        raise UserError(f"no checkpoint at '{path}'; pass a run folder that has checkpoints/last.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise UserError(f"checkpoint '{path}' is corrupt or unreadable ({type(exc).__name__}); resume from another step-*.pt") from None
    if not isinstance(state, dict) or "step" not in state or "representation" not in state:
        raise UserError(f"'{path}' is not a threedistill checkpoint; resume from another step-*.pt")
    return state
