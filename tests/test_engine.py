"""The engine's contracts: components registered from outside the package, data-only
checkpoints, the plan validated before any work, and runs loaded without a prior."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from torch import Tensor, nn

from support import TINY_FLAGS, assert_one_line_error, tiny_config
from threedistill.cli import main
from threedistill.config import parse_run_args
from threedistill.core.cameras import Cameras
from threedistill.core.errors import UserError
from threedistill.core.objective import OBJECTIVES, Needs, Objective, ObjectiveConfig, ObjectiveOutput
from threedistill.core.types import RenderOutput, TextEmbeddings
from threedistill.engine.checkpoint import load_checkpoint
from threedistill.engine.load import load_run
from threedistill.engine.plan import parse_run_plan, single_stage
from threedistill.engine.validate import validate_plan
from threedistill.render.splats import render_splats
from threedistill.representations.base import REPRESENTATIONS, Representation, RepresentationConfig


# ---------------------------------------------------------------------- components from a test module
@dataclass
class BrightnessConfig(ObjectiveConfig):
    """Pull the mean brightness of the renders toward `target`."""

    target: float = 0.2


@OBJECTIVES.register("test-brightness")
class BrightnessObjective(Objective):
    """A test-only objective that needs no prior: 0.5 * (mean(rgb) - target)^2 per view."""

    Config = BrightnessConfig
    config: BrightnessConfig
    needs = Needs(prior=False)

    def __call__(self, images: Tensor, cams: Cameras, emb: Optional[TextEmbeddings], step: int,
                 out: Optional[RenderOutput] = None) -> ObjectiveOutput:
        gap = images.mean(dim=(1, 2, 3)) - self.config.target
        loss = 0.5 * (gap**2).sum() * images[0].numel()
        return ObjectiveOutput(loss, {"brightness": float(images.mean().detach())})


@dataclass
class BlobConfig(RepresentationConfig):
    """One isotropic Gaussian blob with a learnable colour and size."""

    lr: float = 0.05
    lambda_small: float = 1e-3
    """Weight of the blob's squared log-size (a named loss term)."""


@REPRESENTATIONS.register("test-blob")
class Blob(Representation):
    """A test-only representation: one coloured Gaussian at the origin, rendered by the splat renderer."""

    Config = BlobConfig
    config: BlobConfig

    def __init__(self, config: BlobConfig, generator: torch.Generator, backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.colour_logit = nn.Parameter(torch.zeros(3))
        self.log_scale = nn.Parameter(torch.full((1,), -1.0))

    @property
    def num_points(self) -> int:
        return 1

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.colour_logit, self.log_scale], "lr": self.config.lr, "name": "blob"}]

    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        means = torch.zeros(1, 3, device=self.colour_logit.device)
        quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=means.device)
        return render_splats(means, quats, self.log_scale.exp().expand(1, 3), torch.full((1,), 0.9, device=means.device),
                             torch.sigmoid(self.colour_logit)[None], cams, background, backend="torch")

    def losses(self, out: RenderOutput, active: frozenset[str]) -> dict[str, Tensor]:
        return {"small": self.log_scale.square().sum()} if "small" in active else {}


