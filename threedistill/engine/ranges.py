"""Every number of a run config checked against its range before any work (engine/validate.py).

Three layers, the first that matches a setting wins:

1. `BOUNDS`: explicit (min, max) for dotted keys (fnmatch patterns, e.g. `sampler.width`,
   `*.sh_degree`);
2. `NAME_BOUNDS`: rules on a field's own name that hold for every component, present and future
   (`lr*` >= 0, `*_every` >= 0, `num_*` >= 1, `*resolution` in [1, 8192], ...);
3. by type: every float finite (tuples and schedules included), every int >= 0.

Upper bounds only refuse nonsense (a 10^9-pixel render, 10^12 steps), far above any real run.
A component's own `check()` still judges how its settings combine.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any, Iterator, Optional

from ..config import RunConfig
from ..core.errors import UserError

Bound = tuple[Optional[float], Optional[float]]
BIG = 10**8

BOUNDS: dict[str, Bound] = {
    "steps": (1, BIG),
    "seed": (-(2**63), 2**63 - 1),
    "*.reference_seed": (-(2**63), 2**63 - 1),
    "sampler.width": (8, 8192),
    "sampler.height": (8, 8192),
    "sampler.batch_size": (1, 4096),
    "sampler.elevation_range": (-90, 90),
    "sampler.azimuth_range": (-720, 720),
    "sampler.distance_range": (1e-3, 1e6),
    "sampler.fov_range": (1, 179),
    "render.background": (0, 1),
    "render.background_lr": (0, None),
    "prompts.*_threshold": (0, 180),
    "log.max_nonfinite_steps": (0, None),
    "mesh.resolution": (8, 1024),
    "mesh.calibration_resolution": (8, 4096),
    "mesh.calibration_views": (0, 10_000),
    "mesh.texture_size": (8, 16384),
    "mesh.bound": (1e-6, 1e6),
    "mesh.chunk_points": (1, 10**9),
    "mesh.decimate_faces": (0, 10**9),
    "mesh.level": (-1e6, 1e6),
    "motion.orbit_degrees": (-3600, 3600),
    "motion.frames": (2, 1000),
    "motion.image_weight": (0, None),
    "deformation.multires": (1, 64),
    "deformation.lambda_*": (0, None),
    "deformation.occupancy_times": (1, 1000),
    "*.sh_degree": (0, 3),
    "*.min_step": (0, 999),
    "*.max_step": (0, 999),
    "*.delta_t": (1, 999),
    "*.log2_table_size": (1, 26),
    "*.levels": (1, 32),
    "*.init_subdivisions": (0, 8),
    "*.init_scale": (1e-9, 1e3),
    "*.init_std": (0, 1e3),
    "*.init_radius": (1e-6, 1e3),
    "*.blob_std": (1e-6, 1e6),
    "*.normal_eps": (1e-9, 1),
    "*.scene_extent": (1e-9, 1e6),
    "*.lr_final_factor": (1e-12, 1e6),
    "*.lower_bound": (0, 1),
    "*.upper_bound": (0, 1),
    "*.gamma": (0, 1),
    "*.entropy_weight": (0, 1),
    "*.occ_threshold": (0, None),
    "*.early_stop_eps": (0, 1),
    "*.alpha_threshold": (0, 1),
    "*.pixel_grad_clip": (0, None),
    "*.grad_clip": (0, None),
    "*.temperature": (1e-6, 1e6),
    "*.data_noise": (0, 1e6),
    "*.frames": (1, 1000),
    "*.particles": (1, 64),
    "*.image_term_weight": (0, 1e6),
    "*.offset_noise": (0, 1e3),
}

NAME_BOUNDS: dict[str, Bound] = {
    "lr*": (0, 1e6),
    "lambda_*": (-1e9, 1e9),
    "*_every": (0, BIG),
    "num_*": (1, BIG),
    "max_points": (1, BIG),
    "*_references*": (1, 10**6),
    "*resolution": (1, 8192),
    "*_frames": (1, 100_000),
    "*_views": (1, 100_000),
    "*_size": (1, 1 << 20),
    "*_dim": (1, 1 << 16),
    "*features*": (1, 1024),
    "*_rank": (1, 4096),
    "*_steps": (0, BIG),
    "steps": (1, 10_000),
    "*_stride": (1, 999),
    "*dropout": (0, 1),
    "*fraction": (0, 1),
    "*decay": (0, 1),
    "percent_*": (0, 1),
    "prune_opacity": (0, 1),
    "relocate_opacity": (0, 1),
    "bound": (1e-6, 1e6),
    "samples_per_ray": (1, 4096),
    "*_dilate": (0, 64),
    "*_downscale": (0, 1024),
    "kappa": (-1e9, 1e9),
}


def check_ranges(cfg: RunConfig) -> None:
    """Raise a one-line UserError for the first setting of `cfg` outside its range."""
    for key, value in _settings(cfg):
        bound = _bound(key)
        for number in _numbers(value):
            problem = _problem(number, bound, isinstance(number, int))
            if problem:
                flag = "--" + key.replace("_", "-")
                shown = value if isinstance(value, (int, float)) else number
                raise UserError(f"{flag} {shown!r} {problem}; pass a value in that range")


def _settings(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _settings(value, key + ".")
        else:
            yield key, value


def _numbers(value: Any) -> Iterator[int | float]:
    """The numbers in a setting: itself, or those of a tuple, list or schedule (bools are not numbers)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (list, tuple)) and len(item) == 2:  # a schedule point (step, value): the value
                yield from _numbers(item[1])
            else:
                yield from _numbers(item)


def _bound(key: str) -> Optional[Bound]:
    for pattern, bound in BOUNDS.items():
        if fnmatch.fnmatchcase(key, pattern):
            return bound
    name = key.rsplit(".", 1)[-1]
    for pattern, bound in NAME_BOUNDS.items():
        if fnmatch.fnmatchcase(name, pattern):
            return bound
    return None


def _problem(number: int | float, bound: Optional[Bound], is_int: bool) -> Optional[str]:
    if not is_int and not math.isfinite(number):
        return "is not a finite number"
    low, high = bound if bound is not None else ((0, None) if is_int else (None, None))
    if low is not None and number < low or high is not None and number > high:
        if low is not None and high is not None:
            return f"is out of range: it must be between {low:g} and {high:g}"
        return f"is out of range: it must be >= {low:g}" if low is not None else f"is out of range: it must be <= {high:g}"
    return None
