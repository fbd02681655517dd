"""The Python API: runs from scripts and notebooks; the command line is a thin layer over it.

    import threedistill as td

    run = td.run(prompt="a red mug", prior="toyworld", steps=300, sampler={"batch_size": 2})
    run.metrics["mask_iou"]                        # metrics.json
    run.export(["glb", "obj"])                     # files written into RUN_DIR/export
    out = run.render(td.turntable_cameras(8, 128, 128))   # RenderOutput: rgb, alpha, depth
    again = td.load(run.run_dir)                   # a finished run, from its folder alone

`td.run` takes every `threedistill run` flag as a keyword: component names (`prior="toyworld"`),
whole sections as mappings (`sampler={"width": 64}`, `guidance={"cfg_scale": 2.0}`) or dotted
keys (`**{"guidance.max_step": [(0, 980), (0.5, 500)]}`). They go through the same parser and
the same plan validation as the command line, so a bad value raises `td.UserError` with the
same one-line message before any work. The console shows the same progress and summary as the
command line; `progress=False` hides the bar.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from rich.console import Console

from .core.cameras import Cameras
from .core.errors import UserError, shown
from .core.interrupts import exit_code_of, signal_name
from .core.types import RenderOutput
from .engine.callbacks import LoopCallback

if TYPE_CHECKING:
    from .config import RunConfig
    from .engine.load import LoadedRun
    from .engine.plan import Stage
    from .engine.run import Run as EngineRun
    from .representations.convert import PreviousAsset
    from .viewer.options import ViewerOptions

Viewer = Union[bool, "ViewerOptions"]


@dataclass
class Run:
    """A run folder: its metrics, its config and (loaded on first use) its asset.

    `interrupted` is True when training stopped early (Ctrl-C, SIGTERM, the viewer's Stop): the
    folder holds a checkpoint and `td.resume(run.run_dir)` continues it; `stop_signal` is the
    signal's number (None for a stop asked for by the viewer or a callback)."""

    run_dir: Path
    interrupted: bool = False
    stop_signal: Optional[int] = None
    _loaded: Optional["LoadedRun"] = field(default=None, repr=False)

    # ------------------------------------------------------------------ what the folder holds
    @property
    def metrics(self) -> dict[str, Any]:
        """metrics.json: final scores, seconds, steps ({} until the run finishes)."""
        from .engine.run_dir import RunFolder

        return RunFolder(self.run_dir).read_metrics()

    @property
    def history(self) -> list[dict[str, Any]]:
        """metrics.jsonl: the logged rows (step, seconds, loss, its terms, t_mean, ...)."""
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    @property
    def finished(self) -> bool:
        return (self.run_dir / "metrics.json").exists()

    @property
    def loaded(self) -> "LoadedRun":
        """The run as data (engine/load.py): plan, checkpoint, representation; read once."""
        if self._loaded is None:
            from .engine.load import load_run

            self._loaded = load_run(self.run_dir)
        return self._loaded

    @property
    def config(self) -> "RunConfig":
        """The resolved config of the checkpoint's stage."""
        return self.loaded.cfg

    @property
    def exports_dir(self) -> Path:
        return self.run_dir / "export"

    # ------------------------------------------------------------------ using the asset
    def export(self, formats: Union[str, Sequence[str], None] = None, *, mesh_resolution: Optional[int] = None,
               decimate_faces: Optional[int] = None, texture_size: Optional[int] = None, level: Optional[float] = None) -> list[Path]:
        """(Re-)export the asset into RUN_DIR/export; the files written.

        `formats`: splat, video, glb, obj, ply, sequence (one name or several; default: every
        format the asset supports). No prior is loaded."""
        from .engine.loop import export_asset
        from .export.asset import EXPORT_FORMATS

        run = self.loaded
        run.folder.remove_stale_temporaries()  # left by an export that was killed
        chosen = [formats] if isinstance(formats, str) else list(formats or [])
        unknown = [f for f in chosen if f not in EXPORT_FORMATS]
        if unknown:
            raise UserError(f"unknown export format {', '.join(map(repr, unknown))}; formats: {', '.join(EXPORT_FORMATS)}")
        overrides: dict[str, Any] = {name: value for name, value in (("resolution", mesh_resolution), ("decimate_faces", decimate_faces),
                                                     ("texture_size", texture_size), ("level", level)) if value is not None}
        exports = run.exports(dataclasses.replace(run.cfg.mesh, **overrides))
        return export_asset(exports, chosen or exports.supported(EXPORT_FORMATS), run.folder, run.background)

    def render(self, cameras: Cameras, time: Optional[float] = None) -> RenderOutput:
        """Render the asset from `cameras` (e.g. `td.turntable_cameras(8, 256, 256)`) on the run's
        background; a 4D asset at `time` in [0, 1] (default: the cameras' own times, else 0)."""
        import torch

        from .core.types import render_in_chunks

        run = self.loaded
        cams = cameras.to(run.background.device)
        if time is not None:
            cams = dataclasses.replace(cams, time=torch.full((len(cams),), float(time), device=cams.device))
        elif run.representation.is_dynamic and cams.time is None:
            cams = dataclasses.replace(cams, time=torch.zeros(len(cams), device=cams.device))
        with torch.no_grad():
            return render_in_chunks(lambda views: run.representation.render(views, run.background), cams)

    def as_previous(self) -> "PreviousAsset":
        """The asset for a new run to start from (`td.run(..., start=run)`)."""
        return self.loaded.as_previous()


# ---------------------------------------------------------------------- starting, resuming, loading
Component = Union[str, dict[str, Any], None]
"""A component by name (`"toyworld"`) or as a section (`{"name": "toyworld", "kappa": 50}`, or just fields)."""


def run(prompt: Optional[str] = None, *, prior: Component = None, guidance: Component = None,
        representation: Component = None, steps: Optional[int] = None, config: Optional[str] = None,
        out: Union[str, Path, None] = None, seed: Optional[int] = None, device: Optional[str] = None,
        dynamic: bool = False, progress: bool = True, viewer: Viewer = False, callbacks: Sequence[LoopCallback] = (),
        start: Optional[Run] = None, console: Optional[Console] = None, **overrides: Any) -> Run:
    """Make an asset: parse the settings as `threedistill run` does, validate the whole plan, train
    every stage, score, export. Returns the finished (or interrupted) `Run`.

    `prior`, `guidance`, `representation`: a name or a section (a mapping of fields, with its
    `name` or not); `config` is a preset name or YAML path; `overrides` set any other field (see the module
    docstring); `viewer=True` (or a `ViewerOptions`) serves the live viewer; `callbacks` watch
    or steer the loop (engine/callbacks.py); `start` continues from another run's asset."""
    from .engine.plan import parse_run_plan

    components = {"prior": prior, "guidance": guidance, "representation": representation}
    flags = [*_flag("config", config), *override_flags({k: v for k, v in components.items() if v is not None}),
             *(["--dynamic"] if dynamic else []), *_flag("prompt", prompt),
             *_flag("steps", steps), *_flag("out", None if out is None else str(out)), *_flag("seed", seed),
             *_flag("device", device), *([] if progress else ["--log.no-progress"]), *override_flags(overrides)]
    plan = parse_run_plan(flags, "td.run")
    return run_plan(plan, viewer=viewer, callbacks=callbacks, start=start.as_previous() if start else None, console=console)


def run_plan(plan: list["Stage"], *, viewer: Viewer = False, callbacks: Sequence[LoopCallback] = (),
             start: Optional["PreviousAsset"] = None, run_dir: Optional[Path] = None, console: Optional[Console] = None,
             note: str = "", discard: Optional[Callable[[], None]] = None) -> Run:
    """Start a validated-before-work run of `plan` (engine/plan.py) in a new folder (or `run_dir`)
    and train it to the end: what `td.run`, `threedistill run`, `edit` and `animate` share.
    `discard` is called when the run fails before its first step (to remove what the caller prepared)."""
    from .engine.run import Run as EngineRun
    from .engine.validate import validate_plan

    console = console or Console(stderr=True)
    watchers: list[LoopCallback] = []
    try:
        try:  # the plan, then the watchers (the viewer prints its address): bad input stays one line
            validate_plan(plan, start.name if start is not None else None)
            watchers = session_callbacks(plan, viewer, console)
            engine_run = EngineRun.start(plan, console, start, run_dir, callbacks=[*callbacks, *watchers], validated=True)
        except BaseException:
            if discard is not None:
                discard()
            raise
        if note:
            engine_run.folder.log(note)
        console.print(f"run folder: {shown(engine_run.run_dir)}")
        return train(engine_run, console)
    finally:
        for watcher in watchers:
            watcher.close()


def resume(run_dir: Union[str, Path], checkpoint: Union[str, Path, None] = None, *, viewer: Viewer = False,
           callbacks: Sequence[LoopCallback] = (), console: Optional[Console] = None) -> Run:
    """Continue a run from its last checkpoint (or `checkpoint`, a step-NNNNNN.pt) to the end."""
    from .engine.load import read_run
    from .engine.run import Run as EngineRun
    from .engine.validate import validate_plan

    console = console or Console(stderr=True)
    plan, state, index = read_run(run_dir, Path(checkpoint) if checkpoint else None)
    validate_plan(plan, None, first=index)
    watchers = session_callbacks(plan, viewer, console)
    try:
        engine_run = EngineRun.from_checkpoint(Path(run_dir), plan, state, index, console, callbacks=[*callbacks, *watchers])
        trainer = engine_run.trainer
        console.print(f"resuming {shown(run_dir)} at step {trainer.step}/{trainer.cfg.steps}")
        return train(engine_run, console)
    finally:
        for watcher in watchers:
            watcher.close()


def load(run_dir: Union[str, Path], checkpoint: Union[str, Path, None] = None, device: str = "auto") -> Run:
    """A run folder (finished or not) as a `Run`; nothing trains and no prior is loaded."""
    from .engine.load import load_run

    return Run(Path(run_dir), _loaded=load_run(run_dir, Path(checkpoint) if checkpoint else None, device))


def train(engine_run: "EngineRun", console: Console) -> Run:
    """Train an engine run's current stage and every later one, reporting on `console`.

    A stop signal (Ctrl-C, SIGTERM) or the viewer's Stop ends it with a checkpoint and returns an
    interrupted `Run`; out of memory, a full disk and a diverged run raise a one-line `RunStopped`
    that says how to continue (engine/run.py `train_safely`)."""
    from .engine.loop import StageTrainer

    def stage_done(trainer: StageTrainer, summary: dict[str, Any]) -> None:
        console.print(f"{trainer.stage_title()}done{_scores(summary)}")

    trainer = engine_run.trainer
    try:
        summary = engine_run.train_safely(stage_done)
    except KeyboardInterrupt as exc:  # a signal outside a step (setup, scoring, exports) or a second one within
        trainer = engine_run.trainer
        signum = exit_code_of(exc) - 128
        saved = "checkpoint saved" if engine_run.interrupt_saved else "stopped at once; the last checkpoint on disk is kept"
        console.print(f"[yellow]interrupted[/] ({signal_name(signum)}) {trainer.stage_title()}at step {trainer.step}/{trainer.cfg.steps}; "
                      f"{saved}. Continue with: threedistill resume {shown(engine_run.run_dir)}")
        return Run(engine_run.run_dir, interrupted=True, stop_signal=signum)
    if summary is None:
        trainer = engine_run.trainer
        console.print(f"[yellow]interrupted[/] ({trainer.stops.reason}) {trainer.stage_title()}at step {trainer.step}/{trainer.cfg.steps}; "
                      f"checkpoint saved. Continue with: threedistill resume {shown(engine_run.run_dir)}")
        return Run(engine_run.run_dir, interrupted=True, stop_signal=trainer.stops.signum)
    console.print(f"[green]done[/] in {summary['seconds']:.1f} s{_scores(summary).replace(', ', '; ', 1)}")
    console.print(f"run folder: {shown(engine_run.run_dir)}")
    return Run(engine_run.run_dir)


def session_callbacks(plan: list["Stage"], viewer: Viewer, console: Console) -> list[LoopCallback]:
    """The watchers a run asks for: TensorBoard (`log.tensorboard`, a run setting) and the live
    viewer (a session setting). Each checks its optional dependency here, before any work."""
    watchers: list[LoopCallback] = []
    try:
        if any(stage.cfg.log.tensorboard for stage in plan):
            from .engine.tensorboard import TensorboardLogger

            watchers.append(TensorboardLogger())
        if viewer:
            from .viewer.live import LiveViewer
            from .viewer.options import ViewerOptions

            watchers.append(LiveViewer(viewer if isinstance(viewer, ViewerOptions) else ViewerOptions(), console))
    except BaseException:
        for watcher in watchers:
            watcher.close()
        raise
    return watchers


# ---------------------------------------------------------------------- keywords -> flags
def _scores(summary: dict[str, Any]) -> str:
    return "".join(f", {k} {summary[k]:.3f}" for k in ("mask_iou", "psnr") if k in summary)


def _flag(name: str, value: Any) -> list[str]:
    return [] if value is None else [f"--{name}", str(value)]


def override_flags(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """Keyword settings as `threedistill run` flags: `sampler={"batch_size": 2}` and
    `**{"sampler.batch_size": 2}` both give `--sampler.batch-size 2`; True/False give `--x` /
    `--no-x` (`--log.no-progress`); lists give one value each; schedules' points are flattened."""
    flags: list[str] = []
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            if "name" in value and not prefix:
                flags += _flag(path, value["name"])
            flags += override_flags({k: v for k, v in value.items() if k != "name" or prefix}, f"{path}.")
            continue
        dotted = path.replace("_", "-")
        if isinstance(value, bool):
            head, _, last = dotted.rpartition(".")
            flags.append(f"--{dotted}" if value else f"--{head + '.' if head else ''}no-{last}")
        elif isinstance(value, (list, tuple)):
            items = [x for item in value for x in (item if isinstance(item, (list, tuple)) else (item,))]
            flags += [f"--{dotted}", *map(str, items)]
        else:
            flags += [f"--{dotted}", str(value)]
    return flags
