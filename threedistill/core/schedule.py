"""Scalar schedules: a constant or (step, value) points, linear in between.

A point's step is absolute when it is an integer (or > 1), and a fraction of the run's
total steps when it is a float in [0, 1] (e.g. `[(0, 980), (0.5, 500)]` anneals over the
first half of any run length).
"""

from __future__ import annotations

from typing import Sequence, Union

Schedule = Union[float, list[tuple[float, float]]]


def _absolute_step(step: float, total_steps: int) -> float:
    if isinstance(step, float) and 0.0 <= step <= 1.0 and not float(step).is_integer():
        return step * total_steps
    if isinstance(step, float) and step == 1.0:
        return float(total_steps)
    return float(step)


def validate_schedule(name: str, value: Schedule) -> None:
    """Raise ValueError naming `name` when a schedule is malformed."""
    if isinstance(value, (int, float)):
        return
    if not isinstance(value, Sequence) or not value:
        raise ValueError(f"{name} must be a number or a list of (step, value) points")
    for point in value:
        if not isinstance(point, Sequence) or len(point) != 2:
            raise ValueError(f"{name}: each point must be (step, value), got {point!r}")


def evaluate_schedule(value: Schedule, step: int, total_steps: int) -> float:
    """The schedule's value at `step` (clamped to its first/last point outside their range)."""
    if isinstance(value, (int, float)):
        return float(value)
    points = sorted((_absolute_step(s, total_steps), float(v)) for s, v in value)
    if step <= points[0][0]:
        return points[0][1]
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if step <= s1:
            return v0 + (v1 - v0) * (step - s0) / max(s1 - s0, 1e-12)
    return points[-1][1]


def lambda_weights(config: object) -> dict[str, Schedule]:
    """Loss-term weights of a config dataclass: its `lambda_<name>` fields as {name: schedule}
    (threestudio's lambda_* pattern)."""
    import dataclasses

    if not dataclasses.is_dataclass(config):
        raise TypeError(f"{type(config).__name__} is not a config dataclass")
    return {f.name[len("lambda_"):]: getattr(config, f.name) for f in dataclasses.fields(config) if f.name.startswith("lambda_")}


def check_lambda_schedules(config: object, section: str) -> None:
    """Every `lambda_<name>` field of `config` is a number or (step, value) points, else a UserError
    naming the flag (`--<section>.lambda-<name>`)."""
    from .errors import UserError

    for name, value in lambda_weights(config).items():
        try:
            validate_schedule(f"lambda_{name}", value)
        except (ValueError, TypeError) as exc:
            raise UserError(f"--{section}.lambda-{name.replace('_', '-')}: {exc}") from None
