"""Runs load without a Trainer: a run folder's config, asset and metrics, nothing else.

`load_run(dir)` reads config.yaml (every stage), the checkpoint (as data, engine/checkpoint.py)
and builds the representation of the checkpoint's stage (with its particles and 4D motion
field) from its config, then loads its tensors. No prior and no objective is built, so a
Stable Diffusion run exports when its model's weights are gone. export, animate and the edit
of a run folder read runs this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from ..config import ComponentNames, RunConfig
from ..core.errors import UserError
from ..export.asset import AssetExports, ExportSettings
from ..export.extract import MeshExportConfig
from ..representations.base import Representation
from ..representations.convert import PreviousAsset
from .build import build_representation, clip_frames
from .checkpoint import load_checkpoint
from .plan import Stage, load_run_plan
from .run_dir import RunFolder


@dataclass
class LoadedRun:
    """A finished (or interrupted) run as data: its plan, the checkpoint's stage and its asset."""

    run_dir: Path
    plan: list[Stage]
    stage_index: int
    state: dict[str, Any]
    representation: Representation
    background: Tensor
    metrics: dict[str, Any]

    @property
    def stage(self) -> Stage:
        return self.plan[self.stage_index]

    @property
    def cfg(self) -> RunConfig:
        return self.stage.cfg

    @property
    def names(self) -> ComponentNames:
        return self.stage.names

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    def exports(self, mesh: Optional[MeshExportConfig] = None) -> AssetExports:
        """The asset's exports into RUN_DIR/export (with `mesh` instead of the run's mesh settings)."""
        log = self.cfg.log
        settings = ExportSettings(mesh or self.cfg.mesh, log.turntable_frames, log.turntable_resolution, clip_frames(self.cfg))
        return AssetExports(self.representation, self.run_dir / "export", settings, self.background, self.folder.log)

    def as_previous(self) -> PreviousAsset:
        """The asset for a new run to start from (animate, edits of a run folder)."""
        exports = self.exports()
        return PreviousAsset(self.representation, self.names.representation, lambda: exports.mesh(0))


def read_run(run_dir: str | Path, checkpoint: Optional[Path] = None) -> tuple[list[Stage], dict[str, Any], int]:
    """A run folder's plan, its checkpoint (last.pt or `checkpoint`) and the checkpoint's stage
    index, checked to belong together."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: '{run_dir}'; pass a folder made by `threedistill run`")
    plan = load_run_plan(run_dir / "config.yaml")
    state = load_checkpoint(checkpoint or run_dir / "checkpoints" / "last.pt")
    index = int(state.get("stage", 0))
    if not 0 <= index < len(plan):
        raise UserError(f"the checkpoint is from stage {index + 1} but config.yaml has {len(plan)} stage(s); pass the run folder it came from")
    if tuple(state.get("names", ())) != tuple(plan[index].names):
        raise UserError(f"checkpoint was made by {tuple(state.get('names', ()))} but the config says {tuple(plan[index].names)}; "
                        "pass the run folder it came from")
    return plan, state, index


def load_run(run_dir: str | Path, checkpoint: Optional[Path] = None, device: str = "auto") -> LoadedRun:
    """A run folder's plan, metrics and asset from config.yaml and last.pt (or `checkpoint`)."""
    run_dir = Path(run_dir)
    plan, state, index = read_run(run_dir, checkpoint)
    stage = plan[index]
    target = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    representation = build_representation(stage.cfg, torch.Generator().manual_seed(stage.cfg.seed))
    try:
        representation.load_state_dict(state["representation"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UserError(f"the checkpoint's {stage.names.representation} does not match config.yaml ({str(exc).splitlines()[0][:120]}); "
                        "pass the run folder it came from") from None
    representation.to(target).eval()
    background = torch.tensor(stage.cfg.render.background, dtype=torch.float32, device=target)
    return LoadedRun(run_dir, plan, index, state, representation, background, RunFolder(run_dir).read_metrics())
