"""Multi-stage runs: expanding a config's stages, chaining representations, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from support import TINY_FLAGS, run_for
from threedistill.cli import main
from threedistill.core.errors import UserError
from threedistill.representations.gaussians import PARAM_NAMES
from threedistill.engine.run_dir import new_run_dir
from threedistill.engine.plan import load_run_plan, parse_run_plan
from threedistill.engine.run import Run

TWO_GAUSSIAN_STAGES = """\
prompt: a red cube
representation: {name: gaussians, lr_final_factor: 0.5}
stages:
  - {name: coarse, share: 0.5}
  - name: fine
    sampler: {width: 24, height: 24}
    representation: {lr_final_factor: 1.0}
"""


def _preset(tmp_path: Path, text: str) -> str:
    path = tmp_path / "staged.yaml"
    path.write_text(text)
    return str(path)


def test_stage_expansion_rules(tmp_path: Path) -> None:
    text = """\
steps: 100
representation: {name: nerf, max_resolution: 48}
stages:
  - {name: a, share: 0.25}
  - {name: b, steps: 30, representation: {samples_per_ray: 16}}
  - {name: c, representation: {name: gaussians, num_points: 500}}
  - {name: d, guidance: {name: vsd}}
"""
    plan = parse_run_plan(["--config", _preset(tmp_path, text), "--prior", "toyworld", "--representation.max-resolution", "40",
                           "--sampler.width", "48"])
    assert [s.label for s in plan] == ["a", "b", "c", "d"]
    assert [s.cfg.steps for s in plan] == [25, 30, 23, 22]  # share, steps, equal split of the rest
    assert plan[1].cfg.representation.samples_per_ray == 16 and plan[0].cfg.representation.samples_per_ray != 16
    assert [s.cfg.representation.max_resolution for s in plan if s.names.representation == "nerf"] == [40, 40, 40]
    assert plan[2].names.representation == "gaussians" and plan[2].cfg.representation.num_points == 500
    assert plan[3].names.guidance == "vsd" and all(s.names.prior == "toyworld" for s in plan)
    assert all(s.cfg.sampler.width == 48 for s in plan)  # command-line flags win in every stage


def test_a_pixel_prior_stage_takes_the_pixel_space_counterpart(tmp_path: Path) -> None:
    """StableDreamer's geometry stage: sd -> deepfloyd-if with IF's defaults and the stage's own prior fields;
    `--prior.*` flags set the run's prior only; pixel-space priors and those without a counterpart keep theirs."""
    text = "steps: 10\nstages:\n  - {name: g, pixel_prior: true, prior: {model: my-if, cfg_scale: 12}}\n  - {name: c}\n"
    plan = parse_run_plan(["--config", _preset(tmp_path, text), "--prior", "sd", "--prior.model", "my-sd"])
    assert [s.names.prior for s in plan] == ["deepfloyd-if", "sd"]
    assert (plan[0].cfg.prior.model, plan[0].cfg.prior.cfg_scale, plan[1].cfg.prior.model) == ("my-if", 12, "my-sd")
    for prior in ("toyworld", "toyworld-sd"):
        assert [s.names.prior for s in parse_run_plan(["--config", "stabledreamer", "--prior", prior])] == [prior, prior]
    shipped = parse_run_plan(["--config", "stabledreamer", "--prior", "sd"])
    assert [s.names.prior for s in shipped] == ["deepfloyd-if", "sd"] and shipped[0].cfg.sampler.width == 64


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ("  - {prompt: a ball}", "'prompt' is not allowed in a stage; set it at the top level"),
        ("  - {renderer: {}}", "'renderer' is not allowed"),
        ("  - {steps: 3, share: 0.5}", "both steps and share"),
        ("  - {share: lots}", "non-numeric"),
        ("  - {name: x, representation: {num_pints: 3}}", "num_pints"),
        ("  - {name: x}\n  - {name: x}", "unique"),
        ("  - just a string", "must be a mapping"),
        ("  - {steps: 0}", "would run 0 steps"),
        ("  - {name: x, pixel_prior: yes please}", "pixel_prior must be true or false"),
    ],
)
def test_bad_stage_entries_are_one_line_errors(tmp_path: Path, stages: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        parse_run_plan(["--config", _preset(tmp_path, f"steps: 10\nstages:\n{stages}\n"), "--prior", "toyworld"])
    assert "\n" not in str(err.value)


def test_stages_chain_and_write_one_run_folder(tmp_path: Path) -> None:
    plan = parse_run_plan(["--config", _preset(tmp_path, TWO_GAUSSIAN_STAGES), *TINY_FLAGS, "--out", str(tmp_path)])
    assert [s.cfg.steps for s in plan] == [3, 3] and plan[1].cfg.sampler.width == 32  # the flag wins over the stage
    run_dir = new_run_dir(tmp_path, "a red cube", "sds", "gaussians")
    run = run_for(plan[0].names, plan[0].cfg, run_dir, plan)
    first = run.trainer
    assert first.train()
    first.finish()
    second = run.next_stage()
    assert second is not None and second.index == 1 and second.prior is first.prior
    for name in PARAM_NAMES:  # the fine stage starts exactly where the coarse one ended
        assert torch.equal(getattr(second.representation, name), getattr(first.representation, name))
    assert second.train()
    summary = second.finish()
    assert run.next_stage() is None
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [s["stage"] for s in metrics["stages"]] == ["coarse", "fine"] and metrics == summary
    assert metrics["steps"] == 3 and "mask_iou" in metrics["stages"][0]
    for name in ("coarse-step-000003.pt", "fine-step-000003.pt", "last.pt"):
        assert (run_dir / "checkpoints" / name).exists(), name
    assert [s.label for s in load_run_plan(run_dir / "config.yaml")] == ["coarse", "fine"]
    assert [(s.names, s.cfg) for s in load_run_plan(run_dir / "config.yaml")] == [(s.names, s.cfg) for s in plan]

    resumed = Run.resume(run_dir, checkpoint=run_dir / "checkpoints" / "fine-step-000003.pt").trainer
    assert resumed.index == 1 and resumed.stage.label == "fine"
    assert [h["stage"] for h in resumed.context.stage_history] == ["coarse"]


def test_staged_cli_run_and_resume_between_stages(tmp_path: Path, capsys) -> None:
    argv = ["run", "--config", _preset(tmp_path, TWO_GAUSSIAN_STAGES), *TINY_FLAGS, "--out", str(tmp_path)]
    assert main(argv) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert run_dir.name.startswith("sds-gaussians-")
    assert json.loads((run_dir / "metrics.json").read_text())["stages"][1]["stage"] == "fine"
    # resuming from the end of the coarse stage runs the fine stage again
    (run_dir / "checkpoints" / "coarse-step-000003.pt").replace(run_dir / "checkpoints" / "last.pt")
    (run_dir / "metrics.json").unlink()
    assert main(["resume", str(run_dir)]) == 0
    assert [s["stage"] for s in json.loads((run_dir / "metrics.json").read_text())["stages"]] == ["coarse", "fine"]


def test_single_stage_commands_refuse_staged_configs(tmp_path: Path, capsys) -> None:
    preset = _preset(tmp_path, TWO_GAUSSIAN_STAGES)
    assert main(["edit-image", str(tmp_path / "x.png"), "--source", "a", "--target", "b", "--config", preset]) == 2
    assert "has stages" in capsys.readouterr().err


def test_a_mesh_stage_starts_from_the_nerf_surface(tmp_path: Path) -> None:
    from support import SMALL_NERF as SMALL

    flags = [f for i, f in enumerate(TINY_FLAGS) if "num-points" not in f and "num-points" not in TINY_FLAGS[i - 1]]
    nerf = "{" + ", ".join(f"{k}: {v}" for k, v in SMALL.items()) + "}"
    text = f"""\
prompt: a red cube
representation: {{name: nerf, {nerf[1:]}
mesh: {{resolution: 40}}
stages:
  - {{name: coarse, share: 0.5}}
  - {{name: refine, representation: {{name: mesh, init_subdivisions: 2}}}}
"""
    plan = parse_run_plan(["--config", _preset(tmp_path, text), *flags, "--out", str(tmp_path), "--log.export-formats", "glb"])
    run = run_for(plan[0].names, plan[0].cfg, new_run_dir(tmp_path, "a red cube", "sds", "nerf-mesh"), plan)
    first = run.trainer
    assert first.train()
    first.finish()
    surface = first.exports.mesh(0)
    second = run.next_stage()
    mesh = second.representation
    assert type(mesh).__name__ == "Mesh" and mesh.num_points == len(surface.vertices)
    assert torch.allclose(mesh.vertices, torch.from_numpy(surface.vertices), atol=1e-6)
    assert torch.allclose(mesh.vertex_colours(), torch.from_numpy(surface.vertex_colors), atol=1e-4)  # the colours carry over
    assert second.train()
    summary = second.finish()
    assert summary["representation"] == "mesh" and [s["stage"] for s in summary["stages"]] == ["coarse", "refine"]
    assert (second.run_dir / "export" / "mesh.glb").exists()
    with pytest.raises(UserError, match="cannot start from"):
        from threedistill.representations.convert import representation_from

        representation_from(second.previous_asset(), "nerf", plan[0].cfg.representation, torch.Generator(), "auto")
