"""The run plan: a config's `stages` list expanded into one full, typed run config per stage.

A config file may chain stages (DESIGN.md section 2), each starting from the previous
stage's result:

    prompt: a red mug
    steps: 15000                      # the whole run; stages take shares of it
    representation: {name: nerf}
    stages:
      - {name: coarse, share: 0.667}
      - name: refine
        share: 0.333
        representation: {name: mesh}
        sampler: {width: 128, height: 128}

Rules:
- The top level is the base. A stage entry overrides it for that stage only; a component
  section naming another component (`representation: {name: mesh}`) starts from that
  component's defaults instead of the base's section.
- A stage's length is `steps` (absolute) or `share` (a fraction of the top-level `steps`);
  entries without either split what is left equally.
- `prompt`, `negative_prompt`, `seed`, `device` and `out` belong to the whole run.
- A stage with `dynamic: true` (4D) uses the video counterpart of the base's image prior
  (toyworld -> toyworld-video, sd -> video-sd) with that prior's defaults.
- A stage with `pixel_prior: true` uses the pixel-space counterpart of the base's prior
  (sd -> deepfloyd-if, StableDreamer's geometry stage) with that prior's defaults plus the
  stage's own `prior` fields; priors already in pixel space (toyworld) or without a
  counterpart (toyworld-sd) keep their own. In both cases `--prior.*` flags set the base's
  prior, not the counterpart.
- Command-line flags win in every stage: `--guidance.cfg-scale 50` sets it in each stage
  whose guidance has that field, `--sampler.width 64` everywhere. The name flags
  (`--representation nerf`) only change the base, so stages naming their own keep it.

The plan is checked in full before any work (engine/validate.py).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from ..config import (
    COMPONENTS,
    ComponentNames,
    RunConfig,
    _read_yaml,
    config_from_dict,
    config_to_dict,
    parse_base_args,
    split_component_names,
)
from ..core.errors import UserError
from ..core.motion import video_prior_name
from ..priors.base import PIXEL_PRIOR_OF

STAGE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
SHARED_KEYS = ("prompt", "negative_prompt", "seed", "device", "out", "image")
STAGE_KEYS = ("name", "steps", "share", "prior", "guidance", "representation", "sampler", "render", "log", "mesh", "prompts",
              "dynamic", "motion", "deformation", "reference", "pixel_prior")


@dataclass
class Stage:
    """One stage of a run: a label and the full run config it trains with."""

    label: str
    names: ComponentNames
    cfg: RunConfig


def single_stage(names: ComponentNames, cfg: RunConfig) -> list[Stage]:
    return [Stage("main", names, cfg)]


def parse_run_plan(argv: list[str], prog: str = "threedistill run", stages: Optional[list[Any]] = None) -> list[Stage]:
    """`threedistill run` flags -> the run's stages (one for a config without `stages`).

    `stages` (entries as a config file would list them) replaces the config file's list."""
    parsed = parse_base_args(argv, prog)
    entries = parsed.stages if stages is None else stages
    if not entries:
        return single_stage(parsed.names, parsed.cfg)
    changes = _changed_leaves(config_to_dict(parsed.names, parsed.file_cfg), config_to_dict(parsed.names, parsed.cfg))
    total_steps = parsed.cfg.steps
    changes.pop(("steps",), None)  # the total, divided between the stages by their shares
    return expand_stages(parsed.names, parsed.cfg, entries, changes, total_steps, parsed.source)


def expand_stages(
    names: ComponentNames, base_cfg: RunConfig, entries: list[Any], changes: dict[tuple[str, ...], Any], total_steps: int, source: str
) -> list[Stage]:
    """One full config per stage entry (see the module docstring for the rules)."""
    base = config_to_dict(names, base_cfg)
    lengths = _stage_lengths(entries, total_steps, source)
    stages = []
    for i, entry in enumerate(entries):
        label = str(entry.get("name", f"stage{i + 1}"))
        if not STAGE_LABEL.fullmatch(label):
            raise UserError(f"config {source}: stage {i + 1} is named {label[:40]!r}; a stage name (it names checkpoint files) is "
                            "1-40 letters, digits, '_' or '-', starting with a letter or digit")
        where = f"{source} stage '{label}'"
        data = copy.deepcopy(base)
        for key, value in entry.items():
            if key in ("name", "share", "steps", "pixel_prior"):
                continue
            if key in SHARED_KEYS or key not in STAGE_KEYS:
                hint = "set it at the top level" if key in SHARED_KEYS else f"stage keys: {', '.join(STAGE_KEYS)}"
                raise UserError(f"config {where}: key '{key}' is not allowed in a stage; {hint}")
            if key in COMPONENTS or isinstance(data.get(key), dict):
                data[key] = _override_section(data.get(key), value, key in COMPONENTS, where, key)
            else:  # a plain field (dynamic)
                data[key] = value
        data["steps"] = lengths[i]
        _apply_changes(data, changes, names)
        counterpart = video_prior_name(data["prior"]["name"], bool(data.get("dynamic")))
        if _pixel_prior_flag(entry, where):
            counterpart = PIXEL_PRIOR_OF.get(counterpart, counterpart)
        if counterpart != data["prior"]["name"]:  # a dynamic or pixel-space stage: the counterpart, with its own defaults
            own = entry.get("prior") if isinstance(entry.get("prior"), dict) else {}
            data["prior"] = {**{k: v for k, v in own.items() if k != "name"}, "name": counterpart}
        stage_names = split_component_names(data, {})
        stages.append(Stage(label, stage_names, config_from_dict(data, stage_names, where)))
    labels = [s.label for s in stages]
    if len(set(labels)) != len(labels):
        raise UserError(f"config {source}: stage names must be unique, got {labels}")
    return stages


