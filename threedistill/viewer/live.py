"""The live viewer (`threedistill run ... --viewer`, `td.run(..., viewer=True)`): a loop callback
(engine/callbacks.py) that serves the run in the browser while it trains.

It shows the step, the loss and its terms, the timestep, the latest training views and the
objective's x0 prediction of them (where it has one), the asset (splats, or the mesh of a NeRF
or mesh stage; particles side by side; a 4D asset at the time slider's time) and the latest
training cameras as frustums; its Pause / Resume / Save checkpoint / Stop buttons act on the loop.

Costs: when off, nothing (no callback is registered). When on, the loop thread does the work,
between steps, so it always sees a consistent asset: the status line is refreshed at most 10
times a second, and the asset, views and frustums every `update_every` steps, skipped while the
time spent on them exceeds `options.budget` (3 %) of the loop's time so far (tools/bench_viewer.py measures it).
Buttons only set flags on viser's threads; the loop thread acts on them at the next step.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from rich.console import Console

from ..core.errors import UserError
from ..engine.callbacks import LoopCallback
from ..export.extract import MeshExportConfig, extract_mesh
from ..export.images import image_grid, to_uint8
from .options import ViewerOptions
from .scene import AssetScene, splat_arrays
from .server import start_server, stop_server

if TYPE_CHECKING:
    from ..engine.loop import StageTrainer
    from ..representations.base import Representation

STATUS_PERIOD = 0.1
"""Seconds between refreshes of the status line."""
MAX_FRUSTUMS = 8


class LiveViewer(LoopCallback):
    """Serves a training run (see the module docstring)."""

    def __init__(self, options: ViewerOptions, console: Console) -> None:
        self.options = options
        self.server = start_server(options, console, "threedistill")
        self.asset = AssetScene(self.server.scene)
        self._paused = threading.Event()
        self._wake = threading.Event()
        self._commands: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._spent = 0.0
        self._loop_started = time.perf_counter()
        self._last_status = 0.0
        self._mesh_settings = MeshExportConfig(resolution=options.mesh_resolution, calibration_views=4, calibration_resolution=48)
        self._build_gui()

    # ------------------------------------------------------------------ the page
    def _build_gui(self) -> None:
        gui = self.server.gui
        self.status = gui.add_markdown("**starting**")
        self.pause_button = gui.add_button("Pause")
        self.resume_button = gui.add_button("Resume", visible=False)
        self.save_button = gui.add_button("Save checkpoint")
        self.stop_button = gui.add_button("Stop")
        self.show_cameras = gui.add_checkbox("Show cameras", initial_value=True)
        self.time_slider = gui.add_slider("Time", min=0.0, max=1.0, step=0.01, initial_value=0.0, visible=False)
        self.terms = gui.add_markdown("")
        blank = np.full((8, 8, 3), 255, np.uint8)
        self.views_image = gui.add_image(blank, label="training views")
        self.x0_image = gui.add_image(blank, label="x0 prediction", visible=False)
        self.pause_button.on_click(lambda _: self._set_paused(True))
        self.resume_button.on_click(lambda _: self._set_paused(False))
        self.save_button.on_click(lambda _: self._command("save"))
        self.stop_button.on_click(lambda _: self._command("stop"))
        self.show_cameras.on_update(lambda _: None if self.show_cameras.value else self.asset.hide_cameras())

    def _set_paused(self, paused: bool) -> None:
        (self._paused.set if paused else self._paused.clear)()
        self.pause_button.visible = not paused
        self.resume_button.visible = paused
        self._wake.set()

    def _command(self, name: str) -> None:
        self._commands.put(name)
        self._wake.set()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    # ------------------------------------------------------------------ the loop's hooks
    def on_stage_start(self, trainer: "StageTrainer") -> None:
        self._loop_started = time.perf_counter() - self._spent / self.options.budget  # keeps the budget across stages
        self.time_slider.visible = trainer.representation.is_dynamic
        self._show_status(trainer, {}, "training")
        self._timed(self._send_asset, trainer)

    def on_step(self, trainer: "StageTrainer", logs: dict[str, float]) -> None:
        self._run_commands(trainer)
        now = time.perf_counter()
        if now - self._last_status >= STATUS_PERIOD or trainer.step == trainer.cfg.steps:
            self._show_status(trainer, logs, "training")
        due = trainer.step % self.options.update_every == 0
        if due and self._spent <= self.options.budget * (now - self._loop_started):
            self._timed(self._send_step, trainer)
        if self.paused and not trainer.stop_requested:
            self._show_status(trainer, logs, "paused")
            while self.paused and not trainer.stop_requested:
                self._wake.wait(0.1)
                self._wake.clear()
                self._run_commands(trainer)
            self._show_status(trainer, logs, "stopping" if trainer.stop_requested else "training")
            self._loop_started = time.perf_counter() - self._spent / self.options.budget  # a pause is not loop time

    def on_stage_end(self, trainer: "StageTrainer", summary: dict[str, Any]) -> None:
        scores = ", ".join(f"{k} {summary[k]:.3f}" for k in ("mask_iou", "psnr") if k in summary)
        self._show_status(trainer, {}, f"{trainer.stage_title()}done" + (f": {scores}" if scores else ""))
        self._send_asset(trainer)

    def on_run_end(self, run_dir: Path, summary: dict[str, Any], exported: Sequence[Path]) -> None:
        self.status.content += f"  \nfinished; keep looking with `threedistill view {run_dir}`"

    def close(self) -> None:
        self._paused.clear()
        stop_server(self.server)

    # ------------------------------------------------------------------ work on the loop thread
    def _run_commands(self, trainer: "StageTrainer") -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command == "save":
                path = trainer.save_checkpoint()
                trainer.log(f"checkpoint saved from the viewer at step {trainer.step}")
                for client in self.server.get_clients().values():
                    client.add_notification("checkpoint saved", f"{path.parent.name}/step-{trainer.step:06d}.pt", auto_close_seconds=4.0)
            elif command == "stop":
                trainer.request_stop()
                self._set_paused(False)

    def _timed(self, work: Any, trainer: "StageTrainer") -> None:
        start = time.perf_counter()
        with torch.no_grad():
            work(trainer)
        self._spent += time.perf_counter() - start

    def _show_status(self, trainer: "StageTrainer", logs: dict[str, float], state: str) -> None:
        self._last_status = time.perf_counter()
        stage = f"{trainer.stage_title()}" if trainer.staged else ""
        self.status.content = f"**{state}** {stage}step {trainer.step} / {trainer.cfg.steps}"
        if logs:
            rows = "\n".join(f"| {key} | {value:.4g} |" for key, value in logs.items())
            self.terms.content = "| term | value |\n|---|---|\n" + rows

    def _send_step(self, trainer: "StageTrainer") -> None:
        self._send_asset(trainer)
        if trainer.last_render is None or trainer.last_cameras is None:
            return
        render, cams = trainer.rendered_images(), trainer.last_cameras  # a latent stage's views decoded
        self.views_image.image = image_grid(render)
        if trainer.last_preview is not None:
            self.x0_image.image = image_grid(trainer.last_preview())
            self.x0_image.visible = True
        if self.show_cameras.value:
            shown = min(len(cams), MAX_FRUSTUMS)
            self.asset.show_cameras(cams[:shown], list(to_uint8(render[:shown])))

    def _send_asset(self, trainer: "StageTrainer") -> None:
        members = trainer.representation.members()
        time_value = float(self.time_slider.value) if trainer.representation.is_dynamic else 0.0
        for index, member in enumerate(members):
            self._send_member(member, index, len(members), time_value)

    def _send_member(self, member: "Representation", index: int, count: int, time_value: float) -> None:
        splats = member.as_splats(time_value)
        if splats is not None:
            self.asset.show_splats(index, count, splat_arrays(splats))
            return
        mesh = member.as_mesh()
        if mesh is None:
            field = member.as_field(time_value)
            if field is None:
                return
            try:
                mesh = extract_mesh(field, self._mesh_settings)
            except UserError:  # no surface yet (an empty field early in a run)
                return
        self.asset.show_surface(index, count, mesh)
