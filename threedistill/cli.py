"""Command line: run, resume, export, view, edit, edit-image, animate, batch, toyworld list / scene.

Each command parses its flags and hands them to the Python API (api.py) or the engine
(engine/run.py, engine/load.py), which validates the whole run plan before any work. Exit codes
(docs/reliability.md):

- 0: done;
- 2: bad input, one line on stderr, no traceback, nothing made (core/errors.py `UserError`);
- 3: a fault stopped the work (out of memory, a full disk, a diverged run), one line naming the
  cause and how to continue; checkpoints and earlier files are kept (`RunStopped`);
- 128 + signal (130 for SIGINT / Ctrl-C and the viewer's Stop, 143 for SIGTERM): interrupted; a
  run saved the checkpoint of its last finished step and `threedistill resume RUN_DIR` continues
  it (core/interrupts.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from rich.console import Console

from .core.errors import DiskFull, RunStopped, UserError, printable, shown
from .core.interrupts import exit_code_of, raising_on_signals, signal_name

if TYPE_CHECKING:
    from .api import Run, Viewer

EXIT_USER_ERROR = 2
EXIT_RUN_STOPPED = 3


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {self.prog}: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def _console() -> Console:
    return Console(stderr=True, soft_wrap=True)  # no wrapping: paths and commands stay on one line


def _finished(result: "Run") -> int:
    """Exit code of a trained run; the run folder goes to stdout when it finished."""
    if result.interrupted:
        return 128 + (result.stop_signal or int(signal.SIGINT))
    print(result.run_dir)
    return 0


def viewer_flags(argv: list[str]) -> tuple["Viewer", list[str]]:
    """Split the session's viewer flags (--viewer, --viewer.host/port/update-every/mesh-resolution/budget) off a
    command's flags; any --viewer.* flag turns the viewer on."""
    from .viewer.options import ViewerOptions

    defaults = ViewerOptions()
    p = OneLineParser(prog="threedistill run", add_help=False, allow_abbrev=False)
    p.add_argument("--viewer", action="store_true")
    p.add_argument("--viewer.host", dest="host", default=None)
    p.add_argument("--viewer.port", dest="port", type=int, default=None)
    p.add_argument("--viewer.update-every", dest="update_every", type=int, default=None)
    p.add_argument("--viewer.mesh-resolution", dest="mesh_resolution", type=int, default=None)
    p.add_argument("--viewer.budget", dest="budget", type=float, default=None)
    args, rest = p.parse_known_args(argv)
    given = {k: v for k, v in vars(args).items() if k != "viewer" and v is not None}
    if not (args.viewer or given):
        return False, rest
    options = ViewerOptions(**{**vars(defaults), **given})
    options.check()
    return options, rest


VIEWER_HELP = ("--viewer serves a live web viewer of the run (pip extra [viewer]); --viewer.host (default 127.0.0.1), "
               "--viewer.port (8080), --viewer.update-every (10 steps), --viewer.mesh-resolution (48), --viewer.budget (0.03: the "
               "largest share of the loop's time the viewer's updates may take).")


def cmd_run(argv: list[str]) -> int:
    from .api import run_plan
    from .engine.plan import parse_run_plan

    if "-h" in argv or "--help" in argv:
        print(VIEWER_HELP)
    viewer, rest = viewer_flags(argv)
    return _finished(run_plan(parse_run_plan(rest), viewer=viewer, console=_console()))


def cmd_resume(argv: list[str]) -> int:
    from .api import resume

    p = OneLineParser(prog="threedistill resume", description="Continue a run from its last checkpoint. " + VIEWER_HELP)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--checkpoint", type=Path, default=None, help="a step-NNNNNN.pt to resume from instead of last.pt")
    viewer, rest = viewer_flags(argv)
    args = p.parse_args(rest)
    return _finished(resume(args.run_dir, args.checkpoint, viewer=viewer, console=_console()))