def _pixel_prior_flag(entry: dict[str, Any], where: str) -> bool:
    value = entry.get("pixel_prior", False)
    if not isinstance(value, bool):
        raise UserError(f"config {where}: pixel_prior must be true or false, got {value!r}")
    return value


def _stage_lengths(entries: list[Any], total: int, source: str) -> list[int]:
    """Steps of each stage: explicit `steps`, `share` x total, or an equal split of the rest."""
    lengths: list[int | None] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UserError(f"config {source}: stage {i + 1} must be a mapping (name, steps/share, sections), got {entry!r}")
        if "steps" in entry and "share" in entry:
            raise UserError(f"config {source}: stage {i + 1} gives both steps and share; keep one")
        try:
            if "steps" in entry:
                lengths.append(int(entry["steps"]))
            elif "share" in entry:
                lengths.append(round(float(entry["share"]) * total))
            else:
                lengths.append(None)
        except (TypeError, ValueError):
            raise UserError(f"config {source}: stage {i + 1} has a non-numeric steps/share; use a number") from None
    rest = total - sum(n for n in lengths if n is not None)
    free = [i for i, n in enumerate(lengths) if n is None]
    out = [n if n is not None else max(rest, 0) // len(free) + (1 if free.index(i) < max(rest, 0) % len(free) else 0)
           for i, n in enumerate(lengths)]
    for i, n in enumerate(out):
        if n < 1:
            raise UserError(f"config {source}: stage {i + 1} would run {n} steps; raise --steps or its steps/share")
    return out


def _override_section(base: Any, value: Any, is_component: bool, where: str, key: str) -> Any:
    if is_component and isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise UserError(f"config {where}: '{key}' must be a mapping of fields, got {value!r}")
    if is_component and "name" in value and isinstance(base, dict) and value["name"] != base.get("name"):
        return copy.deepcopy(value)  # another component: its own defaults, not the base's fields
    return _deep_merge(base if isinstance(base, dict) else {}, value)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def _changed_leaves(before: dict[str, Any], after: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """(path -> new value) of every leaf that differs between two nested dicts."""
    changed: dict[tuple[str, ...], Any] = {}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            changed.update(_changed_leaves(old, value, (*prefix, key)))
        elif value != old:
            changed[(*prefix, key)] = value
    return changed


def _apply_changes(data: dict[str, Any], changes: dict[tuple[str, ...], Any], base_names: ComponentNames) -> None:
    """Set each command-line change in a stage where that field exists (same component)."""
    for path, value in changes.items():
        section = data
        if path[0] in COMPONENTS and data.get(path[0], {}).get("name") != getattr(base_names, path[0]):
            continue  # the flag was a field of the base's component, which this stage replaced
        for key in path[:-1]:
            section = section.setdefault(key, {})
        section[path[-1]] = value


# ---------------------------------------------------------------------- run folders
def plan_to_yaml(stages: list[Stage]) -> str:
    """config.yaml of a run: the first stage's config, plus every stage in full when staged."""
    data = config_to_dict(stages[0].names, stages[0].cfg)
    if len(stages) > 1:
        entries = []
        for stage in stages:
            full = config_to_dict(stage.names, stage.cfg)
            entries.append({"name": stage.label, **{k: v for k, v in full.items() if k not in SHARED_KEYS}})
        data["stages"] = entries
    return yaml.safe_dump(data, sort_keys=False)


def load_run_plan(path: Path) -> list[Stage]:
    """The stages of a run folder's config.yaml."""
    if not path.exists():
        raise UserError(f"'{path.parent}' has no config.yaml; pass a run folder made by `threedistill run`")
    data = _read_yaml(path)
    entries = data.pop("stages", None) or []
    names = split_component_names(data, {})
    cfg = config_from_dict(data, names, f"'{path}'")
    if not entries:
        return single_stage(names, cfg)
    total = sum(int(e.get("steps", 0)) for e in entries if isinstance(e, dict))
    return expand_stages(names, cfg, entries, {}, total, f"'{path}'")