def test_components_registered_by_a_test_module_train_through_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    flags = [f for i, f in enumerate(TINY_FLAGS) if "num-points" not in f and "num-points" not in TINY_FLAGS[i - 1]]
    code = main(["run", *flags, "--guidance", "test-brightness", "--guidance.target", "0.3", "--representation", "test-blob",
                 "--log.export-formats", "video", "--steps", "8", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert run.name.startswith("test-brightness-test-blob-")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("brightness" in r and "loss_small" in r for r in rows)  # the objective's logs and the named loss term
    assert rows[-1]["loss"] < rows[0]["loss"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["guidance"] == "test-brightness" and metrics["representation"] == "test-blob" and "mask_iou" in metrics
    assert (run / "export" / "turntable.mp4").exists()
    loaded = load_run(run)  # it loads back without the objective
    assert isinstance(loaded.representation, Blob)
    torch.testing.assert_close(loaded.representation.log_scale, torch.load(run / "checkpoints" / "last.pt", weights_only=True)
                               ["representation"]["log_scale"])


def test_registering_a_taken_name_or_config_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        OBJECTIVES.register("sds")(BrightnessObjective)
    with pytest.raises(ValueError, match="already configures"):
        OBJECTIVES.register("another-brightness")(BrightnessObjective)


# ---------------------------------------------------------------------- checkpoints are data
class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", *TINY_FLAGS, "--steps", "3", "--out", str(out)]) == 0
    (run,) = out.glob("*/*")
    return run


@pytest.mark.parametrize("command", ["export", "resume"])
def test_a_checkpoint_whose_pickle_runs_a_command_is_refused(command: str, finished_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "shared-run"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "the-command-ran"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["representation"]["means"] = _RunsACommand(marker)
    torch.save(state, run / "checkpoints" / "last.pt")
    assert main([command, str(run)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "other than tensors" in lines[0] and "last.pt" in lines[0], err
    assert not marker.exists()


def test_checkpoints_are_versioned_data(finished_run: Path, tmp_path: Path) -> None:
    state = load_checkpoint(finished_run / "checkpoints" / "last.pt")
    assert state["format"] == "threedistill-checkpoint" and state["version"] == 2
    future = tmp_path / "future.pt"
    torch.save({**state, "version": 99}, future)
    with pytest.raises(UserError, match="version 99"):
        load_checkpoint(future)


def test_export_loads_the_run_without_a_prior(finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    from threedistill.priors.base import Prior

    def no_prior(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("export built a prior")

    monkeypatch.setattr(Prior, "__init__", no_prior)
    monkeypatch.setattr("threedistill.priors.toyworld.prior.ToyworldPrior.__init__", no_prior)
    assert main(["export", str(finished_run), "--format", "splat"]) == 0
    assert capsys.readouterr().out.strip().endswith("splats.ply")


# ---------------------------------------------------------------------- the plan, before any work
def test_every_stage_is_validated_before_the_first_starts(tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("stages:\n  - {name: a}\n  - {name: b, representation: {name: mesh, path: %s}}\n" % (tmp_path / "gone.glb"))
    plan = parse_run_plan(["--config", str(preset), *TINY_FLAGS, "--out", str(tmp_path)])
    with pytest.raises(UserError, match="stage 'b': mesh file not found"):
        validate_plan(plan)
    names, cfg = tiny_config("--guidance", "vsd", "--guidance.particles", "2", "--dynamic", "--prompt", "a bouncing ball")
    with pytest.raises(UserError, match="particles needs a static run"):
        validate_plan(single_stage(names, cfg))
    names, cfg = parse_run_args(["--guidance", "vsd", "--prior", "video-sd", "--dynamic", "--device", "cpu"])
    with pytest.raises(UserError, match="variational model"):
        validate_plan(single_stage(names, cfg))
    names, cfg = tiny_config("--guidance", "photometric")
    with pytest.raises(UserError, match="--sampler.scene"):
        validate_plan(single_stage(names, cfg))


def test_a_stage_that_changes_a_nerf_s_shape_is_refused_before_work(tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("representation: {name: nerf, log2_table_size: 12}\n"
                      "stages:\n  - {name: a}\n  - {name: b, representation: {levels: 3}}\n")
    flags = [f for i, f in enumerate(TINY_FLAGS) if "num-points" not in f and "num-points" not in TINY_FLAGS[i - 1]]
    plan = parse_run_plan(["--config", str(preset), *flags, "--out", str(tmp_path)])
    with pytest.raises(UserError, match="stage 'b': this stage changes the nerf's shape settings"):
        validate_plan(plan)


def test_editing_with_missing_sd_weights_fails_fast_before_reconstruction(tmp_path: Path) -> None:
    scene = tmp_path / "mug"
    assert main(["toyworld", "scene", "a red mug", str(scene), "--views", "4", "--resolution", "32"]) == 0
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "threedistill.cli", "edit", "--scene", str(scene), "--source", "a red mug",
                           "--target", "a blue mug", "--out", str(tmp_path / "edits")], capture_output=True, text=True, env=env, timeout=120)
    assert time.perf_counter() - start < 60
    assert_one_line_error(proc, "stabilityai/stable-diffusion-2-1-base", "--prior.model", "stage 'edit'")
    assert not (tmp_path / "edits").exists()  # nothing was reconstructed, no folder made
