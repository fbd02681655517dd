"""The loop's callback interface: what watches a run (the live viewer, TensorBoard) or steers it.

A `LoopCallback` is handed to `Run` (engine/run.py) and called by every stage's loop
(engine/loop.py) on its own thread, between steps, so it sees a consistent asset. Every method
is a no-op by default: a callback overrides what it needs. A run without callbacks iterates over
an empty tuple, so watching costs nothing when off.

Steering goes through the trainer's own operations, never around them: `request_stop()` ends the
stage as Ctrl-C does (a checkpoint, `threedistill resume` continues), `save_checkpoint()` writes
one now, and a callback that blocks in `on_step` pauses the loop (it must return once
`trainer.stop_requested` is set, so Ctrl-C still ends a paused run).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .loop import StageTrainer


class LoopCallback:
    """Hooks a run calls in order: `on_stage_start`, `on_step` after every step, `on_stage_end`,
    and `on_run_end` once the last stage has written metrics.json and its exports."""

    def on_stage_start(self, trainer: "StageTrainer") -> None:
        """A stage is about to train (also when a run resumes inside it)."""

    def on_step(self, trainer: "StageTrainer", logs: dict[str, float]) -> None:
        """Step `trainer.step` is done; `logs` holds its scalars (loss, terms, t_mean, ...)."""

    def on_stage_end(self, trainer: "StageTrainer", summary: dict[str, Any]) -> None:
        """A stage finished and was scored (`summary` is its part of metrics.json)."""

    def on_run_end(self, run_dir: Path, summary: dict[str, Any], exported: Sequence[Path]) -> None:
        """The run finished: its metrics and the files written into export/."""

    def close(self) -> None:
        """The run is over (finished, stopped or failed): release servers, files, threads."""
