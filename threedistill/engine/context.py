"""What every stage of a run shares: its plan, its folder, its console, its priors, its loop
callbacks and the scores of the stages done so far (`Run` holds one; each `StageTrainer` reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from .callbacks import LoopCallback
from .plan import Stage
from .priors import PriorPool
from .run_dir import RunFolder


@dataclass
class RunContext:
    plan: list[Stage]
    run_dir: Path
    folder: RunFolder
    console: Console
    priors: PriorPool
    stage_history: list[dict[str, Any]] = field(default_factory=list)
    """Each finished stage's summary (metrics.json's `stages`), carried in every checkpoint."""
    callbacks: Sequence[LoopCallback] = ()
    """What watches or steers the loop (engine/callbacks.py): the live viewer, TensorBoard."""
