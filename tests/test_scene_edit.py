"""`threedistill edit`: reconstruct a scene from posed images, then edit it (DDS, in2n)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from support import TINY_FLAGS
from threedistill.core.cameras import scene_cameras
from threedistill.cli import main
from threedistill.scene.objectives import PhotometricConfig, PhotometricObjective
from threedistill.scene.loading import Scene
from threedistill.scene.views import SceneViewSampler
from threedistill.engine.run import Run

from support import build_tiny_ip2p

EDIT_FLAGS = [*TINY_FLAGS, "--log.export-formats", "video"]
GAUSSIANS = ["--representation", "gaussians"]


def _scene(n: int = 6, size: int = 16) -> Scene:
    g = torch.Generator().manual_seed(0)
    return Scene(images=torch.rand(n, 3, size, size, generator=g), cameras=scene_cameras(n, size), masks=None, name="s", source=Path("."))


def test_scene_sampler_visits_every_view_each_epoch_and_resumes() -> None:
    sampler = SceneViewSampler(_scene(6), batch_size=2)
    g = torch.Generator().manual_seed(1)
    seen = [sampler.sample(g) for _ in range(3)]
    views = torch.cat([c.view for c in seen])
    assert sorted(views.tolist()) == list(range(6))
    assert torch.equal(seen[0].c2w, sampler.scene.cameras.c2w[seen[0].view])
    state, g_state = sampler.state_dict(), g.get_state()
    ahead = sampler.sample(g).view
    sampler.load_state_dict(state)
    g.set_state(g_state)
    assert torch.equal(sampler.sample(g).view, ahead)


def test_photometric_gradient_is_the_pixel_error() -> None:
    scene = _scene(4)
    objective = PhotometricObjective(PhotometricConfig())
    objective.images, objective.masks = scene.images, None
    cams = scene.cameras[torch.tensor([2, 0])]
    cams.view = torch.tensor([2, 0])
    renders = torch.full((2, 3, 16, 16), 0.5, requires_grad=True)
    objective(renders, cams, None, 1).loss.backward()
    expected = (renders.detach() - scene.images[[2, 0]]) / 2
    assert torch.allclose(renders.grad, expected, atol=1e-6)


@pytest.fixture(scope="module")
def red_mug_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scene") / "mug"
    assert main(["toyworld", "scene", "a red mug", str(out), "--views", "12", "--resolution", "32"]) == 0
    return out


def _run_dir(capsys: pytest.CaptureFixture) -> Path:
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def test_dds_edit_reconstructs_then_edits(red_mug_scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["edit", "--scene", str(red_mug_scene), "--source", "a red mug", "--target", "a blue mug", "--out", str(tmp_path),
                 "--reconstruct-steps", "8", *GAUSSIANS, *EDIT_FLAGS, "--steps", "4"])
    assert code == 0
    run = _run_dir(capsys)
    metrics = json.loads((run / "metrics.json").read_text())
    assert [s["stage"] for s in metrics["stages"]] == ["reconstruct", "edit"]
    assert metrics["stages"][0]["guidance"] == "photometric" and metrics["guidance"] == "scene-dds"
    assert [s["steps"] for s in metrics["stages"]] == [8, 4]
    assert {"mask_iou", "psnr"} <= set(metrics) and (run / "export" / "turntable.mp4").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("rgb_error" in r for r in rows) and any("anchor_alpha" in r for r in rows)
    resumed = Run.resume(run).trainer  # the cached source renders come back from the checkpoint
    assert resumed.stage.label == "edit" and resumed.objective.source_x0.shape[0] == 12


def test_a_run_folder_is_edited_without_reconstruction(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", *EDIT_FLAGS, "--prompt", "a red cube", "--out", str(tmp_path / "runs")]) == 0
    source = _run_dir(capsys)
    assert main(["edit", "--scene", str(source), "--source", "a red cube", "--target", "a blue cube", "--out", str(tmp_path),
                 *EDIT_FLAGS, "--steps", "3"]) == 0
    run = _run_dir(capsys)
    assert (run / "source_scene" / "transforms.json").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["representation"] == "gaussians" and metrics["steps"] == 3 and "stages" not in metrics


def test_in2n_runs_two_dataset_updates(red_mug_scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = build_tiny_ip2p(tmp_path / "ip2p")
    code = main(["edit", "--scene", str(red_mug_scene), "--method", "in2n", "--target", "a blue mug", "--instruction", "make it blue",
                 "--out", str(tmp_path), "--reconstruct-steps", "2", "--guidance.model", str(model),
                 "--guidance.update-every", "1", "--guidance.steps", "2", *GAUSSIANS, *EDIT_FLAGS, "--steps", "2"])
    assert code == 0
    run = _run_dir(capsys)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["dataset_updates"] for r in rows if "dataset_updates" in r] == [1.0, 2.0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--target", "a blue mug"], "needs --source"),
        (["--source", "a red mug", "--target", "a blue mug", "--reconstruct-steps", "0"], "--reconstruct-steps"),
        (["--source", "a red mug", "--target", "a ball", "--prior", "toyworld", "--guidance", "sds"], "guidance"),
    ],
)
def test_bad_edit_arguments_are_one_line_errors(red_mug_scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                args: list[str], needle: str) -> None:
    assert main(["edit", "--scene", str(red_mug_scene), "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not any(tmp_path.rglob("*.pt")), "nothing is trained"


def test_missing_scene_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["edit", "--scene", str(tmp_path / "nope"), "--source", "a", "--target", "b"]) == 2
    assert "scene not found" in capsys.readouterr().err


@pytest.mark.parametrize("objective", ["photometric", "scene-dds", "in2n"])
def test_scene_objectives_without_a_scene_are_one_line_errors(objective: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    extra = ["--guidance.source-prompt", "a red mug"] if objective == "scene-dds" else []
    assert main(["run", *EDIT_FLAGS, "--guidance", objective, *extra, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--sampler.scene" in err and len(err.splitlines()) == 1, err


def test_scenes_are_normalised_to_the_training_framing() -> None:
    from threedistill.scene.loading import cameras_from_c2w
    from threedistill.scene.views import look_at_centre, normalised

    scene = _scene(8)
    assert normalised(scene) is scene  # toyworld framing: looks at the origin from 2.8
    c2w = scene.cameras.c2w.clone()
    c2w[:, :3, 3] = c2w[:, :3, 3] * 10.0 + torch.tensor([5.0, -3.0, 1.0])  # a capture in its own units
    far = Scene(scene.images, cameras_from_c2w(c2w, scene.cameras.fov_y, 16, 16), None, "far", Path("."))
    assert torch.allclose(look_at_centre(far.cameras), torch.tensor([5.0, -3.0, 1.0]), atol=1e-4)
    back = normalised(far).cameras
    assert torch.allclose(back.c2w, scene.cameras.c2w, atol=1e-4)
    assert torch.allclose(back.distance, scene.cameras.distance, atol=1e-4)
