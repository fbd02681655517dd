"""A run: its plan of stages in one run folder, trained one `StageTrainer` after another.

`Run.start` validates the whole plan (engine/validate.py) before it makes the folder, so bad
input costs no work; each stage starts from the previous stage's result (or, for `animate`
and edits of a run folder, from another run's asset); the run's priors are shared between
stages (engine/priors.py); `Run.resume` continues from a checkpoint in whichever stage it was.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from rich.console import Console

from ..core.runtime import tune_allocator
from ..representations.convert import PreviousAsset
from ..core.errors import DiskFull, RunStopped
from .build import resolve_device
from .callbacks import LoopCallback
from .load import read_run
from .loop import StageTrainer
from .plan import Stage, plan_to_yaml
from .context import RunContext
from .faults import is_out_of_memory, out_of_memory
from .priors import PriorPool
from .run_dir import RunFolder, new_run_dir
from .validate import validate_plan


class Run:
    """One run folder and the stage being trained (see the module docstring)."""

    def __init__(self, plan: list[Stage], run_dir: Path, console: Optional[Console] = None,
                 start: Optional[PreviousAsset] = None, stage_index: int = 0, callbacks: Sequence[LoopCallback] = ()) -> None:
        tune_allocator()  # tensors freed every step are reused, not page-faulted in again
        self.plan = plan
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)
        self.console = console or Console(stderr=True)
        self.context = RunContext(plan, self.run_dir, self.folder, self.console, PriorPool(resolve_device(plan[0].cfg.device)),
                                  callbacks=tuple(callbacks))
        self.trainer = StageTrainer(self.context, stage_index, start)
        self.interrupt_saved = False

    @classmethod
    def start(cls, plan: list[Stage], console: Optional[Console] = None, start: Optional[PreviousAsset] = None,
              run_dir: Optional[Path] = None, callbacks: Sequence[LoopCallback] = (), validated: bool = False) -> "Run":
        """Validate `plan` (unless the caller just did: `validated`), make a new run folder under the
        first stage's `out` (unless `run_dir` is given), build the first stage and save config.yaml;
        a failure before training leaves no empty folder behind."""
        if not validated:
            validate_plan(plan, start.name if start is not None else None)
        first = plan[0]
        made_here = run_dir is None
        if run_dir is None:
            representations = "-".join(dict.fromkeys(stage.names.representation for stage in plan))
            label = Path(first.cfg.image).stem if first.cfg.image else first.cfg.prompt
            run_dir = new_run_dir(first.cfg.out, label, first.names.guidance, representations)
        try:
            run = cls(plan, run_dir, console, start, callbacks=callbacks)
            run.save_config()
            run.trainer.save_checkpoint(keep_step_file=False)  # resumable from the start, whatever stops it
        except BaseException:
            if made_here:  # nothing was trained: no partial folder is left behind
                remove_run_folder(run_dir)
            raise
        return run

    @classmethod
    def resume(cls, run_dir: Path, console: Optional[Console] = None, checkpoint: Optional[Path] = None,
               callbacks: Sequence[LoopCallback] = ()) -> "Run":
        """Rebuild a run from its config.yaml and last.pt (or the given checkpoint)."""
        plan, state, index = read_run(run_dir, checkpoint)
        validate_plan(plan, None, first=index)
        return cls.from_checkpoint(Path(run_dir), plan, state, index, console, callbacks)

    @classmethod
    def from_checkpoint(cls, run_dir: Path, plan: list[Stage], state: dict[str, Any], index: int,
                        console: Optional[Console] = None, callbacks: Sequence[LoopCallback] = ()) -> "Run":
        """The run of a checkpoint already read (`read_run`) and validated, at the step it holds."""
        RunFolder(run_dir).remove_stale_temporaries()
        run = cls(plan, run_dir, console, stage_index=index, callbacks=callbacks)
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

    def checkpoint_if_consistent(self) -> bool:
        """Save the current stage's checkpoint unless a step was cut off half-way (then the last
        one on disk stands); True when saved."""
        if not self.trainer.consistent:
            return False
        self.trainer.save_checkpoint(keep_step_file=False)
        return True

    def train_safely(self, on_stage_done: Callable[[StageTrainer, dict[str, Any]], None] = lambda trainer, summary: None
                     ) -> Optional[dict[str, Any]]:
        """`train_to_end` for the CLI: a signal outside a step (setup, scoring, exports) checkpoints
        (`interrupt_saved` says whether) and propagates; out of memory and a full disk become one-line
        RunStopped errors that say how to continue."""
        try:
            return self.train_to_end(on_stage_done)
        except KeyboardInterrupt:
            self.interrupt_saved = self.checkpoint_if_consistent()
            raise
        except DiskFull as exc:
            raise RunStopped(f"{exc}, then continue with `threedistill resume {self.run_dir}`") from None
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            trainer = self.trainer
            saved = f"saved the checkpoint of step {trainer.step}" if self.checkpoint_if_consistent() else "the last checkpoint on disk is kept"
            raise out_of_memory(f"{trainer.stage_title()}after step {trainer.step}", exc, saved, trainer.cfg, self.run_dir,
                                finishing=trainer.step >= trainer.cfg.steps) from None

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


def remove_run_folder(run_dir: Path) -> None:
    """Remove a run folder made by a run that stopped before training, and its prompt folder when
    that is left empty (another run may be creating its own folder there at the same moment)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty: another run's folder is there
        run_dir.parent.rmdir()
