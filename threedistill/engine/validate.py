"""The run plan, checked in full before any work: one UserError naming the problem and the fix.

For every stage: every number is in its range (engine/ranges.py); the names resolve; the objective's needs (core/objective.py's `Needs`) are
met by the stage (a prior, a variational model, a scene, clips); static and dynamic stages have
an image or a video prior; every model file the stage will load is located offline (its
config's `check`, priors/diffusers/loading.py), every input file (scene, meshes) is readable
and every prompt is one its prior can read; each stage can start from the one before.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..config import RunConfig
from ..core.errors import UserError
from ..core.objective import OBJECTIVES
from ..core.schedule import validate_schedule
from ..export.asset import EXPORT_FORMATS
from ..priors.base import PRIORS
from ..priors.diffusers.stable_diffusion import StableDiffusionConfig
from ..priors.toyworld.prior import ToyworldConfig
from ..reference.view import read_reference
from ..representations.base import REPRESENTATIONS
from ..representations.convert import transition_error
from ..representations.deformation import DEFORMABLE
from ..representations.mesh import MeshConfig
from ..representations.nerf import NeRFConfig
from ..scene.views import scene_for
from .build import resolve_device
from .plan import Stage
from .ranges import check_ranges
from .priors import image_prior_of, stage_needs_prior, uses_image_objective


def validate_plan(plan: list[Stage], start_from: Optional[str] = None, first: int = 0, scenes: bool = True) -> None:
    """Check the stages from `first` on (see the module docstring); `start_from` names the
    representation the first of them starts from (another run's asset), if any. `scenes=False`
    leaves out reading the scenes (one that is still to be written)."""
    previous: Optional[Stage] = plan[first - 1] if first > 0 else None
    for stage in plan[first:]:
        try:
            _check_stage(stage, len(plan), scenes)
            if OBJECTIVES[stage.names.guidance].needs.after_latent and (
                    previous is None or not OBJECTIVES[previous.names.guidance].needs.latent):
                raise UserError(f"--guidance {stage.names.guidance} distils a latent field: it follows a latent stage "
                                "(threedistill edit --method latent-dds makes the stages)")
            if previous is not None or (start_from is not None and stage is plan[first]):
                _check_transition(previous, start_from if previous is None else previous.names.representation, stage)
        except UserError as exc:
            raise UserError(f"stage '{stage.label}': {exc}" if len(plan) > 1 else str(exc)) from None
        previous = stage


def _check_stage(stage: Stage, stages: int, scenes: bool) -> None:
    cfg, names = stage.cfg, stage.names
    objective, prior = OBJECTIVES[names.guidance], PRIORS[names.prior]
    REPRESENTATIONS[names.representation]
    check_ranges(cfg)
    needs = objective.needs
    resolve_device(cfg.device)
    if needs.source_image:
        raise UserError(f"--guidance {names.guidance} edits existing content; use `threedistill edit-image IMAGE --source TEXT --target TEXT`")
    if needs.scene:
        if not cfg.sampler.scene:
            raise UserError(f"--guidance {names.guidance} fits posed images; pass --sampler.scene SCENE_DIR (or use `threedistill edit`)")
        if scenes:
            scene_for(cfg.sampler)  # every image and mask readable, the poses well-formed
    cfg.guidance.check()
    if cfg.prompts.perp_neg and not needs.perp_neg:
        raise UserError(f"--prompts.perp-neg needs an objective whose guidance is CFG-shaped (sds, vsd, esd, ism, tsm, csm, bsd, "
                        f"dsd), not --guidance {names.guidance}; drop --prompts.perp-neg")
    particles = cfg.guidance.particle_count()
    if particles > 1 and stages > 1:
        raise UserError("--guidance.particles needs a single-stage run; drop the config's stages or the particles")
    if particles > 1 and cfg.dynamic:
        raise UserError("--guidance.particles needs a static run (4D runs train one asset); drop --dynamic or the particles")
    if cfg.dynamic:
        _check_dynamic(cfg)
    elif prior.is_video and not needs.samples_clips:  # explicit 4D's static stage fits the first frames of its clips
        raise UserError(f"--prior {names.prior} scores video clips; add --dynamic (or use an image prior)")
    group = cfg.prior.view_group()
    if group > 1:
        if cfg.sampler.batch_size % group:
            raise UserError(f"--prior {names.prior} scores groups of {group} views; make --sampler.batch-size a multiple of {group}")
        if cfg.sampler.scene:
            raise UserError(f"--prior {names.prior} scores groups of {group} orbit views; it cannot score a scene's views")
    if needs.samples_clips and not prior.samples_clips:
        raise UserError(f"--guidance {names.guidance} samples clips from a video prior, which --prior {names.prior} cannot do; "
                        "add --dynamic (toyworld -> toyworld-video, sd -> video-sd) or use toyworld-video / video-sd")
    if needs.variational_model and not prior.provides_variational_model:
        raise UserError(f"--guidance {names.guidance} needs a variational model, which --prior {names.prior} does not provide; "
                        "use an objective such as sds, or --prior toyworld / sd")
    image_named = _check_image(cfg, names.prior, needs.prior)
    if stage_needs_prior(cfg):
        cfg.prior.check()
        for text in ((() if image_named else (cfg.prompt,)) + tuple(cfg.guidance.texts())):
            prior.check_prompt(cfg.prior, text)
    cfg.representation.check()
    _check_latent(cfg, needs.latent, scenes)
    _check_material(cfg, names.guidance, needs.pbr_material)
    unknown = [f for f in cfg.log.export_formats if f not in EXPORT_FORMATS]
    if unknown:
        raise UserError(f"unknown export format '{unknown[0]}' in --log.export-formats; valid formats: {', '.join(EXPORT_FORMATS)}")


def _check_latent(cfg: RunConfig, latent: bool, scenes: bool) -> None:
    """A latent field (a NeRF with latent_channels) only in stages whose objective trains one, with the prior's
    channels, on a square scene (both sides of the prior's x0 image are one size)."""
    names, rep = cfg.component_names(), cfg.representation
    channels = rep.latent_channels if isinstance(rep, NeRFConfig) else 0
    if not latent:
        if channels:
            raise UserError(f"--representation.latent-channels {channels} makes a latent field, which only latent editing trains "
                            "(threedistill edit --method latent-dds); drop it")
        return
    wanted = PRIORS[names.prior].latent_channels(cfg.prior)
    if wanted is None:
        raise UserError(f"--guidance {names.guidance} edits in the prior's latent image, which --prior {names.prior} does not have; "
                        "use --prior toyworld-sd, sd or toyworld")
    if not isinstance(rep, NeRFConfig) or channels != wanted:
        raise UserError(f"--guidance {names.guidance} trains a latent field: --representation nerf with "
                        f"--representation.latent-channels {wanted} (--prior {names.prior}'s)")
    if scenes and cfg.sampler.scene:
        height, width = scene_for(cfg.sampler).images.shape[-2:]
        if height != width:
            raise UserError(f"--guidance {names.guidance} renders square latent images; the scene's views are {width}x{height} "
                            "(crop them square)")


def _check_material(cfg: RunConfig, guidance: str, needs_pbr: bool) -> None:
    """PBR materials (DreamMat) live on an explicit mesh (static: 4D never wraps a mesh); toyworld's PBR references
    and the ControlNet's light condition need its lights."""
    pbr = isinstance(cfg.representation, MeshConfig) and cfg.representation.material == "pbr"
    if needs_pbr and not pbr:
        raise UserError(f"--guidance {guidance} distils a PBR material for a given mesh; add --representation mesh --material pbr "
                        "--representation.path MESH_FILE")
    if isinstance(cfg.prior, StableDiffusionConfig) and cfg.prior.controlnet and "light" in cfg.prior.controlnet_condition and not pbr:
        raise UserError("--prior.controlnet-condition light reads the light renders of a PBR mesh; add --representation mesh --material pbr, "
                        "or drop `light`")
    if isinstance(cfg.prior, ToyworldConfig) and cfg.prior.material == "pbr" and not pbr:
        raise UserError("--prior.material pbr scores each view under the light it was rendered with, which only a PBR mesh reports; "
                        "add --representation mesh --material pbr, or drop --prior.material")


def _check_image(cfg: RunConfig, prior_name: str, reads_prior: bool) -> bool:
    """An image-to-3D stage has a readable RGBA image and a prior that can guide the unseen views; returns
    whether the prior names the object from the image (then the prompt is not its to read)."""
    prior = PRIORS[prior_name]
    if not cfg.image:
        if prior.needs_image and reads_prior:
            raise UserError(f"--prior {prior_name} is conditioned on an image; pass --image PATH (an RGBA PNG of the object)")
        return False
    read_reference(cfg.image)
    if cfg.dynamic or cfg.guidance.particle_count() > 1 or cfg.sampler.scene:
        raise UserError("--image makes one static asset from orbit views; drop --dynamic, --guidance.particles and --sampler.scene")
    text = cfg.reference.text_prior_config()
    if text is not None:
        text[1].check()
        if cfg.prompt.strip():
            PRIORS[text[0]].check_prompt(text[1], cfg.prompt)
        elif not prior.has_ground_truth:  # toyworld priors name the object they identify in the image
            raise UserError(f"--reference.text-prior {text[0]} distils the prompt; pass --prompt TEXT describing the image")
    if prior.reads_image or not reads_prior:
        return True
    if not cfg.prompt.strip():
        raise UserError(f"--prior {prior_name} guides the unseen views by text; pass --prompt TEXT describing the image, "
                        "or use an image-conditioned prior (--prior zero123, or toyworld / toyworld-sd)")
    return False


def _check_dynamic(cfg: RunConfig) -> None:
    names = cfg.component_names()
    if not PRIORS[names.prior].is_video:
        raise UserError(f"--dynamic needs a video prior (toyworld-video, video-sd), not --prior {names.prior}")
    if not OBJECTIVES[names.guidance].needs.clips:
        raise UserError(f"--guidance {names.guidance} fits images, not clips; drop --dynamic or use a distillation objective (sds, vsd, ...)")
    if not issubclass(REPRESENTATIONS[names.representation], DEFORMABLE):
        raise UserError(f"a 4D deformation wraps gaussians or nerf, not {names.representation}; use --representation gaussians or nerf")
    prior_frames = cfg.prior.clip_frames()
    frames = cfg.motion.frames or prior_frames
    if frames != prior_frames:
        raise UserError(f"--motion.frames {frames} differs from the video prior's {prior_frames} frames; set --prior.frames instead")
    if frames is None or frames < 2:
        raise UserError(f"a dynamic run needs clips of at least 2 frames, got {frames}")
    cfg.deformation.check()
    try:
        validate_schedule("motion.image_weight", cfg.motion.image_weight)
    except (ValueError, TypeError) as exc:
        raise UserError(f"--motion.image-weight: {exc}") from None
    for what, overrides in (("--motion.image-weight", {} if uses_image_objective(cfg) else None),
                            (f"--guidance {names.guidance}", cfg.guidance.image_prior_settings())):
        if overrides is None:
            continue
        counterpart = image_prior_of(cfg, overrides)
        if counterpart is None:
            raise UserError(f"{what} needs a video prior with an image counterpart (toyworld-video, video-sd)")
        name, config = counterpart
        config.check()
        PRIORS[name].check_prompt(config, cfg.prompt)


def _check_transition(previous: Optional[Stage], before: Optional[str], stage: Stage) -> None:
    """The stage can start from the previous result (and, for a representation that keeps its
    tensors' shapes, with the same shape settings)."""
    after = stage.names.representation
    if before is None:
        return
    problem = transition_error(before, after)
    if problem is not None:
        raise UserError(problem)
    cls = REPRESENTATIONS[after]
    if previous is None or before != after or not cls.fixed_state_shapes or previous.cfg.representation == stage.cfg.representation:
        return
    kept = cls.continued_state(previous.cfg.representation, stage.cfg.representation)
    shapes = [{k: tuple(v.shape) for k, v in cls.build(s.cfg.representation, torch.Generator(), "torch").state_dict().items()
               if kept is None or k.split(".")[0] in kept} for s in (previous, stage)]
    if shapes[0] != shapes[1]:
        changed = sorted(k for k in shapes[0].keys() | shapes[1].keys() if shapes[0].get(k) != shapes[1].get(k))[:3]
        raise UserError(f"this stage changes the {after}'s shape settings ({', '.join(changed)}), so it cannot continue from the "
                        "previous result; keep them equal")
