"""The web viewer: `threedistill view` reads every kind of path, and, in headless Chromium (SwiftShader
WebGL), renders a run's splats; a live run's page follows the loop, its Pause freezes the step counter,
Resume moves it on, Save checkpoint writes one, Stop ends the run as Ctrl-C does, and the asset changes
on screen."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from support import TINY_FLAGS, CliProcess, assert_one_line_error, browser_page, run_cli
from threedistill.core.errors import UserError
from threedistill.core.geometry import SurfaceMesh
from threedistill.engine.load import load_run
from threedistill.export.splat_ply import read_splat_ply
from threedistill.viewer.options import ViewerOptions
from threedistill.viewer.scene import SplatArrays
from threedistill.viewer.static import read_viewable

STEP = re.compile(r"step (\d+) / (\d+)")


def test_view_reads_run_folders_splats_and_meshes(finished_run: Path, made_run, tmp_path: Path) -> None:
    options = ViewerOptions()
    gaussians = read_viewable(finished_run, options)
    splats = gaussians.drawing(0, 0.0)
    assert isinstance(splats, SplatArrays) and len(splats) == 300
    assert gaussians.cameras is not None and len(gaussians.cameras) == 16 and not gaussians.dynamic
    assert np.all((splats.opacities >= 0) & (splats.opacities <= 1)) and np.all(np.linalg.eigvalsh(splats.covariances) > 0)
    ply = read_viewable(finished_run / "export" / "splats.ply", options).drawing(0, 0.0)
    assert isinstance(ply, SplatArrays) and len(ply) == len(read_splat_ply(finished_run / "export" / "splats.ply")["means"])
    np.testing.assert_allclose(ply.centers, splats.centers, atol=1e-6)
    vertices, faces, colours = read_viewable(finished_run / "export" / "mesh.glb", options).drawing(0, 0.0)  # type: ignore[misc]
    assert len(faces) > 0 and colours.shape == (len(faces), 3)
    for kind in ("nerf", "mesh"):
        surface = read_viewable(made_run(kind), options).drawing(0, 0.0)
        assert isinstance(surface, SurfaceMesh) and len(surface.faces) > 0, kind
    moving = read_viewable(made_run("4d"), options)
    assert moving.dynamic and moving.frames == 3
    start, end = moving.drawing(0, 0.0), moving.drawing(0, 1.0)
    assert isinstance(start, SplatArrays) and isinstance(end, SplatArrays)
    deformed = load_run(made_run("4d"), device="cpu").representation
    for shown, t in ((start, 0.0), (end, 1.0)):  # the slider's time goes through the deformation field
        np.testing.assert_allclose(shown.centers, deformed.as_splats(t)["means"].numpy(), atol=1e-6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run folder"):
        read_viewable(tmp_path / "empty", options)
    with pytest.raises(UserError, match="nothing to view"):
        read_viewable(tmp_path / "missing.ply", options)


def test_viewer_flags_are_checked_before_work(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("view", str(tmp_path / "nope")), "nothing to view")
    assert_one_line_error(run_cli("run", *TINY_FLAGS, "--viewer.port", "70000", "--out", str(tmp_path)), "--viewer.port")
    assert_one_line_error(run_cli("view", str(tmp_path), "--port", "99999"), "--viewer.port")
    bad_plan = run_cli("run", *TINY_FLAGS, "--viewer", "--viewer.port", "0", "--prior.mesh", str(tmp_path / "nope.glb"),
                       "--out", str(tmp_path))
    assert_one_line_error(bad_plan, "mesh file not found")  # the plan is checked before the viewer starts
    assert not any(tmp_path.iterdir())


def test_a_host_other_than_loopback_is_warned_about() -> None:
    from rich.console import Console

    from threedistill.viewer.server import start_server, stop_server

    for host, warned in (("127.0.0.1", False), ("127.0.0.2", True)):  # both on this machine; only the first is the default
        console = Console(record=True, width=200, file=io.StringIO())
        server = start_server(ViewerOptions(host=host, port=0), console, "test")
        stop_server(server)
        text = console.export_text()
        assert (f"the viewer listens on {host}" in text) == warned and f"viewer: http://{host}:" in text


def _canvas_pixels(page) -> np.ndarray:
    """The 3D view's pixels left of the control panel, as floats [H,W,3]."""
    shot = iio.imread(page.screenshot(), extension=".png")[..., :3].astype(np.float32) / 255.0
    return shot[100:650, 150:650]


def _hide_cameras(page) -> None:
    page.get_by_text("Show cameras").first.wait_for(timeout=60000)
    page.get_by_role("checkbox").first.uncheck()


