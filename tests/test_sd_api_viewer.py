"""The Python API, the live viewer (x0 previews decoded by the VAE), TensorBoard and `view` through the
real diffusers code path (a tiny SD 1.x pipeline), and the viewer following a staged run whose
Gaussians become a mesh."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from rich.console import Console

import threedistill as td
from support import TINY_FLAGS
from threedistill.engine.plan import parse_run_plan
from threedistill.viewer.live import LiveViewer
from threedistill.viewer.scene import SplatArrays
from threedistill.viewer.static import read_viewable


def test_api_viewer_and_tensorboard_on_stable_diffusion(tiny_sd: dict[str, Path], tmp_path: Path) -> None:
    model = shutil.copytree(tiny_sd["sd1"], tmp_path / "model")
    viewer = LiveViewer(td.ViewerOptions(port=0, update_every=1, budget=1.0), Console(quiet=True))  # every update
    try:
        run = td.run(prompt="a red mug", prior={"name": "sd", "model": str(model)}, guidance="sds", steps=2, device="cpu",
                     out=tmp_path / "runs", progress=False, callbacks=[viewer], representation={"num_points": 300},
                     sampler={"batch_size": 2},
                     log={"tensorboard": True, "preview_every": 1, "checkpoint_every": 0, "turntable_frames": 2,
                          "turntable_resolution": 32, "export_formats": ["splat", "video"]})
        assert run.finished and run.metrics["prior"] == "sd" and run.metrics["steps"] == 2
        views, x0 = viewer.views_image.image, viewer.x0_image.image
        assert viewer.x0_image.visible and x0.shape == views.shape and x0.dtype == np.uint8, "the VAE-decoded x0 of each view"
        assert viewer.asset.kinds == {0: "splats"} and "done" in viewer.status.content
    finally:
        viewer.close()
    assert any((run.run_dir / "tensorboard").iterdir())
    shutil.rmtree(model)  # a run folder is viewed and rendered without its model
    splats = read_viewable(run.run_dir, td.ViewerOptions()).drawing(0, 0.0)
    assert isinstance(splats, SplatArrays) and len(splats) == 300
    assert td.load(run.run_dir).render(td.turntable_cameras(1, 16, 16)).rgb.shape == (1, 3, 16, 16)


def test_live_viewer_follows_a_staged_run_from_splats_to_a_mesh(tmp_path: Path) -> None:
    viewer = LiveViewer(td.ViewerOptions(port=0, update_every=1, mesh_resolution=16, budget=1.0), Console(quiet=True))
    seen: list[dict[int, str]] = []

    class Watch(td.LoopCallback):
        def on_step(self, trainer: object, logs: dict[str, float]) -> None:
            seen.append(dict(viewer.asset.kinds))

    try:
        flags = [*TINY_FLAGS, "--config", "dreamgaussian", "--steps", "12", "--sampler.width", "32", "--sampler.height", "32",
                 "--log.export-formats", "glb", "--mesh.resolution", "24", "--out", str(tmp_path)]
        run = td.run_plan(parse_run_plan(flags), callbacks=[viewer, Watch()], console=Console(quiet=True))
    finally:
        viewer.close()
    assert run.finished
    assert seen[0] == {0: "splats"} and seen[-1] == {0: "mesh"}, "the Gaussians stage, then the mesh stage"


def test_live_viewer_draws_a_nerf_as_its_extracted_mesh(tmp_path: Path) -> None:
    from support import tiny_kind_flags

    viewer = LiveViewer(td.ViewerOptions(port=0, update_every=2, mesh_resolution=16, budget=1.0), Console(quiet=True))
    try:
        run = td.run_plan(parse_run_plan([*tiny_kind_flags("nerf"), "--out", str(tmp_path)]), callbacks=[viewer],
                          console=Console(quiet=True))
        assert run.finished and viewer.asset.kinds == {0: "mesh"}
    finally:
        viewer.close()
