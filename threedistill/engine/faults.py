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
from typing import Any, Callable, Optional

import torch

from ..config import RunConfig


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
