"""`threedistill view PATH`: a finished (or interrupted) run folder, a splats.ply or a mesh file in
the browser until Ctrl-C.

- a run folder: its asset as the loop's viewer draws it (Gaussians as splats; NeRF and mesh runs
  as their mesh: the exported mesh.ply when there is one, else extracted; particles side by
  side), a 4D asset with a time slider and a Play checkbox, and a sample of the training cameras
  as frustums;
- a .ply holding 3D Gaussians (the 3DGS layout): its splats;
- a mesh (.glb/.gltf/.obj/.ply/.stl): read as `--prior.mesh` reads it (materials, textures,
  vertex colours; core/mesh_file.py), in the unit sphere.

The path is read before the server starts, so a bad one is the usual one-line error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from rich.console import Console

from ..core.cameras import Cameras
from ..core.errors import UserError
from ..core.geometry import SurfaceMesh
from ..export.extract import MeshExportConfig
from .options import ViewerOptions
from .scene import AssetScene, SplatArrays, splat_arrays
from .server import check_installed, start_server, stop_server

Drawing = Union[SplatArrays, SurfaceMesh, tuple[np.ndarray, np.ndarray, np.ndarray]]
"""What one member is drawn as: splats, a surface mesh, or (vertices, faces, face colours)."""

FRAMES_PER_SECOND = 8.0


@dataclass
class Viewable:
    """An asset read from disk: one drawing function per member (of the time in [0, 1])."""

    title: str
    members: list[Callable[[float], Optional[Drawing]]]
    dynamic: bool = False
    frames: int = 1
    cameras: Optional[Cameras] = None
    _cache: dict[tuple[int, float], Optional[Drawing]] = field(default_factory=dict)

    def drawing(self, index: int, time_value: float) -> Optional[Drawing]:
        key = (index, round(time_value, 3) if self.dynamic else 0.0)
        if key not in self._cache:
            self._cache[key] = self.members[index](key[1])
        return self._cache[key]


def read_viewable(path: Path, options: ViewerOptions) -> Viewable:
    """Read what `path` holds (see the module docstring); a UserError for anything else."""
    from ..scene.loading import is_run_folder

    if path.is_dir():
        if not is_run_folder(path):
            raise UserError(f"'{path}' is not a run folder (no config.yaml); pass a run folder, a splats.ply or a mesh file")
        return _run_viewable(path, options)
    if not path.is_file():
        raise UserError(f"nothing to view at '{path}'; pass a run folder, a splats.ply or a mesh file")
    if path.suffix.lower() == ".ply" and _is_splat_ply(path):
        from ..export.splat_ply import read_splat_ply

        splats = splat_arrays(read_splat_ply(path))
        return Viewable(f"{path.name}: {len(splats)} Gaussians", [lambda t: splats])
    from ..core.mesh_file import load_mesh_file

    coloured = load_mesh_file(path, path.stem)
    drawn = (coloured.vertices, coloured.faces, coloured.face_colors)
    return Viewable(f"{path.name}: {len(coloured.faces)} faces", [lambda t: drawn])


def _is_splat_ply(path: Path) -> bool:
    """Whether a .ply's header declares 3D Gaussians (the 3DGS vertex properties)."""
    names = set()
    with path.open("rb") as f:
        for _ in range(512):
            line = f.readline().decode("ascii", "replace").split()
            if not line or line[0] == "end_header":
                break
            if line[0] == "property":
                names.add(line[-1])
    return {"f_dc_0", "opacity", "scale_0", "rot_0"} <= names


def _run_viewable(path: Path, options: ViewerOptions) -> Viewable:
    from ..engine.build import load_stage_scene, make_sampler
    from ..engine.load import load_run
    from ..export.extract import extract_mesh

    run = load_run(path, device="cpu")
    members = run.representation.members()
    dynamic = run.representation.is_dynamic
    live_mesh = MeshExportConfig(resolution=options.mesh_resolution, calibration_views=4, calibration_resolution=48)

    def draw(index: int) -> Callable[[float], Optional[Drawing]]:
        member = members[index]
        exported = path / "export" / ("mesh.ply" if index == 0 else f"mesh_particle{index}.ply")

        def at(time_value: float) -> Optional[Drawing]:
            with torch.no_grad():
                splats = member.as_splats(time_value)
                if splats is not None:
                    return splat_arrays(splats)
                own = member.as_mesh()
                if own is not None:
                    return own
                if not dynamic and exported.exists():
                    return _read_surface(exported)
                source = member.as_field(time_value)
                try:
                    return extract_mesh(source, live_mesh if dynamic else run.cfg.mesh) if source is not None else None
                except UserError:
                    return None
        return at

    cfg = run.cfg
    sampler = make_sampler(cfg, load_stage_scene(cfg), torch.device("cpu"))
    cameras = sampler.sample(torch.Generator().manual_seed(cfg.seed), batch_size=16)
    frames = max(run.exports().settings.clip_frames, 2) if dynamic else 1
    title = f"{path.name}: {run.names.guidance} x {run.names.representation}, '{cfg.prompt}'"
    return Viewable(title, [draw(i) for i in range(len(members))], dynamic, frames, cameras)


def _read_surface(path: Path) -> SurfaceMesh:
    """An exported mesh.ply (world axes, vertex colours)."""
    import trimesh

    mesh: Any = trimesh.load(path, force="mesh", process=False)
    colours = np.asarray(mesh.visual.vertex_colors, np.float32)[:, :3] / 255.0
    return SurfaceMesh(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64), colours)


def draw(scene: AssetScene, viewable: Viewable, time_value: float) -> None:
    """Every member at `time_value`."""
    count = len(viewable.members)
    for index in range(count):
        drawing = viewable.drawing(index, time_value)
        if isinstance(drawing, SplatArrays):
            scene.show_splats(index, count, drawing)
        elif isinstance(drawing, SurfaceMesh):
            scene.show_surface(index, count, drawing)
        elif drawing is not None:
            scene.show_mesh(index, count, *drawing)


def serve_path(path: Path, options: ViewerOptions, console: Console) -> None:
    """Read `path`, serve it and block until Ctrl-C."""
    options.check()
    check_installed()
    viewable = read_viewable(path, options)
    server = start_server(options, console, "threedistill view")
    try:
        scene = AssetScene(server.scene)
        server.gui.add_markdown(f"**{viewable.title}**")
        draw(scene, viewable, 0.0)
        if viewable.cameras is not None:
            cameras, toggle = viewable.cameras, server.gui.add_checkbox("Show cameras", initial_value=True)
            scene.show_cameras(cameras, colour=(120, 120, 120))
            toggle.on_update(lambda _: scene.show_cameras(cameras, colour=(120, 120, 120)) if toggle.value else scene.hide_cameras())
        slider: Any = None
        play: Any = None
        if viewable.dynamic:
            step = 1.0 / (viewable.frames - 1)
            slider = server.gui.add_slider("Time", min=0.0, max=1.0, step=step, initial_value=0.0)
            play = server.gui.add_checkbox("Play", initial_value=False)
            slider.on_update(lambda _: draw(scene, viewable, float(slider.value)))
        console.print("Ctrl-C stops the viewer")
        while True:
            time.sleep(1.0 / FRAMES_PER_SECOND)
            if play is not None and play.value:
                following = float(slider.value) + step
                slider.value = round(following, 6) if following <= 1.0 + 1e-6 else 0.0
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(server)