def cmd_export(argv: list[str]) -> int:
    """Export a run's asset from its checkpoint alone: no prior and no objective is built."""
    from .api import load
    from .export.asset import EXPORT_FORMATS

    p = OneLineParser(prog="threedistill export", description="Export a run's asset into RUN_DIR/export.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--format", dest="formats", nargs="+", action="extend", choices=list(EXPORT_FORMATS),
                   help="one or more formats (--format glb obj; repeating the flag adds more); default: all the asset supports")
    p.add_argument("--mesh-resolution", type=int, default=None, help="marching-cubes grid points per axis (default: the run's mesh.resolution, 128)")
    p.add_argument("--decimate-faces", type=int, default=None, help="decimate meshes to about N faces (0: keep all)")
    p.add_argument("--texture-size", type=int, default=None, help="side of the OBJ texture in pixels")
    p.add_argument("--level", type=float, default=None, help="surface density level (default: calibrated on the renders)")
    args = p.parse_args(argv)
    formats = list(dict.fromkeys(args.formats)) if args.formats else None
    try:
        for path in load(args.run_dir).export(formats, mesh_resolution=args.mesh_resolution, decimate_faces=args.decimate_faces,
                                              texture_size=args.texture_size, level=args.level):
            print(path)
    except DiskFull as exc:
        raise RunStopped(f"{exc}, then run `threedistill export {args.run_dir}` again") from None
    return 0


def cmd_view(argv: list[str]) -> int:
    """Serve a run folder, a splats.ply or a mesh file in the web viewer until Ctrl-C."""
    from .viewer.options import ViewerOptions
    from .viewer.static import serve_path

    p = OneLineParser(prog="threedistill view", description="Show a run's asset (or a splats.ply / mesh file) in the "
                      "browser: Gaussians as splats, NeRF and mesh runs as their mesh, particles side by side, 4D with a "
                      "time slider, the training cameras as frustums. Needs the [viewer] extra. Ctrl-C stops it.")
    p.add_argument("path", type=Path, help="a run folder, a 3DGS .ply or a mesh (.glb/.gltf/.obj/.ply/.stl)")
    p.add_argument("--port", type=int, default=ViewerOptions.port)
    p.add_argument("--host", default=ViewerOptions.host, help="address to bind (default loopback; others are warned about)")
    args = p.parse_args(argv)
    serve_path(args.path, ViewerOptions(host=args.host, port=args.port), _console())
    return 0


def cmd_edit_image(argv: list[str]) -> int:
    """DDS-edit one image; prior, guidance, seed, device and steps flags as in `run`."""
    import json
    import time

    import torch

    from .config import parse_run_args
    from .core.atomic import atomic_write_text
    from .engine.build import resolve_device
    from .engine.priors import PriorPool
    from .engine.progress import progress_bar
    from .engine.ranges import check_ranges
    from .engine.run_dir import new_run_dir
    from .eval.metrics import psnr_to
    from .export.images import image_grid, read_image, save_image
    from .guidance.dds import DDSGuidance
    from .guidance.image_edit import edit_image, prompt_embeddings
    from .priors.base import PRIORS

    p = OneLineParser(
        prog="threedistill edit-image",
        description="Edit an image toward a target prompt with DDS. Other flags (--prior NAME, --prior.*, "
        "--guidance.*, --steps (default 200), --seed, --device) are those of `threedistill run`.",
    )
    p.add_argument("image", type=Path)
    p.add_argument("--source", required=True, help="text describing the image as it is")
    p.add_argument("--target", required=True, help="text describing the wanted result")
    p.add_argument("--out", default="outputs/edits", help="folder under which a new edit folder is made")
    p.add_argument("--lr", type=float, default=0.05, help="SGD step on the edited latent/pixels")
    p.add_argument("--truth", type=Path, default=None,
                   help="the image the edit should reach (e.g. the target object's ground-truth render): edit.json "
                   "then reports the PSNR of the source and of the edited image against it")
    args, rest = p.parse_known_args(argv)
    rest = _with_default_steps(rest, 200)
    names, cfg = parse_run_args(["--guidance", "dds", *rest], prog="threedistill edit-image")
    image = read_image(args.image)
    truth = read_image(args.truth) if args.truth is not None else None
    device = resolve_device(cfg.device)
    check_ranges(cfg)
    cfg.guidance.check()
    cfg.prior.check()  # the model is on disk: one line before anything loads
    for text in (args.source, args.target):
        PRIORS[names.prior].check_prompt(cfg.prior, text)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    prior = PriorPool(device).get(names.prior, cfg.prior, cfg.sampler)
    assert isinstance(cfg.guidance, DDSGuidance.Config)
    guidance = DDSGuidance(cfg.guidance, prior, cfg.steps, generator)
    emb_src = prompt_embeddings(prior, args.source, cfg.negative_prompt)
    emb_tgt = prompt_embeddings(prior, args.target, cfg.negative_prompt)
    console = _console()
    out_dir = new_run_dir(args.out, args.target, "dds", "image")
    start = time.perf_counter()
    with progress_bar(console, disable=False) as progress:
        task = progress.add_task("editing", total=cfg.steps, loss=float("nan"), speed=0.0)
        result = edit_image(prior, guidance, image, emb_src, emb_tgt, cfg.steps, args.lr,
                            on_step=lambda step, g: progress.update(task, advance=1, loss=g))
    seconds = time.perf_counter() - start
    save_image(out_dir / "source.png", image)
    edited = save_image(out_dir / "edited.png", result.full[0])  # the input's size (guidance/image_edit.py)
    save_image(out_dir / "comparison.png", image_grid(torch.stack([image, result.full[0]]), nrow=2))
    summary = {"image": str(args.image), "source": args.source, "target": args.target, "prior": names.prior,
               "steps": cfg.steps, "lr": args.lr, "seed": cfg.seed, "seconds": round(seconds, 2)}
    if truth is not None:
        summary.update(truth=str(args.truth), **{f"{key}_psnr": round(psnr_to(truth, result_image), 3)
                                                 for key, result_image in (("source", image[None]), ("edited", result.full))})
    atomic_write_text(out_dir / "edit.json", json.dumps(summary, indent=2) + "\n")
    console.print(f"[green]done[/] in {seconds:.1f} s; edited image: {shown(edited)}")
    print(out_dir)
    return 0


