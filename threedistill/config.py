"""Run configuration: one static, typed dataclass (`RunConfig`) is the single source of truth.

Its component sections are typed by the contracts' config base classes (`PriorConfig`,
`ObjectiveConfig`, `RepresentationConfig`); a run's instance holds the chosen components'
own `Config` subclasses, whose registered names (`--prior toyworld`) are the YAML `name` keys.
YAML presets (threedistill/configs/*.yaml) and saved run configs use the same layout:

    prompt: a red mug
    guidance: {name: sds, cfg_scale: 1.0}

They are validated against the chosen components' dataclasses (a misspelt key is an error
naming it), then CLI flags (tyro, narrowed to those subclasses) override them.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import components  # noqa: F401  (registers the built-in components)
from .core.cameras import OrbitSamplerConfig
from .core.errors import UserError
from .core.motion import MotionConfig, video_prior_name
from .core.objective import OBJECTIVES, ObjectiveConfig
from .core.schedule import validate_schedule
from .export.extract import MeshExportConfig
from .guidance.sds import SDSConfig
from .priors.base import PRIORS, PriorConfig
from .priors.diffusers.stable_diffusion import StableDiffusionConfig
from .priors.prompts import PromptConfig
from .reference.view import ReferenceConfig
from .representations.base import REPRESENTATIONS, RepresentationConfig
from .representations.deformation import DeformationConfig
from .representations.gaussians import GaussiansConfig
from .representations.mesh import MeshConfig
from .priors.toyworld.prior import ToyworldConfig

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
"""The shipped presets (package data: found from a wheel as from a checkout)."""
COMPONENTS = ("prior", "guidance", "representation")


class ComponentNames(NamedTuple):
    prior: str = "sd"
    guidance: str = "sds"
    representation: str = "gaussians"


@dataclass
class RenderConfig:
    """How training views are rendered."""

    backend: Literal["auto", "cuda", "torch"] = "auto"
    """auto: gsplat/nerfacc kernels on CUDA when they load, else the torch reference."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """The solid background (evaluation and exports always use it)."""
    background_mode: Literal["solid", "random", "mlp"] = "solid"
    """Training background: solid, a random colour per view, or an MLP of the ray direction (render/background.py)."""
    background_lr: float = 1e-3
    """Learning rate of the background MLP."""


@dataclass
class LogConfig:
    """Progress, previews, checkpoints and evaluation."""

    progress: bool = True
    """Show the progress bar (step, loss, it/s, ETA)."""
    log_every: int = 10
    """Write a metrics.jsonl row every N steps."""
    preview_every: int = 100
    """Save a preview grid every N steps (0: only at the end)."""
    x0_previews: bool = False
    """Add a second row to each preview grid (and TensorBoard's): the prior's one-step estimate of the clean
    image, x0_hat = (x_t - sigma_t e_hat) / alpha_t decoded, under each training view (objectives that have one)."""
    checkpoint_every: int = 100
    """Write step-NNNNNN.pt and last.pt every N steps (0: only at the end)."""
    max_nonfinite_steps: int = 20
    """Stop the run after this many steps in a row whose loss or gradient is not finite (they are skipped),
    keeping the checkpoint from before the first of them (0: never stop)."""
    turntable_frames: int = 60
    turntable_resolution: int = 256
    eval_views: int = 16
    """Held-out cameras for toyworld metrics."""
    tensorboard: bool = False
    """Also log to RUN_DIR/tensorboard: the metrics.jsonl scalars, preview grids and the turntable
    video (pip extra [tensorboard]; `tensorboard --logdir outputs`)."""
    export_formats: tuple[str, ...] = ("splat", "video", "glb", "ply")
    """Written into export/ when a run finishes: splat, video, glb, obj, ply (obj adds a UV atlas and
    a baked texture: ~40 s on a 2-core CPU; `threedistill export RUN --format obj` makes it later)."""


@dataclass
class RunConfig:
    """Everything one stage of a run trains with (a staged run has one per stage, engine/plan.py)."""

    prompt: str = field(default="a red mug", metadata={"help": "Text prompt (toyworld: see `threedistill toyworld list`)."})
    image: Optional[str] = field(default=None, metadata={"help": "Image-to-3D: an RGBA image of the object (alpha = its mask), "
                                                              "fitted at --reference.* while the prior guides the other views."})
    negative_prompt: str = ""
    steps: int = 1000
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out: str = "outputs"
    prompts: PromptConfig = field(default_factory=PromptConfig)
    prior: PriorConfig = field(default_factory=StableDiffusionConfig)
    guidance: ObjectiveConfig = field(default_factory=SDSConfig)
    representation: RepresentationConfig = field(default_factory=GaussiansConfig)
    sampler: OrbitSamplerConfig = field(default_factory=OrbitSamplerConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    log: LogConfig = field(default_factory=LogConfig)
    mesh: MeshExportConfig = field(default_factory=MeshExportConfig)
    dynamic: bool = field(default=False, metadata={"help": "4D: deform the representation over time and distill clips (core/motion.py)."})
    motion: MotionConfig = field(default_factory=MotionConfig)
    deformation: DeformationConfig = field(default_factory=DeformationConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)

    def component_names(self) -> ComponentNames:
        """The registered names of its prior, objective and representation."""
        return ComponentNames(PRIORS.name_of(self.prior), OBJECTIVES.name_of(self.guidance), REPRESENTATIONS.name_of(self.representation))


def default_run_config(names: ComponentNames = ComponentNames()) -> RunConfig:
    """The defaults, with each component section the chosen component's own `Config`."""
    return RunConfig(prior=PRIORS.config_type(names.prior)(), guidance=OBJECTIVES.config_type(names.guidance)(),
                     representation=REPRESENTATIONS.config_type(names.representation)())


# ---------------------------------------------------------------------- YAML
def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read config '{path}': {exc.strerror}; pass a readable YAML file") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise UserError(f"config '{path}' is not valid YAML{line}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config '{path}' must be a mapping of keys to values, got {type(data).__name__}")
    return data


def resolve_config_path(name_or_path: str) -> Path:
    """A preset name (threedistill/configs/NAME.yaml) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise UserError(f"config file not found: '{path}'; pass an existing YAML file or a preset name")
        return path
    preset = CONFIGS_DIR / f"{name_or_path}.yaml"
    if not preset.exists():
        names = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))
        raise UserError(f"unknown config preset '{name_or_path}'; presets: {', '.join(names)} (or pass a .yaml path)")
    return preset


def split_component_names(data: dict[str, Any], overrides: dict[str, Optional[str]]) -> ComponentNames:
    """Pop `name` from each component section; CLI overrides win (and then the file's fields of
    another component are dropped: `--config quick --prior sd` keeps SD's defaults)."""
    chosen = {}
    for comp in COMPONENTS:
        section = data.get(comp)
        name = None
        if isinstance(section, dict):
            name = section.pop("name", None)
        elif isinstance(section, str):  # `guidance: vsd` shorthand
            name = section
            data.pop(comp)
        if name is not None and not isinstance(name, str):
            raise UserError(f"config: '{comp}: name' must be a {comp} name, got {name!r}; e.g. {comp}: {{name: "
                            f"{getattr(ComponentNames(), comp)}}}")
        override = overrides.get(comp)
        if override and name and override != name and isinstance(data.get(comp), dict):
            data[comp] = {}  # the file's fields belong to the component it named, not to the one the flag chose
        chosen[comp] = override or name or getattr(ComponentNames(), comp)
    chosen["prior"] = video_prior_name(chosen["prior"], bool(data.get("dynamic")))
    return ComponentNames(**chosen)


def _is_schedule(annotation: Any) -> bool:
    """Schedule fields (a number or a list of points) are a Union omegaconf cannot type-check."""
    text = str(annotation)
    return "Schedule" in text or "list[tuple[float, float]]" in text


def _pop_schedules(cfg: Any, data: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """Remove schedule values from `data` (validated separately); keyed by (section, field)."""
    popped = {}
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        sub = data.get(section.name)
        if not dataclasses.is_dataclass(value) or not isinstance(sub, dict):
            continue
        for f in dataclasses.fields(value):
            if _is_schedule(f.type) and f.name in sub:
                popped[(section.name, f.name)] = sub.pop(f.name)
    return popped


def _normalise_schedule(key: str, value: Any) -> Any:
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if value is None else float(value)
    try:
        validate_schedule(key, value)
        return [(float(s), float(v)) for s, v in value]
    except (ValueError, TypeError):
        raise UserError(f"invalid config value for '{key}': {value!r}; use a number or a list of [step, value] points") from None


def config_from_dict(data: dict[str, Any], names: ComponentNames, source: str) -> RunConfig:
    """Validate a nested dict against the schema and return the run dataclass."""
    default = default_run_config(names)
    data = copy.deepcopy(data)
    schedules = _pop_schedules(default, data)
    base = OmegaConf.structured(default)
    try:
        merged = OmegaConf.merge(base, OmegaConf.create(data))
        cfg = OmegaConf.to_object(merged)
        assert isinstance(cfg, RunConfig)
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        where = f" (key '{key}')" if key else ""
        raise UserError(f"invalid config {source}{where}: {msg}; fix or remove that key") from None
    for (section, name), value in schedules.items():
        setattr(getattr(cfg, section), name, _normalise_schedule(f"{section}.{name}", value))
    apply_objective_prior_defaults(names, cfg)
    apply_material_prior_defaults(cfg)
    return cfg


def apply_objective_prior_defaults(names: ComponentNames, cfg: RunConfig) -> None:
    """Fill prior fields left unset (None) with the objective's preference for that prior.

    E.g. csd and csm ask toyworld for a softened posterior (temperature 100).
    """
    preferred = type(cfg.guidance).PRIOR_DEFAULTS.get(names.prior, {})
    prior_fields = {f.name for f in dataclasses.fields(cfg.prior)}
    for key, value in preferred.items():
        if key in prior_fields and getattr(cfg.prior, key) is None:
            setattr(cfg.prior, key, value)


def apply_material_flag(names: ComponentNames, data: dict[str, Any], material: str) -> None:
    """`--material pbr|albedo`: shorthand for `--representation.material` of a mesh."""
    if names.representation != "mesh":
        raise UserError(f"--material {material} is a material of an explicit mesh, not of --representation {names.representation}; "
                        "add --representation mesh --representation.path MESH_FILE")
    section = data.get("representation")
    if not isinstance(section, dict):
        section = data["representation"] = {}
    section["material"] = material


def apply_material_prior_defaults(cfg: RunConfig) -> None:
    """A PBR mesh run asks a prior with a `material` setting left unset (toyworld) for PBR references,
    and renders the light condition when the prior's ControlNet reads it."""
    if not isinstance(cfg.representation, MeshConfig) or cfg.representation.material != "pbr":
        return
    if isinstance(cfg.prior, ToyworldConfig) and cfg.prior.material is None:
        cfg.prior.material = "pbr"
    if isinstance(cfg.prior, StableDiffusionConfig) and cfg.prior.controlnet and "light" in cfg.prior.controlnet_condition:
        cfg.representation.light_condition = True


def read_config_data(name_or_path: Optional[str]) -> tuple[dict[str, Any], str]:
    """The raw mapping of a preset/YAML file (empty for defaults) and a description of its source."""
    if not name_or_path:
        return {}, "defaults"
    path = resolve_config_path(name_or_path)
    return _read_yaml(path), f"'{path}'"


def load_config(name_or_path: Optional[str], overrides: dict[str, Optional[str]]) -> tuple[ComponentNames, RunConfig]:
    """Load a preset/YAML (or defaults) with component names overridden from the CLI.

    A `stages` list is ignored here: this is the base config every stage starts from
    (see `threedistill.stages`)."""
    data, source = read_config_data(name_or_path)
    data.pop("stages", None)
    names = split_component_names(data, overrides)
    return names, config_from_dict(data, names, source)


def config_to_dict(names: ComponentNames, cfg: RunConfig) -> dict[str, Any]:
    """Plain nested dict with component names, ready for YAML."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(container, dict)
    data: dict[str, Any] = {str(k): v for k, v in container.items()}
    for comp in COMPONENTS:
        data[comp] = {"name": getattr(names, comp), **data[comp]}
    return data


def config_to_yaml(names: ComponentNames, cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(names, cfg), sort_keys=False)


# ---------------------------------------------------------------------- CLI
def name_flag_parser() -> argparse.ArgumentParser:
    """Reads the flags that choose component classes before tyro parses the rest."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--config", default=None)
    p.add_argument("--prior", default=None)
    p.add_argument("--guidance", default=None)
    p.add_argument("--representation", default=None)
    p.add_argument("--dynamic", action="store_true", default=None)
    p.add_argument("--image", default=None)
    p.add_argument("--material", default=None)
    p.add_argument("--pipeline", default=None)
    return p


PIPELINE_PRESETS = {"distill": None, "explicit": "eg4d"}
"""`--pipeline NAME`: distill (score distillation, the default) or explicit (EG4D / PLA4D: the `eg4d` preset)."""


def pipeline_config(pipeline: Optional[str], config: Optional[str], dynamic: bool) -> Optional[str]:
    """The `--config` a `--pipeline` choice stands for (explicit 4D: the eg4d preset; it needs --dynamic)."""
    if pipeline is None or pipeline == "distill":
        return config
    if pipeline not in PIPELINE_PRESETS:
        raise UserError(f"unknown --pipeline '{pipeline}'; choose one of: {', '.join(PIPELINE_PRESETS)}")
    if not dynamic:
        raise UserError(f"--pipeline {pipeline} makes a 4D asset from generated clips; add --dynamic")
    if config is not None:
        raise UserError(f"--pipeline {pipeline} is the preset '{PIPELINE_PRESETS[pipeline]}'; drop --config {config} "
                        f"(or copy threedistill/configs/{PIPELINE_PRESETS[pipeline]}.yaml and pass it with --config)")
    return PIPELINE_PRESETS[pipeline]


def parse_run_args(argv: list[str], prog: str = "threedistill run") -> tuple[ComponentNames, RunConfig]:
    """Parse `threedistill run` flags for a single-stage run (a staged config is an error)."""
    parsed = parse_base_args(argv, prog)
    if parsed.stages:
        raise UserError(f"{prog} needs a single-stage config, and {parsed.source} has stages; drop its `stages` list")
    return parsed.names, parsed.cfg


class ParsedRun(NamedTuple):
    """`threedistill run` flags applied to a config file's base section."""

    names: ComponentNames
    cfg: RunConfig
    """The base config after the CLI flags."""
    file_cfg: RunConfig
    """The base config as the file (or the defaults) gave it, before the flags."""
    stages: list[Any]
    """The file's raw `stages` entries (empty for a single-stage run)."""
    source: str


@dataclass(frozen=True)
class SituationalDefault:
    """A default for one prior and representation where the components' own defaults are wrong
    (single-stage static runs only); a config file or flag that sets the key wins."""

    prior: str
    representation: str
    key: str
    """A dotted key of the run config: `steps`, `representation.init_opacity_logit`."""
    value: Any
    why: str
    guidance: Optional[str] = None
    """Only for this objective (None: any)."""


SITUATIONAL_DEFAULTS = (
    SituationalDefault("toyworld", "gaussians", "steps", 500,
                       "the README's mug reached mask IoU 0.965 / 27.2 dB in 500 steps and 0.960 / 27.0 dB in 1000: "
                       "the second half of a 1000-step run only costs time (docs/benchmarks.md)"),
    *(SituationalDefault("toyworld", "gaussians", key, value, why, guidance="sds") for key, value, why in (
        ("prior.kappa", 10000.0,
         "the camera kernel at 10000 instead of 200: at 200 it hardly tells apart the references around a camera (one 1.4 "
         "degrees off, the typical spacing of 2400 references, weighs 0.94 of one at the camera; at 10000, 0.05), so once "
         "t is no longer high a view's target is the nearby reference most like the render, and thin parts settled a pixel "
         "off; procedural shapes' worst mask IoU 0.800 -> 0.898 (docs/benchmarks.md)"),
        ("guidance.min_step", [[0, 800], [0.4, 20]],
         "the first 40 % of the run starts at high t (t's floor falls from 800 to 20, then t is drawn from 20-980 as "
         "before): at high t the exact prior's target is the view at the camera, at low t the view that best matches "
         "the render, so starting low locks in whatever blob the start made; procedural shape 1 0.37 -> 0.92 mask IoU "
         "(docs/benchmarks.md)"),
        ("representation.relocate_every", 25, "3DGS-MCMC relocation of faint Gaussians onto live ones sharpens thin parts once the "
         "shape has formed (steps 250-450); from step 100 it starved parts far from the centre (docs/benchmarks.md)"),
        ("representation.relocate_from", 250, "see relocate_every"),
        ("representation.relocate_until", 450, "see relocate_every"),
        ("representation.relocate_opacity", 0.1, "see relocate_every"),
    )),
    SituationalDefault("toyworld-sd", "gaussians", "representation.init_opacity_logit", -4.0,
                       "a learned prior reads an opaque starting ball as a ball and keeps it: from logit -1 the duck "
                       "stayed a round blob (mask IoU 0.55), from a faint cloud SDS builds it (0.87; docs/benchmarks.md)"),
)
"""Measured exceptions to the component defaults, in one place (README: Defaults that depend on the prior)."""


def apply_situational_defaults(names: ComponentNames, data: dict[str, Any], staged: bool) -> None:
    """Fill `data` (a config file's mapping) with the SITUATIONAL_DEFAULTS that apply and that it leaves out."""
    if staged or data.get("dynamic"):
        return
    for default in SITUATIONAL_DEFAULTS:
        if (default.prior, default.representation) != (names.prior, names.representation):
            continue
        if default.guidance is not None and default.guidance != names.guidance:
            continue
        *sections, field_name = default.key.split(".")
        section = data
        for name in sections:
            nested = section.get(name)
            if not isinstance(nested, dict):
                nested = section[name] = {}
            section = nested
        section.setdefault(field_name, default.value)


def parse_base_args(argv: list[str], prog: str = "threedistill run") -> ParsedRun:
    """Parse `threedistill run` flags: name flags first, then tyro for every field of the base config."""
    import tyro

    known, rest = name_flag_parser().parse_known_args(argv)
    overrides = {"prior": known.prior, "guidance": known.guidance, "representation": known.representation}
    data, source = read_config_data(pipeline_config(known.pipeline, known.config, bool(known.dynamic)))
    if known.dynamic:
        data["dynamic"] = True
    if known.image is not None:
        data["image"] = known.image
        if "prompt" not in data and not any(a == "--prompt" or a.startswith("--prompt=") for a in rest):
            data["prompt"] = ""  # the image is the prompt; a text prior then asks for one (engine/validate.py)
    stages = data.pop("stages", None) or []
    if not isinstance(stages, list):
        raise UserError(f"config {source}: `stages` must be a list of stage mappings, got {type(stages).__name__}")
    names = split_component_names(data, overrides)
    if known.material is not None:
        apply_material_flag(names, data, known.material)
    apply_situational_defaults(names, data, bool(stages))
    defaults = config_from_dict(data, names, source)
    description = (
        "Optimise a 3D representation so its renders score well under a frozen 2D diffusion prior.\n"
        f"Choose components with --prior {{{','.join(PRIORS)}}} --guidance {{{','.join(OBJECTIVES)}}} "
        f"--representation {{{','.join(REPRESENTATIONS)}}} and a preset with --config NAME_OR_PATH; "
        "dotted flags set their fields. --dynamic --pipeline explicit: 4D from generated clips, no score distillation (the eg4d preset)."
    )
    cfg = _tyro_one_line_errors(lambda: tyro.cli(RunConfig, args=rest, default=defaults, prog=prog, description=description))
    if not stages:  # flags may have made the mesh PBR or the ControlNet read `light` (stages get it per stage)
        apply_material_prior_defaults(cfg)
    return ParsedRun(names, cfg, defaults, stages, source)


def _tyro_one_line_errors(parse: Callable[[], RunConfig]) -> RunConfig:
    """Run a tyro parse; its boxed error becomes a one-line UserError (help still prints)."""
    import contextlib
    import io

    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            return parse()
    except SystemExit as exc:
        text = buffer.getvalue()
        if not exc.code:
            print(text, end="")
            raise
        lines = [ln.strip(" \t│╭╮╰╯─+|-") for ln in text.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith(("Argument helptext", "For full helptext"))]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "invalid arguments")
        raise UserError(f"{detail}; see `threedistill run --help`") from None
