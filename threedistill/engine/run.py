"""A run: its plan of stages in one run folder, trained one `StageTrainer` after another.

`Run.start` validates the whole plan (engine/validate.py) before it makes the folder, so bad
input costs no work; each stage starts from the previous stage's result (or, for `animate`
and edits of a run folder, from another run's asset); the run's priors are shared between
stages (engine/priors.py); `Run.resume` continues from a checkpoint in whichever stage it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from rich.console import Console

from ..core.runtime import tune_allocator
from ..representations.convert import PreviousAsset
from .build import resolve_device
from .load import read_run
from .loop import StageTrainer
from .plan import Stage, plan_to_yaml
from .context import RunContext
from .priors import PriorPool
from .run_dir import RunFolder, new_run_dir
from .validate import validate_plan


class Run:
    """One run folder and the stage being trained (see the module docstring)."""

    def __init__(self, plan: list[Stage], run_dir: Path, console: Optional[Console] = None,
                 start: Optional[PreviousAsset] = None, stage_index: int = 0) -> None:
        tune_allocator()  # tensors freed every step are reused, not page-faulted in again
        self.plan = plan
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)
        self.console = console or Console(stderr=True)
        self.context = RunContext(plan, self.run_dir, self.folder, self.console, PriorPool(resolve_device(plan[0].cfg.device)))
        self.trainer = StageTrainer(self.context, stage_index, start)

    @classmethod
    def start(cls, plan: list[Stage], console: Optional[Console] = None, start: Optional[PreviousAsset] = None,
              run_dir: Optional[Path] = None) -> "Run":
        """Validate `plan`, make a new run folder under the first stage's `out` (unless `run_dir` is
        given), build the first stage and save config.yaml; a failure before training leaves no
        empty folder behind."""
        validate_plan(plan, start.name if start is not None else None)
        first = plan[0]
        if run_dir is None:
            representations = "-".join(dict.fromkeys(stage.names.representation for stage in plan))
            run_dir = new_run_dir(first.cfg.out, first.cfg.prompt, first.names.guidance, representations)
        try:
            run = cls(plan, run_dir, console, start)
        except BaseException:
            remove_if_empty(run_dir)
            raise
        run.save_config()
        return run

    @classmethod
    def resume(cls, run_dir: Path, console: Optional[Console] = None, checkpoint: Optional[Path] = None) -> "Run":
        """Rebuild a run from its config.yaml and last.pt (or the given checkpoint)."""
        run_dir = Path(run_dir)
        plan, state, index = read_run(run_dir, checkpoint)
        validate_plan(plan, None, first=index)
        run = cls(plan, run_dir, console, stage_index=index)
        run.trainer.load_state(state)
        run.folder.log(f"resumed {run.trainer.stage_title()}at step {run.trainer.step}")
        return run

    @property
    def stage_history(self) -> list[dict[str, Any]]:
        return self.context.stage_history

    # ------------------------------------------------------------------ files
    def save_config(self) -> None:
        self.folder.save_config(plan_to_yaml(self.plan))

    # ------------------------------------------------------------------ stages
    def next_stage(self) -> Optional[StageTrainer]:
        """The following stage, started from this one's result (None after the last)."""
        index = self.trainer.index + 1
        if index >= len(self.plan):
            return None
        self.trainer = StageTrainer(self.context, index, self.trainer.previous_asset())
        return self.trainer

    def train_to_end(self, on_stage_done: Callable[[StageTrainer, dict[str, Any]], None] = lambda trainer, summary: None
                     ) -> Optional[dict[str, Any]]:
        """Train the current stage and every later one; the final metrics, or None if interrupted."""
        while True:
            if not self.trainer.train():
                return None
            summary = self.trainer.finish()
            finished = self.trainer
            if self.next_stage() is None:
                return summary
            on_stage_done(finished, summary)


def remove_if_empty(run_dir: Path) -> None:
    """A run that failed before it wrote anything leaves no folder behind (nor an empty prompt folder)."""
    if run_dir.exists() and not any(p.is_file() for p in run_dir.rglob("*")):
        for sub in sorted(run_dir.rglob("*"), reverse=True):
            sub.rmdir()
        run_dir.rmdir()
        if not any(run_dir.parent.iterdir()):
            run_dir.parent.rmdir()
