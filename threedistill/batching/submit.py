"""`td.batch` and `threedistill batch`: read and check the spec (before Ray starts), then run the
batch on Ray (runner.py) or sweep it with Ray Tune (tune.py).

    import threedistill as td
    table = td.batch("prompts.txt", seeds=[0, 1], out="outputs/suite", config="quick", prior="toyworld")
    table.rows        # one dict per run: prompt, seed, overrides, status, scores, seconds, gpu, ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from rich.console import Console

from ..api import override_flags
from ..core.errors import UserError
from .cluster import BatchOptions
from .runner import BatchResult, run_batch
from .spec import BatchRun, Spec, check_runs, expand, read_spec, spec_from_mapping
from .tune import TuneOptions, run_sweep

SpecSource = Union[str, Path, dict[str, Any], Sequence[str]]
"""A prompts file or YAML sweep (path), a sweep's mapping, or a list of prompts."""


def plan_batch(spec: SpecSource, out: Path, seeds: Optional[Sequence[int]] = None, flags: Sequence[str] = ()) -> list[BatchRun]:
    """Every run of the batch, parsed and validated (spec.py); one UserError for a bad spec."""
    if any(s < 0 for s in seeds or ()):
        raise UserError(f"--seeds must be non-negative integers, got {list(seeds or ())}")
    if isinstance(spec, (str, Path)):
        parsed = read_spec(Path(spec), seeds)
    elif isinstance(spec, dict):
        parsed = spec_from_mapping(spec, "(mapping)", Path.cwd(), seeds)
    else:
        prompts = [p.strip() for p in spec if p.strip()]
        if not prompts:
            raise UserError("the batch has no prompts; pass a prompts file, a YAML sweep or a list of prompts")
        parsed = Spec(list(dict.fromkeys(prompts)), list(seeds) if seeds else [0], [], [{}])
    runs = expand(parsed, list(flags), out)
    check_runs(runs, out)
    return runs


def batch(spec: SpecSource, *, seeds: Optional[Sequence[int]] = None, out: Union[str, Path] = "outputs/batch",
          flags: Sequence[str] = (), options: Optional[BatchOptions] = None, tune: Optional[TuneOptions] = None,
          console: Optional[Console] = None, **settings: Any) -> BatchResult:
    """Run a batch: one run per (prompt, seed, override set) in a stable folder under `out`, one Ray
    task each; finished runs are skipped, unfinished ones resumed. Returns the table (also written as
    OUT/batch.csv, batch.json, report.md and contact_sheet.png).

    `settings` are `td.run` keywords for every run (`config="quick"`, `guidance={"cfg_scale": 2}`);
    `flags` the same as command-line flags; `options` how it runs on Ray (cluster.py); `tune`
    sweeps it with Ray Tune instead (tune.py)."""
    options = options or BatchOptions()
    options.check()
    out = Path(out).absolute()  # workers run elsewhere (Tune trials in their own folders, `ray job submit` in a copy)
    runs = plan_batch(spec, out, seeds, [*override_flags(settings), *flags])
    if tune is not None:
        tune.check(runs)
        return run_sweep(runs, out, options, tune, console)
    return run_batch(runs, out, options, console)
