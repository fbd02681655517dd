"""A batch spec: a prompts file or a YAML sweep, expanded into one `BatchRun` per run folder.

A prompts file has one prompt a line (`#` starts a comment); every prompt runs once per seed
(`--seeds`, default 0). A YAML sweep (`.yaml` / `.yml`) names the same things and the settings:

    prompts: [a red mug, a snowman]        # or a prompts file, relative to this file
    seeds: [0, 1]                          # --seeds on the command line wins
    flags: {config: quick, prior: toyworld}  # settings of every run (td.run keywords)
    grid:                                  # every combination of these values ...
      guidance.cfg_scale: [1.0, 2.0]
    runs:                                  # ... times each of these override sets
      - {guidance: sds}
      - {guidance: vsd, guidance.particles: 2}

Settings are `threedistill run` flags in keyword form (api.py `override_flags`): component names
(`guidance: vsd`), sections as mappings, dotted keys. A run's flags are, in order (later ones
win): the spec's `flags`, the command line's run flags, the run's grid values and override set,
then its prompt, seed and folder. Every run is parsed and validated here, before Ray starts, so
a bad spec is one line and exit 2 (`check_runs`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..api import override_flags
from ..config import _read_yaml
from ..core.errors import UserError
from .naming import run_folder_name

SPEC_KEYS = ("prompts", "seeds", "flags", "grid", "runs")
PER_RUN_FLAGS = ("--prompt", "--seed", "--out")
"""Set by the batch for each run: prompts come from the spec, seeds from --seeds, the folder from --out."""
WORKER_FLAGS = ["--log.no-progress"]
"""A worker has no terminal: the batch shows one progress display for all runs."""


@dataclass
class BatchRun:
    """One run of a batch: what varies (prompt, seed, overrides) and its full `threedistill run` flags."""

    prompt: str
    seed: int
    overrides: dict[str, Any]
    flags: list[str] = field(repr=False)
    name: str
    """The run folder inside the batch folder: `<prompt slug>/seed-<seed>[-<overrides>-<hash>]`, the same on every submission."""

    def run_dir(self, out: Path) -> Path:
        return out / self.name


@dataclass
class Spec:
    """A spec file read: prompts, seeds and the settings of each variant."""

    prompts: list[str]
    seeds: list[int]
    flags: list[str]
    variants: list[dict[str, Any]]


def read_spec(path: Path, seeds: Optional[Sequence[int]] = None) -> Spec:
    """A prompts file or a YAML sweep (module docstring); `seeds` (the command line's) win over the file's."""
    if not path.is_file():
        raise UserError(f"batch spec not found: '{path}'; pass a prompts file (one prompt a line) or a YAML sweep")
    if path.suffix.lower() in (".yaml", ".yml"):
        return spec_from_mapping(_read_yaml(path), f"'{path}'", path.parent, seeds)
    return Spec(read_prompts(path), list(seeds) if seeds else [0], [], [{}])


def read_prompts(path: Path) -> list[str]:
    """The prompts of a prompts file: one a line, `#` comments and blank lines skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read prompts file '{path}' ({type(exc).__name__}); pass a UTF-8 text file") from None
    prompts = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise UserError(f"prompts file '{path}' has no prompts; write one prompt a line")
    return list(dict.fromkeys(prompts))


def spec_from_mapping(data: dict[str, Any], source: str, folder: Path, seeds: Optional[Sequence[int]] = None) -> Spec:
    """A YAML sweep's mapping (or `td.batch`'s) as a `Spec`."""
    unknown = [k for k in data if k not in SPEC_KEYS]
    if unknown:
        raise UserError(f"batch spec {source}: unknown key '{unknown[0]}'; keys: {', '.join(SPEC_KEYS)}")
    prompts_value = data.get("prompts")
    if isinstance(prompts_value, str):
        prompts = read_prompts(folder / prompts_value)
    elif isinstance(prompts_value, list) and prompts_value and all(isinstance(p, str) and p.strip() for p in prompts_value):
        prompts = list(dict.fromkeys(p.strip() for p in prompts_value))
    else:
        raise UserError(f"batch spec {source}: 'prompts' must be a list of prompts or a prompts file; got {prompts_value!r}")
    chosen_seeds = list(seeds) if seeds else _seeds(data.get("seeds", [0]), source)
    flags = {} if data.get("flags") is None else data["flags"]
    if not isinstance(flags, dict):
        raise UserError(f"batch spec {source}: 'flags' must be a mapping of settings, e.g. {{config: quick}}")
    return Spec(prompts, chosen_seeds, override_flags(flags), _variants(data.get("grid"), data.get("runs"), source))


def _seeds(value: Any, source: str) -> list[int]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in values):
        raise UserError(f"batch spec {source}: 'seeds' must be a list of non-negative integers, got {value!r}")
    return list(dict.fromkeys(values))


def _variants(grid: Any, runs: Any, source: str) -> list[dict[str, Any]]:
    """Every combination of the grid's values, times each override set of `runs`."""
    grid = {} if grid is None else grid
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise UserError(f"batch spec {source}: 'grid' must map settings to non-empty lists of values, e.g. "
                        "{guidance.cfg_scale: [1, 2]}")
    sets = runs if runs is not None else [{}]
    if not isinstance(sets, list) or not sets or not all(isinstance(s, dict) for s in sets):
        raise UserError(f"batch spec {source}: 'runs' must be a list of override mappings, e.g. [{{guidance: vsd}}]")
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    return [{**combo, **extra} for combo in combos for extra in sets]


def expand(spec: Spec, cli_flags: Sequence[str], out: Path) -> list[BatchRun]:
    """One `BatchRun` per (prompt, seed, variant), named stably (naming.py)."""
    for flag in (*spec.flags, *cli_flags, *(f for v in spec.variants for f in override_flags(v))):
        if flag.split("=", 1)[0] in PER_RUN_FLAGS:
            raise UserError(f"'{flag.split('=', 1)[0]}' is set by the batch for each run; list prompts in the spec, seeds with "
                            "--seeds, and the batch folder with --out")
    runs = []
    for prompt in spec.prompts:
        for variant in spec.variants:
            for seed in spec.seeds:
                flags = [*spec.flags, *cli_flags, *override_flags(variant), *WORKER_FLAGS,
                         "--prompt", prompt, "--seed", str(seed), "--out", str(out)]
                runs.append(BatchRun(prompt, seed, variant, flags, run_folder_name(prompt, seed, variant)))
    taken: dict[str, BatchRun] = {}
    for run in runs:
        other = taken.setdefault(run.name, run)
        if other is not run:
            raise UserError(f"prompts {other.prompt!r} and {run.prompt!r} would share the run folder '{run.name}'; make them "
                            "differ in letters or digits")
    return runs


def check_runs(runs: Sequence[BatchRun], out: Path) -> None:
    """Parse and validate every run's plan (engine/validate.py), and check that a run folder left by
    an earlier submission was made with the same settings: all before Ray starts."""
    from ..engine.plan import parse_run_plan, plan_to_yaml
    from ..engine.validate import validate_plan

    for run in runs:
        plan = parse_run_plan(run.flags, "threedistill batch")
        validate_plan(plan)
        saved = run.run_dir(out) / "config.yaml"
        if saved.is_file() and saved.read_text() != plan_to_yaml(plan):
            raise UserError(f"'{saved.parent}' was made by an earlier batch with other settings; submit with the same flags to "
                            "continue it, or pass another --out")