def cmd_edit(argv: list[str]) -> int:
    """Edit a scene (posed images or a threedistill run) toward a target prompt."""
    from .api import run_plan
    from .core.cameras import scene_cameras
    from .engine.load import load_run
    from .engine.plan import parse_run_plan
    from .engine.run import remove_run_folder
    from .engine.run_dir import new_run_dir
    from .engine.validate import validate_plan
    from .export.scene import write_rendered_scene
    from .scene.loading import is_run_folder

    p = OneLineParser(
        prog="threedistill edit",
        description="Edit a captured scene toward a target prompt: reconstruct it from its posed images, then edit "
        "with DDS (or Instruct-NeRF2NeRF, or DDS in the prior's latent space: latent-dds). A threedistill run folder is edited directly. Other flags are those of "
        "`threedistill run` (--prior NAME, --prior.*, --guidance.*, --representation.*, --sampler.*, --seed, --device); "
        "--steps is the edit stage's length (default 400). " + VIEWER_HELP,
    )
    p.add_argument("--scene", required=True, type=Path, help="a nerfstudio/Blender folder (transforms.json) or a run folder")
    p.add_argument("--source", default="", help="text describing the scene as it is (dds)")
    p.add_argument("--target", required=True, help="text describing the wanted result")
    p.add_argument("--instruction", default="", help="in2n: the InstructPix2Pix instruction (default: --target)")
    p.add_argument("--method", choices=["dds", "in2n", "latent-dds"], default="dds",
                   help="latent-dds: ED-NeRF, a NeRF of the prior's latent image edited by DDS without the VAE, then an RGB NeRF "
                   "distilled from its decoded renders")
    p.add_argument("--representation", choices=["nerf", "gaussians"], default="nerf")
    p.add_argument("--out", default="outputs/edits", help="folder under which a new run folder is made")
    p.add_argument("--reconstruct-steps", type=int, default=500, help="steps fitting the posed images (skipped for run folders, "
                   "except with latent-dds, which fits a latent field to the run's renders)")
    p.add_argument("--distill-steps", type=int, default=200, help="latent-dds: steps fitting the RGB field to the decoded latent renders")
    viewer, argv = viewer_flags(argv)
    args, rest = p.parse_known_args(argv)
    latent = args.method == "latent-dds"
    if args.method in ("dds", "latent-dds") and not args.source.strip():
        raise UserError(f"--method {args.method} needs --source TEXT describing the scene as it is")
    for flag, value in (("--reconstruct-steps", args.reconstruct_steps), ("--distill-steps", args.distill_steps)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if not args.scene.exists():
        raise UserError(f"scene not found: '{args.scene}'; pass a folder with transforms.json or a threedistill run folder")
    console = _console()
    rest = _with_default_steps(rest, 400)
    guidance = {"dds": "scene-dds", "in2n": "in2n", "latent-dds": "latent-dds"}[args.method]
    source_run = load_run(args.scene) if is_run_folder(args.scene) else None
    representation = source_run.names.representation if source_run is not None else args.representation
    if latent:
        if args.representation != "nerf":
            raise UserError("--method latent-dds edits a latent NeRF; drop --representation gaussians")
        representation = "nerf"  # a run folder's renders are the scene; its asset is not continued

    def plan_for(scene: Path) -> Any:
        flags = ["--guidance", guidance, "--representation", representation, "--prompt", args.target, "--out", args.out,
                 "--sampler.scene", str(scene), *rest]
        if args.method in ("dds", "latent-dds"):
            flags += ["--guidance.source-prompt", args.source]
        elif args.instruction:
            flags += ["--guidance.instruction", args.instruction]
        if latent:
            return parse_run_plan(flags, "threedistill edit", stages=latent_edit_stages(flags, args.reconstruct_steps, args.distill_steps))
        edit = {"name": "edit", "share": 1.0}  # --steps, whole
        stages = [edit] if source_run is not None else [
            {"name": "reconstruct", "steps": args.reconstruct_steps, "guidance": {"name": "photometric"}}, edit]
        return parse_run_plan(flags, "threedistill edit", stages=stages)

    if source_run is None:
        return _finished(run_plan(plan_for(args.scene), viewer=viewer, console=console))
    start = None if latent else source_run.as_previous()
    validate_plan(plan_for(args.scene / "source_scene"), None if start is None else start.name, scenes=False)  # everything but the scene it renders next
    run_dir = new_run_dir(args.out, args.target, args.method, representation)
    try:
        console.print(f"rendering {shown(args.scene)} as the source scene")
        scene = write_rendered_scene(run_dir / "source_scene", lambda c: source_run.representation.render(c, source_run.background),
                                     scene_cameras(48, 256))
        plan = plan_for(scene)
    except BaseException:
        remove_run_folder(run_dir)
        raise
    return _finished(run_plan(plan, viewer=viewer, console=console, start=start, run_dir=run_dir,
                              discard=lambda: remove_run_folder(run_dir)))


def latent_edit_stages(flags: list[str], reconstruct_steps: int, distill_steps: int) -> list[dict[str, Any]]:
    """latent-dds's stages (scene/latent.py): a latent field of the prior's channels fitted to the encoded images, its
    DDS edit (--steps), an RGB field distilled from its decoded renders. The prior must have a latent image."""
    from .engine.plan import parse_run_plan
    from .priors.base import PRIORS

    stage = parse_run_plan(flags, "threedistill edit")[0]  # the prior the flags name, before anything is loaded
    prior = stage.names.prior
    channels = PRIORS[prior].latent_channels(stage.cfg.prior)
    if channels is None:
        raise UserError(f"--method latent-dds edits in the prior's latent image, which --prior {prior} does not have; "
                        "use --prior toyworld-sd, sd or toyworld (pixel space: its 'latent' is the image)")
    field = {"latent_channels": channels}
    return [{"name": "reconstruct", "steps": reconstruct_steps, "guidance": {"name": "latent-fit"}, "representation": field},
            {"name": "edit", "share": 1.0, "representation": field},
            {"name": "distill", "steps": distill_steps, "guidance": {"name": "latent-distill"}}]


def _with_default_steps(rest: list[str], steps: int) -> list[str]:
    """The run flags with `--steps` set to this command's default unless given."""
    if "--steps" in rest or any(a.startswith("--steps=") for a in rest):
        return rest
    return ["--steps", str(steps), *rest]


def cmd_animate(argv: list[str]) -> int:
    """Animate a finished static run: its asset becomes the first frame of a dynamic run."""
    from .api import run_plan
    from .engine.load import load_run
    from .engine.plan import parse_run_plan

    p = OneLineParser(
        prog="threedistill animate",
        description="Animate a static run: a deformation field over its asset is distilled from a video prior. Other flags "
        "are those of `threedistill run` (--prior NAME (default: the run's, as video), --prior.*, --guidance.*, "
        "--deformation.*, --motion.*, --steps, --seed, --device). " + VIEWER_HELP,
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--prompt", required=True, help="the motion to create, e.g. 'a bouncing ball'")
    p.add_argument("--out", default="outputs", help="folder under which the new run folder is made")
    viewer, argv = viewer_flags(argv)
    args, rest = p.parse_known_args(argv)
    console = _console()
    source = load_run(args.run_dir)
    if source.cfg.dynamic:
        raise UserError(f"'{args.run_dir}' is already a dynamic run; continue it with `threedistill resume`")
    flags = ["--prior", source.names.prior, "--guidance", source.names.guidance, "--representation", source.names.representation,
             "--dynamic", "--prompt", args.prompt, "--out", args.out, "--seed", str(source.cfg.seed), *rest]
    plan = parse_run_plan(flags, "threedistill animate")
    plan[0].cfg.representation = source.cfg.representation  # the asset's own settings (it keeps its shape)
    return _finished(run_plan(plan, viewer=viewer, console=console, start=source.as_previous(), note=f"animating {args.run_dir}"))


def cmd_batch(argv: list[str]) -> int:
    """Many runs on Ray: a prompts file or YAML sweep, seeds, run flags for all (threedistill/batching)."""
    from .batching.cluster import BatchOptions
    from .batching.submit import batch
    from .batching.tune import METRICS, TuneOptions

    p = OneLineParser(
        prog="threedistill batch", allow_abbrev=False,
        description="Run a prompts file (one prompt a line, '#' comments) or a YAML sweep (prompts x seeds x grid / "
        "override sets) on Ray, one task per run in a stable folder OUT/<prompt>/seed-<n>[-<overrides>]: a resubmitted "
        "batch skips finished runs and resumes the others from their last checkpoint. Other flags are `threedistill run` "
        "flags for every run (--prior, --config, --guidance.* ...). Writes OUT/batch.csv, batch.json, report.md and "
        "contact_sheet.png as runs finish. Needs the [ray] extra.")
    p.add_argument("spec", type=Path, help="a prompts file or a .yaml sweep")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of every prompt (default 0, or the sweep's)")
    p.add_argument("--out", type=Path, default=Path("outputs/batch"), help="the batch folder (a path every node sees)")
    p.add_argument("--gpus-per-run", type=float, default=None, help="GPUs per run (default 1 when the cluster has GPUs, else 0)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs per run, also its torch threads (default 1)")
    p.add_argument("--ray-address", default=None, help="join a running cluster: auto or HOST:PORT (default: start a local Ray)")
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a run whose worker died or was preempted (each resumes)")
    p.add_argument("--no-dashboard", dest="dashboard", action="store_false", help="no dashboard for the local Ray")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress display")
    p.add_argument("--tune", action="store_true", help="run the batch as a Ray Tune sweep and report the best run")
    p.add_argument("--tune.metric", dest="metric", choices=list(METRICS), default="mask_iou", help="what the sweep compares")
    p.add_argument("--tune.report-every", dest="report_every", type=int, default=0,
                   help="steps between reports to Tune (default: log.checkpoint-every)")
    p.add_argument("--tune.grace-steps", dest="grace_steps", type=int, default=0,
                   help="steps before early stopping (ASHA) may stop a run (default 0: no early stopping)")
    p.add_argument("--tune.reduction-factor", dest="reduction_factor", type=int, default=2, help="ASHA's reduction factor")
    args, rest = p.parse_known_args(argv)
    tune_flags = [a for a in argv if a.startswith("--tune.")]
    if tune_flags and not args.tune:
        raise UserError(f"{tune_flags[0].split('=')[0]} needs --tune")
    options = BatchOptions(args.gpus_per_run, args.cpus_per_run, args.ray_address, args.ray_cpus, args.max_retries,
                           args.dashboard, args.progress)
    tune = TuneOptions(args.metric, args.report_every, args.grace_steps, args.reduction_factor) if args.tune else None
    result = batch(args.spec, seeds=args.seeds, out=args.out, flags=rest, options=options, tune=tune, console=_console())
    from .batching.report import best_row

    failed = result.failed
    done = len(result.rows) - len(failed)
    _console().print(f"{done} of {len(result.rows)} runs done; report: {shown(args.out / 'report.md')}")
    best = best_row(result.rows)
    if best is not None:
        _console().print(f"best by {args.metric}: {best['run']} (overrides {best['overrides']}), {args.metric} {best[args.metric]:.4f}")
    print(args.out)
    if failed:
        raise RunStopped(f"{len(failed)} of {len(result.rows)} runs failed (see {args.out / 'report.md'}); run the same command "
                         "again to resume them")
    return 0


def cmd_toyworld(argv: list[str]) -> int:
    p = OneLineParser(prog="threedistill toyworld", description="The built-in ground-truth prior.")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="list the catalogue prompts")
    scene = sub.add_parser("scene", help="write an object's ground-truth renders as a nerfstudio scene")
    scene.add_argument("prompt")
    scene.add_argument("out_dir", type=Path)
    scene.add_argument("--views", type=int, default=48)
    scene.add_argument("--resolution", type=int, default=256)
    scene.add_argument("--mesh", default=None, help="a user mesh to render instead of a catalogue object")
    render = sub.add_parser("render", help="write one ground-truth view as an RGBA PNG (an image-to-3D input)")
    render.add_argument("prompt")
    render.add_argument("out", type=Path, help="the .png to write")
    render.add_argument("--elevation", type=float, default=0.0)
    render.add_argument("--azimuth", type=float, default=0.0, help="0: the object's front")
    render.add_argument("--distance", type=float, default=2.8)
    render.add_argument("--fov", type=float, default=40.0, help="vertical field of view in degrees")
    render.add_argument("--resolution", type=int, default=256)
    render.add_argument("--mesh", default=None, help="a user mesh to render instead of a catalogue object")
    mesh = sub.add_parser("mesh", help="write an object's mesh with its face colours (.ply, .obj or .glb): a fixed mesh for --material pbr")
    mesh.add_argument("prompt")
    mesh.add_argument("out", type=Path, help="the .ply, .obj or .glb to write")
    mesh.add_argument("--geometry-only", action="store_true", help="leave the colours out (a material then starts from none)")
    args = p.parse_args(argv)
    if args.action == "list":
        from .priors.toyworld.catalogue import describe_catalogue

        for prompt, description in describe_catalogue():
            print(f"{prompt:<24} {description}")
        return 0
    if args.action == "render":
        return _write_toyworld_view(args)
    if args.action == "mesh":
        return _write_toyworld_mesh(args)
    return _write_toyworld_scene(args)


def _write_toyworld_mesh(args: argparse.Namespace) -> int:
    """The catalogue object's triangles and face colours as a mesh file (glb: y up, as glTF requires)."""
    import trimesh

    from .core.atomic import atomic_write_bytes
    from .export.mesh import to_y_up
    from .priors.toyworld.catalogue import resolve_prompt

    suffix = args.out.suffix.lower()
    if suffix not in (".ply", ".obj", ".glb"):
        raise UserError(f"cannot write '{args.out.name}'; name a .ply, .obj or .glb file")
    toy = resolve_prompt(args.prompt)[0]
    vertices = to_y_up(toy.vertices) if suffix == ".glb" else toy.vertices
    colours = None if args.geometry_only else (toy.face_colors * 255 + 0.5).astype("uint8")
    data = trimesh.Trimesh(vertices, toy.faces, face_colors=colours, process=False).export(file_type=suffix[1:])
    atomic_write_bytes(args.out, data if isinstance(data, bytes) else str(data).encode())
    print(args.out)
    return 0


def _write_toyworld_view(args: argparse.Namespace) -> int:
    """One ground-truth render (RGBA: alpha is the object's mask) from the given camera."""
    import torch

    from .core.cameras import orbit_cameras
    from .core.mesh_file import load_mesh_file
    from .export.images import save_rgba
    from .priors.toyworld.catalogue import resolve_prompt
    from .render.mesh_torch import render_mesh

    if not 8 <= args.resolution <= 4096 or not 0.5 <= args.distance <= 100 or not 1 <= args.fov <= 170:
        raise UserError("--resolution must be in [8, 4096], --distance in [0.5, 100] and --fov in [1, 170]")
    mesh = load_mesh_file(args.mesh, name=args.prompt) if args.mesh else resolve_prompt(args.prompt)[0]
    one = torch.ones(1)
    cams = orbit_cameras(one * args.elevation, one * args.azimuth, one * args.distance, one * args.fov, args.resolution, args.resolution)
    v, f, c = mesh.to_torch("cpu")
    with torch.no_grad():
        out = render_mesh(v, f, c, cams)
    rgb = (out.rgb[0] - (1.0 - out.alpha[0])) / out.alpha[0].clamp_min(1e-6)  # un-composite from white
    print(save_rgba(args.out, (rgb * (out.alpha[0] > 0)).clamp(0, 1), out.alpha[0]))
    return 0


def _write_toyworld_scene(args: argparse.Namespace) -> int:
    from .core.cameras import scene_cameras
    from .export.scene import write_rendered_scene
    from .render.mesh_torch import render_mesh
    from .priors.toyworld.catalogue import resolve_prompt
    from .core.mesh_file import load_mesh_file

    if args.views < 1 or args.resolution < 8:
        raise UserError("--views must be >= 1 and --resolution >= 8")
    mesh = load_mesh_file(args.mesh, name=args.prompt) if args.mesh else resolve_prompt(args.prompt)[0]
    cams = scene_cameras(args.views, args.resolution)
    v, f, c = mesh.to_torch("cpu")
    path = write_rendered_scene(args.out_dir, lambda views: render_mesh(v, f, c, views), cams)
    print(path)
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "run": (cmd_run, "optimise a 3D asset for a prompt"),
    "resume": (cmd_resume, "continue a run from its last checkpoint"),
    "export": (cmd_export, "export a run's splats, meshes, videos or 4D sequences"),
    "view": (cmd_view, "show a run, a splats.ply or a mesh in the web viewer"),
    "edit-image": (cmd_edit_image, "edit an image toward a target prompt with DDS"),
    "animate": (cmd_animate, "animate a static run with a video prior (4D)"),
    "edit": (cmd_edit, "edit a captured scene or a run toward a target prompt (dds, in2n, latent-dds)"),
    "batch": (cmd_batch, "many runs (prompts x seeds x settings) on Ray; sweeps with Ray Tune"),
    "toyworld": (cmd_toyworld, "the built-in ground-truth prior: list, scene, render, mesh"),
}


def usage() -> str:
    lines = ["usage: threedistill COMMAND [ARGS]  (threedistill --version)", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`threedistill COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the `threedistill` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else EXIT_USER_ERROR
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"threedistill {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        with raising_on_signals():
            return COMMANDS[command][0](rest)
    except UserError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunStopped as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_RUN_STOPPED
    except KeyboardInterrupt as exc:
        print(f"interrupted ({signal_name(exit_code_of(exc) - 128)})", file=sys.stderr)
        return exit_code_of(exc)
    except Exception as exc:
        if not _out_of_memory(exc):
            raise
        print(f"error: out of memory ({' '.join(str(exc).split())[:120]}); use smaller settings (--sampler.batch-size, "
              "--sampler.width/--sampler.height, --prior.attention-slicing, --mesh-resolution) or a device with more memory",
              file=sys.stderr)
        return EXIT_RUN_STOPPED


def _out_of_memory(exc: BaseException) -> bool:
    """The allocator's error (only once torch is imported: the commands import it)."""
    if "torch" not in sys.modules:
        return False
    from .engine.faults import is_out_of_memory

    return is_out_of_memory(exc)


if __name__ == "__main__":
    sys.exit(main())
