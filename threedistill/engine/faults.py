"""Faults a training step survives or stops on, and the one-line messages that say what to change.

- Out of memory (the CUDA allocator's `torch.OutOfMemoryError`, or the CPU allocator's "can't
  allocate memory"): the step is rolled back to its start (random-number and sampler state;
  parameters are untouched before the optimiser step), its checkpoint is saved, and the run
  stops with the settings that reduce memory.
- A non-finite loss or gradient skips the step (the parameters never see it). After
  `log.max_nonfinite_steps` such steps in a row the run has diverged: it stops with the
  checkpoint of the state before the first of them and names the likely causes.

`StepGuard` holds what a rollback needs (state at the start of the step, the snapshot before a
streak of bad steps); engine/loop.py calls it around every step.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional

import torch

from ..config import RunConfig
from ..core.errors import RunStopped

if TYPE_CHECKING:
    from .loop import StageTrainer


def is_out_of_memory(exc: BaseException) -> bool:
    """The CUDA allocator's error, or the CPU allocator's failure to allocate."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def first_line(exc: BaseException, limit: int = 120) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has(cfg: Any, name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(cfg))


def memory_knobs(cfg: RunConfig, finishing: bool = False) -> str:
    """The settings of this stage that lower its memory use, with their current values (`finishing`:
    those of the scoring and exports that follow the last step)."""
    if finishing:
        return (f"mesh.resolution (now {cfg.mesh.resolution}), log.turntable_resolution (now {cfg.log.turntable_resolution}), "
                f"log.eval_views (now {cfg.log.eval_views})")
    knobs = [f"sampler.batch_size (now {cfg.sampler.batch_size})",
             f"sampler.width/height (now {cfg.sampler.width}x{cfg.sampler.height})"]
    for name in ("attention_slicing", "vae_tiling"):
        if _has(cfg.prior, name) and not getattr(cfg.prior, name):
            knobs.append(f"prior.{name}: true")
    for name in ("max_points", "num_points", "samples_per_ray"):
        if _has(cfg.representation, name):
            knobs.append(f"representation.{name} (now {getattr(cfg.representation, name)})")
            break
    return ", ".join(knobs)


def divergence_causes(cfg: RunConfig) -> str:
    """The likely causes of a run whose loss stays non-finite, with their current values."""
    lrs = [f.name for f in dataclasses.fields(cfg.representation) if f.name.startswith("lr_") and f.name != "lr_final_factor"]
    causes = [f"a learning rate too high (representation.{'/'.join(lrs[:3])}{'/...' if len(lrs) > 3 else ''})"] if lrs else []
    if _has(cfg.guidance, "cfg_scale"):
        scale = cfg.guidance.cfg_scale  # type: ignore[attr-defined]
        causes.append(f"a CFG scale too high (guidance.cfg_scale, now {'the prior default' if scale is None else scale})")
    if _has(cfg.prior, "dtype"):
        causes.append("float16 overflow in the prior (prior.dtype: float32)")
    if _has(cfg.guidance, "grad_clip"):
        causes.append("unbounded guidance gradients (guidance.grad_clip)")
    return ", ".join(causes)


def clone_state(state: Any) -> Any:
    """A deep copy of a checkpoint state (tensors cloned), unaffected by later steps."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: clone_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(clone_state(v) for v in state)
    return copy.deepcopy(state)


class StepGuard:
    """Per-step rollback state and the non-finite streak (see the module docstring)."""

    def __init__(self, max_nonfinite_steps: int) -> None:
        self.max_nonfinite_steps = max_nonfinite_steps
        self.rng: Optional[torch.Tensor] = None
        self.sampler: Any = None
        self.updated = False
        """True once the optimiser stepped in the current step."""
        self.streak = 0
        self.first_bad_step = 0
        self.before_streak: Optional[dict[str, Any]] = None

    def begin(self, generator: torch.Generator, sampler_state: dict[str, Any]) -> None:
        """Remember the state a failed step rolls back to."""
        self.rng = generator.get_state()
        self.sampler = copy.deepcopy(sampler_state)
        self.updated = False

    def finite(self) -> None:
        self.streak, self.before_streak = 0, None

    def nonfinite(self, step: int, state_before: Callable[[], dict[str, Any]]) -> bool:
        """Count a skipped step; True when the streak reached the limit (the run must stop).

        At the first bad step of a streak `state_before()` gives the checkpoint entries a skipped
        step changes (step, random-number and sampler state, counters, the objective's state);
        the parameters and the optimiser are the same before and after skipped steps."""
        if self.streak == 0:
            self.first_bad_step = step
            self.before_streak = clone_state(state_before())
        self.streak += 1
        return 0 < self.max_nonfinite_steps <= self.streak


def state_before_step(trainer: "StageTrainer") -> dict[str, Any]:
    """The checkpoint entries a skipped step changed, as they were when it started."""
    guard = trainer.guard
    return {"step": trainer.step - 1, "generator": guard.rng, "sampler": guard.sampler, "skipped_steps": trainer.skipped_steps - 1,
            "elapsed": trainer.elapsed, "guidance": trainer.objective.state_dict()}


def out_of_memory(where: str, exc: BaseException, saved: str, cfg: RunConfig, run_dir: Path, finishing: bool = False) -> RunStopped:
    """The one-line error of an out-of-memory stop: what failed, what was saved, what to lower, how to continue."""
    return RunStopped(f"out of memory {where} ({first_line(exc)}); {saved}; to use less memory lower "
                      f"{memory_knobs(cfg, finishing)} in {run_dir}/config.yaml, then continue with `threedistill resume {run_dir}`")


def stop_out_of_memory(trainer: "StageTrainer", exc: BaseException) -> NoReturn:
    """Roll the failed step back to its start (unless the optimiser stepped), checkpoint it, stop."""
    failed, guard = trainer.step + 1, trainer.guard
    trainer.optimizer.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if not guard.updated and guard.rng is not None:
        trainer.generator.set_state(guard.rng)
        trainer.sampler.load_state_dict(guard.sampler)
        trainer.consistent = True
        trainer.save_checkpoint()
    trainer.log(f"out of memory at step {failed}: {first_line(exc)}")
    saved = f"saved the checkpoint of step {trainer.step}" if trainer.consistent else "the last checkpoint on disk is kept"
    raise out_of_memory(f"at step {failed}", exc, saved, trainer.cfg, trainer.run_dir) from None


def stop_diverged(trainer: "StageTrainer") -> NoReturn:
    """Checkpoint the state from before the streak of non-finite steps, stop with the likely causes."""
    guard = trainer.guard
    first, last = guard.first_bad_step, trainer.step
    assert guard.before_streak is not None
    trainer.write_checkpoint({**trainer.checkpoint_state(), **guard.before_streak})
    trainer.log(f"steps {first}-{last}: non-finite loss or gradient; stopped with the checkpoint of step {first - 1}")
    raise RunStopped(f"the loss or its gradient was not finite (or had none: nothing rendered) for {last - first + 1} steps in a "
                     f"row ({first}-{last}): the optimisation diverged; saved the checkpoint of step {first - 1}, before the first "
                     f"of them; likely causes: {divergence_causes(trainer.cfg)}; change them in {trainer.run_dir}/config.yaml and "
                     f"continue with `threedistill resume {trainer.run_dir}` (log.max_nonfinite_steps, now "
                     f"{guard.max_nonfinite_steps}, sets how many such steps stop a run)")