@pytest.mark.browser
def test_view_renders_the_splats_in_chromium(finished_run: Path) -> None:
    with browser_page() as page:
        viewer = CliProcess("view", str(finished_run), "--port", "0")
        try:
            page.goto(viewer.url())
            _hide_cameras(page)
            time.sleep(3)
            pixels = _canvas_pixels(page)
            drawn = pixels.min(axis=-1) < 0.8  # the background is white
            assert drawn.sum() > 500, f"a blank render: {drawn.sum()} drawn pixels"
            ys, xs = np.nonzero(drawn)
            assert 150 < xs.mean() < 350 and 150 < ys.mean() < 400, "the asset is in the middle of the view"
        finally:
            viewer.interrupt()
        code, out, err = viewer.finish()
    assert code == 0 and "viser" not in out, err


@pytest.mark.browser
def test_live_viewer_follows_pauses_resumes_saves_and_stops_the_run(tmp_path: Path) -> None:
    flags = [f for i, f in enumerate(TINY_FLAGS) if f != "--steps" and TINY_FLAGS[i - 1] != "--steps"]
    run = CliProcess("run", *flags, "--steps", "100000", "--representation.num-points", "600", "--log.checkpoint-every", "0",
                     "--log.preview-every", "0", "--out", str(tmp_path), "--viewer", "--viewer.port", "0", "--viewer.update-every", "3",
                     "--viewer.budget", "0.3")  # a busy test machine: keep the updates coming
    try:
        with browser_page() as page:
            page.goto(run.url())
            status = page.get_by_text(STEP).first

            def step() -> int:
                return int(STEP.search(status.inner_text()).group(1))  # type: ignore[union-attr]

            status.wait_for(timeout=120000)
            _hide_cameras(page)
            first_step, first = step(), _canvas_pixels(page)
            deadline = time.monotonic() + 60
            while step() < first_step + 30 and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(1.0)
            later = _canvas_pixels(page)
            changed = np.abs(later - first).max(axis=-1) > 0.1
            assert changed.sum() > 200, f"the asset did not change on screen ({changed.sum()} pixels, steps {first_step} -> {step()})"

            page.get_by_role("button", name="Pause").click()
            page.get_by_text("paused").first.wait_for(timeout=30000)
            paused_at = step()
            metrics = tmp_path.glob("*/*/metrics.jsonl")
            log = next(metrics)
            rows = len(log.read_text().splitlines())
            time.sleep(2.5)
            assert step() == paused_at and len(log.read_text().splitlines()) == rows, "Pause freezes the loop"

            page.get_by_role("button", name="Save checkpoint").click()
            saved = log.parent / "checkpoints" / f"step-{paused_at:06d}.pt"
            deadline = time.monotonic() + 30
            while not saved.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert saved.exists(), "Save checkpoint writes one (also while paused)"

            page.get_by_role("button", name="Resume").click()
            deadline = time.monotonic() + 60
            while step() <= paused_at + 5 and time.monotonic() < deadline:
                time.sleep(0.3)
            assert step() > paused_at + 5, "Resume moves the step counter on"

            page.get_by_role("button", name="Stop").click()
            code, out, err = run.finish(timeout=120)
    finally:
        run.kill()
    assert code == 130, err
    assert "threedistill resume" in " ".join(err.split()) and (log.parent / "checkpoints" / "last.pt").exists()
    assert "checkpoint saved from the viewer" in (log.parent / "log.txt").read_text()


def test_frustum_poses_and_particles_side_by_side() -> None:
    """A camera's frustum is drawn with its own rotation (c2w -> wxyz) and position; particles stand in a row."""
    import torch

    from threedistill.core.cameras import orbit_cameras
    from threedistill.render.splats_torch import quat_to_rotmat
    from threedistill.viewer.scene import PARTICLE_SPACING, c2w_pose, member_offset

    n = 7
    cams = orbit_cameras(torch.linspace(-30, 80, n), torch.linspace(-180, 170, n), torch.full((n,), 2.8), torch.full((n,), 40.0), 8, 8)
    for c2w in cams.c2w.numpy():
        wxyz, position = c2w_pose(c2w)
        np.testing.assert_allclose(quat_to_rotmat(torch.tensor(wxyz)).numpy(), c2w[:3, :3], atol=1e-5)
        np.testing.assert_allclose(position, c2w[:3, 3], atol=1e-6)
    row = [member_offset(i, 3) for i in range(3)]
    assert row == [(0.0, -PARTICLE_SPACING, 0.0), (0.0, 0.0, 0.0), (0.0, PARTICLE_SPACING, 0.0)]
