from pathlib import Path

import pytest

from threedistill.config import (
    ComponentNames,
    config_to_yaml,
    load_config,
    parse_run_args,
)
from threedistill.core.errors import UserError
from threedistill.engine.plan import load_run_plan, parse_run_plan


def test_defaults() -> None:
    names, cfg = parse_run_args([])
    assert names == ComponentNames("sd", "sds", "gaussians")
    assert cfg.prior.model == "stabilityai/stable-diffusion-2-1-base"
    names, _ = parse_run_args(["--prior", "toyworld"])
    assert names == ComponentNames("toyworld", "sds", "gaussians")
    assert cfg.prompt == "a red mug" and cfg.steps > 0


def test_name_flags_and_dotted_flags() -> None:
    names, cfg = parse_run_args(
        ["--prior", "toyworld", "--prior.kappa", "7", "--guidance=sds", "--guidance.cfg-scale", "2.5", "--steps", "5", "--prior.mesh", "x.glb"]
    )
    assert names.guidance == "sds"
    assert cfg.prior.kappa == 7 and cfg.prior.mesh == "x.glb"
    assert cfg.guidance.cfg_scale == 2.5 and cfg.steps == 5


def test_schedule_flag() -> None:
    _, cfg = parse_run_args(["--guidance.max-step", "0", "980", "0.5", "500"])
    assert cfg.guidance.max_step == [(0.0, 980.0), (0.5, 500.0)]


@pytest.mark.parametrize("flag,name", [("--guidance", "nope"), ("--representation", "voxels"), ("--prior", "imagen")])
def test_unknown_component_names(flag: str, name: str) -> None:
    with pytest.raises(UserError, match=f"unknown .*'{name}'.*valid"):
        parse_run_args([flag, name])


def test_presets_load_and_validate() -> None:
    for preset in Path("configs").glob("*.yaml"):
        names, cfg = load_config(str(preset), {})
        assert names.prior in ("toyworld", "sd")  # recipe presets leave the prior to the user (default sd)
        plan = parse_run_plan(["--config", str(preset), "--prior", "toyworld"])
        assert sum(s.cfg.steps for s in plan) == cfg.steps


def test_yaml_typo_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("guidance:\n  name: sds\n  cfg_sale: 3\n")
    with pytest.raises(UserError, match="cfg_sale"):
        load_config(str(bad), {})


def test_yaml_wrong_type(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: many\n")
    with pytest.raises(UserError, match="steps"):
        load_config(str(bad), {})


def test_malformed_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompt: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(str(bad), {})


def test_unknown_preset() -> None:
    with pytest.raises(UserError, match="presets:"):
        load_config("no-such-preset", {})


def test_yaml_round_trip(tmp_path: Path) -> None:
    names, cfg = parse_run_args(["--prompt", "a ball", "--guidance.max-step", "0", "980", "0.5", "500", "--sampler.batch-size", "2"])
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(names, cfg))
    (stage,) = load_run_plan(path)
    names2, cfg2 = stage.names, stage.cfg
    assert names2 == names and cfg2 == cfg


def test_cli_overrides_preset(tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("steps: 11\nprompt: a ball\n")
    _, cfg = parse_run_args(["--config", str(preset), "--steps", "4"])
    assert cfg.steps == 4 and cfg.prompt == "a ball"


def test_default_run_length_depends_on_the_kind_of_run() -> None:
    """Static 3D Gaussians on toyworld default to 500 steps (they reach their quality there); 4D
    runs, other priors, other representations and explicit --steps keep their lengths."""
    from threedistill.config import parse_run_args

    assert parse_run_args(["--prior", "toyworld"])[1].steps == 500
    assert parse_run_args(["--prior", "toyworld", "--config", "toyworld-sds"])[1].steps == 500
    assert parse_run_args(["--prior", "toyworld", "--steps", "700"])[1].steps == 700
    assert parse_run_args(["--prior", "toyworld", "--dynamic", "--prompt", "a bouncing ball"])[1].steps == 1000
    assert parse_run_args(["--prior", "sd"])[1].steps == 1000
    assert parse_run_args(["--prior", "toyworld", "--representation", "mesh"])[1].steps == 1000


def test_sds_on_toyworld_gaussians_starts_at_high_t_and_relocates_unless_told_otherwise(tmp_path: Path) -> None:
    """SDS with 3D Gaussians on toyworld raises t's floor to 800 at the start (falling to 20 over the first 40 %),
    relocates faint Gaussians from step 250 to 450 and sharpens the prior's camera kernel (kappa 10000; config.py
    SITUATIONAL_DEFAULTS); other objectives and priors keep the components' defaults; flags and a config file's values
    win; the toyworld-sds preset spells the defaults out."""
    from threedistill.config import parse_run_args
    from threedistill.priors.toyworld.prior import ToyworldConfig

    def settings(*argv: str) -> tuple[object, int, int, int, float, object]:
        cfg = parse_run_args(["--prompt", "a red mug", *argv])[1]
        rep = cfg.representation
        return (cfg.guidance.min_step, rep.relocate_every, rep.relocate_from, rep.relocate_until,  # type: ignore[attr-defined]
                rep.relocate_opacity, cfg.prior.kappa if isinstance(cfg.prior, ToyworldConfig) else None)  # type: ignore[attr-defined]

    toyworld = ([(0.0, 800.0), (0.4, 20.0)], 25, 250, 450, 0.1, 10000.0)
    assert settings("--prior", "toyworld") == toyworld
    assert settings("--prior", "toyworld", "--config", "toyworld-sds") == toyworld
    assert settings("--prior", "toyworld", "--guidance", "vsd") == (None, 0, 100, 0, 0.02, 200.0)
    assert parse_run_args(["--prior", "toyworld", "--representation", "nerf"])[1].prior.kappa == 200.0  # type: ignore[attr-defined]
    assert settings("--prior", "sd") == (None, 0, 100, 0, 0.02, None)
    flagged = settings("--prior", "toyworld", "--guidance.min-step", "50", "--representation.relocate-every", "0", "--prior.kappa", "200")
    assert (flagged[0], flagged[1], flagged[-1]) == (50.0, 0, 200.0)
    preset = tmp_path / "p.yaml"
    preset.write_text("prior: {name: toyworld, kappa: 500}\nguidance: {name: sds, min_step: 100}\n"
                      "representation: {name: gaussians, relocate_until: 300}\n")
    assert settings("--config", str(preset)) == (100.0, 25, 250, 300, 0.1, 500.0)


def test_toyworld_sd_gaussians_start_faint_unless_told_otherwise(tmp_path: Path) -> None:
    """On toyworld-sd Gaussians start at opacity logit -4 (config.py SITUATIONAL_DEFAULTS); other
    priors keep the representation's -1; a flag or a config file's value wins."""
    from threedistill.config import parse_run_args

    def opacity(*argv: str) -> float:
        return parse_run_args(["--prompt", "a yellow duck", *argv])[1].representation.init_opacity_logit  # type: ignore[attr-defined]

    assert opacity("--prior", "toyworld-sd") == -4.0
    assert opacity("--prior", "toyworld") == -1.0 and opacity("--prior", "sd") == -1.0
    assert opacity("--prior", "toyworld-sd", "--representation.init-opacity-logit", "-2") == -2.0
    preset = tmp_path / "p.yaml"
    preset.write_text("prior: toyworld-sd\nrepresentation: {name: gaussians, init_opacity_logit: -3.0}\n")
    assert opacity("--config", str(preset)) == -3.0
    assert parse_run_args(["--prior", "toyworld-sd", "--prompt", "a yellow duck"])[1].steps == 1000
