"""The optimisation loop (DESIGN.md section 2): render, guide, step, log, checkpoint, export."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from pathlib import Path
from typing import Any, Optional

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..core.atomic import atomic_write_text
from .checkpoint import load_checkpoint, save_checkpoint
from ..config import ComponentNames
from ..core.errors import UserError
from ..scene.views import make_sampler
from ..eval.chamfer import chamfer_to_toyworld
from ..eval.mesh_fidelity import obj_psnr
from ..eval.metrics import evaluate_toyworld, evaluate_toyworld_clips
from ..export.extract import extract_mesh, field_of
from ..export.images import save_image_grid, write_video
from ..export.mesh import MESH_FORMATS, SurfaceColour, write_mesh_files
from ..export.sequence import frame_field, view_grid_frames, write_sequence
from ..export.splat_ply import write_splat_ply
from ..export.turntable import render_turntable
from ..guidance.registry import GUIDANCES
from ..priors.registry import PRIORS
from ..priors.prompts import PromptEmbedder
from ..render.background import Background
from ..core.schedule import evaluate_schedule
from ..representations.particles import Particles
from ..core.motion import IMAGE_PRIOR_OF, amplify_motion, clips_of
from ..representations.convert import representation_from_previous
from ..representations.deformation import Deformed
from ..representations.registry import REPRESENTATIONS
from .plan import Stage, load_run_plan, plan_to_yaml, single_stage

CHECKPOINT_VERSION = 1


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; an explicit cuda without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


class Trainer:
    """Owns one stage of a run: its components, its folder and its loop.

    A staged run (threedistill/stages.py) has one Trainer per stage, made in turn by
    `next_stage()`; each starts from the previous stage's representation.
    """

    def __init__(
        self,
        names: ComponentNames,
        cfg: Any,
        run_dir: Path,
        console: Optional[Console] = None,
        plan: Optional[list[Stage]] = None,
        stage_index: int = 0,
        previous: Optional["Trainer"] = None,
    ) -> None:
        self.names, self.cfg, self.run_dir = names, cfg, Path(run_dir)
        self.plan = plan or single_stage(names, cfg)
        self.stage_index = stage_index
        same_run = previous is not None and previous.run_dir == self.run_dir
        self.stage_history: list[dict[str, Any]] = list(previous.stage_history) if same_run else []
        self.console = console or Console(stderr=True)
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed + stage_index)
        self.generator = torch.Generator().manual_seed(cfg.seed + stage_index)
        self.sampler = make_sampler(cfg.sampler, self.device)
        guidance = GUIDANCES[names.guidance]
        self.prior: Any = None
        self.prompts: Optional[PromptEmbedder] = None
        if previous is not None and previous.names.prior == names.prior and previous.cfg.prior == cfg.prior:
            self.prior = previous.prior  # the same frozen model: no second load
        elif getattr(guidance.build, "needs_prior", True) or names.prior == "toyworld":  # toyworld also scores the result
            self.prior = PRIORS[names.prior].build(cfg.prior, cfg.sampler, self.device)
        if self.prior is not None:
            self.prompts = PromptEmbedder(self.prior, cfg.prompt, cfg.negative_prompt, config=cfg.prompts)
        if getattr(guidance.build, "needs_source", False):
            raise UserError(f"--guidance {names.guidance} edits existing content; use `threedistill edit-image IMAGE --source TEXT --target TEXT`")
        self.num_particles = int(getattr(cfg.guidance, "particles", 1))
        if self.num_particles < 1:
            raise UserError(f"--guidance.particles must be at least 1, got {self.num_particles}")
        if self.num_particles > 1 and len(self.plan) > 1:
            raise UserError("--guidance.particles needs a single-stage run; drop the config's stages or the particles")
        rep = REPRESENTATIONS[names.representation]
        if previous is not None:
            members = [representation_from_previous(previous, names.representation, cfg.representation, self.generator, cfg.render.backend)]
        else:
            members = [rep.build(cfg.representation, self.generator, backend=cfg.render.backend) for _ in range(self.num_particles)]
        if cfg.dynamic:  # 4D: the static asset plus a motion field, zero unless a 4D stage continues
            members = [Deformed(m, cfg.deformation, self.generator) for m in members]
            if previous is not None and isinstance(previous.representation, Deformed):
                members[0].field.load_state_dict(previous.representation.field.state_dict())
        self.frames = self._clip_frames()
        self.representation = (members[0] if len(members) == 1 else Particles(members)).to(self.device)
        for member in [*members, *(m.static() for m in members if isinstance(m, Deformed))]:
            if hasattr(member, "total_steps"):  # regulariser schedules given as fractions of the stage
                member.total_steps = cfg.steps
        self.guidance = guidance.build(cfg.guidance, self.prior, cfg.steps, self.generator)
        self.image_objective = self._image_objective() if cfg.dynamic else None
        self.background = torch.tensor(cfg.render.background, dtype=torch.float32, device=self.device)
        self.backdrop = Background(cfg.render.background_mode, self.background, cfg.render.background_lr, self.generator).to(self.device)
        self.optimizer = self._make_optimizer()
        prepare = getattr(self.guidance, "prepare", None)
        if prepare is not None:  # scene objectives: read the scene, cache the source renders
            prepare(self)
        self.step = 0
        self.skipped_steps = 0
        self.elapsed = 0.0
        self._stop_requested = False
        self._last_render: Optional[torch.Tensor] = None  # the latest training views, for previews
        self._meshes: dict[int, Any] = {}  # particle index -> ExtractedMesh of the final asset (finish/export)
        self._fields: dict[int, Any] = {}  # particle index -> the field those meshes and their colours come from
        for sub in ("checkpoints", "previews", "export"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        self.log(
            f"{self.stage_title()}{names.guidance} x {names.representation} on {names.prior}, prompt '{cfg.prompt}', "
            f"{cfg.steps} steps, seed {cfg.seed}, device {self.device}"
        )

    def _clip_frames(self) -> int:
        """Frames per training clip (1 for static runs)."""
        prior_frames = getattr(self.prior, "frames", None)
        if not self.cfg.dynamic:
            if prior_frames is not None:
                raise UserError(f"--prior {self.names.prior} scores video clips; add --dynamic (or use an image prior)")
            return 1
        if prior_frames is None:
            raise UserError(f"--dynamic needs a video prior (toyworld-video, video-sd), not --prior {self.names.prior}")
        frames = self.cfg.motion.frames or prior_frames
        if frames != prior_frames:
            raise UserError(f"--motion.frames {frames} differs from the video prior's {prior_frames} frames; set --prior.frames instead")
        if frames < 2:
            raise UserError(f"a dynamic run needs clips of at least 2 frames, got {frames}")
        return frames

    def _image_objective(self) -> Optional[tuple[Any, PromptEmbedder]]:
        """The hybrid objective of a dynamic run: per-frame SDS from the image counterpart of its
        video prior, which takes the video prior's settings of the same names except the model
        (None when `motion.image_weight` is 0)."""
        if isinstance(self.cfg.motion.image_weight, (int, float)) and self.cfg.motion.image_weight == 0:
            return None
        name = IMAGE_PRIOR_OF.get(self.names.prior)
        if name is None:
            raise UserError(f"--motion.image-weight needs a video prior with an image counterpart ({', '.join(IMAGE_PRIOR_OF)})")
        image_config = PRIORS[name].config
        shared = {f.name: getattr(self.cfg.prior, f.name) for f in dataclasses.fields(image_config)
                  if hasattr(self.cfg.prior, f.name) and f.name not in ("model", "frames")}
        prior = PRIORS[name].build(image_config(**shared), self.cfg.sampler, self.device)
        objective = GUIDANCES["sds"].build(GUIDANCES["sds"].config(), prior, self.cfg.steps, self.generator)
        return objective, PromptEmbedder(prior, self.cfg.prompt, self.cfg.negative_prompt, config=self.cfg.prompts)

    @property
    def staged(self) -> bool:
        return len(self.plan) > 1

    @property
    def stage_label(self) -> str:
        return self.plan[self.stage_index].label

    def stage_title(self) -> str:
        """'stage 2/3 refine: ' in a staged run, '' otherwise."""
        return f"stage {self.stage_index + 1}/{len(self.plan)} {self.stage_label}: " if self.staged else ""

    def next_stage(self) -> Optional["Trainer"]:
        """The Trainer of the following stage, started from this one's result (None after the last)."""
        index = self.stage_index + 1
        if index >= len(self.plan):
            return None
        stage = self.plan[index]
        return Trainer(stage.names, stage.cfg, self.run_dir, self.console, self.plan, index, previous=self)

    def log(self, message: str) -> None:
        """Append a timestamped line to RUN_DIR/log.txt."""
        with (self.run_dir / "log.txt").open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([*self.representation.param_groups(), *self.backdrop.param_groups()], eps=1e-15)

    # ------------------------------------------------------------------ persistence
    def save_config(self) -> None:
        atomic_write_text(self.run_dir / "config.yaml", plan_to_yaml(self.plan))

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "names": tuple(self.names),
            "stage": self.stage_index,
            "stage_history": self.stage_history,
            "representation": self.representation.state_dict(),
            "background": self.backdrop.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "guidance": self.guidance.state_dict(),
            "generator": self.generator.get_state(),
            "sampler": self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else {},
            "elapsed": self.elapsed,
            "skipped_steps": self.skipped_steps,
        }

    def save_checkpoint(self, keep_step_file: bool = True) -> Path:
        """Write last.pt (and step-NNNNNN.pt) atomically."""
        state = self.checkpoint_state()
        ckpt_dir = self.run_dir / "checkpoints"
        if keep_step_file:
            prefix = f"{self.stage_label}-" if self.staged else ""
            save_checkpoint(ckpt_dir / f"{prefix}step-{self.step:06d}.pt", state)
        save_checkpoint(ckpt_dir / "last.pt", state)
        return ckpt_dir / "last.pt"

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore everything a checkpoint holds (the loop then continues bit-for-bit)."""
        if tuple(state.get("names", ())) != tuple(self.names):
            raise UserError(f"checkpoint was made by {state.get('names')} but the config says {tuple(self.names)}; resume the run folder it came from")
        self.representation.load_state_dict(state["representation"])
        if "background" in state:
            self.backdrop.load_state_dict(state["background"])
        self.representation.to(self.device)
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.guidance.load_state_dict(state["guidance"])
        self.generator.set_state(state["generator"])
        if hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state.get("sampler", {}))
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        self.skipped_steps = int(state["skipped_steps"])
        self.stage_history = list(state.get("stage_history", []))

    @classmethod
    def resume(cls, run_dir: Path, console: Optional[Console] = None, checkpoint: Optional[Path] = None) -> "Trainer":
        """Rebuild a run from its config.yaml and last.pt (or the given checkpoint)."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UserError(f"run folder not found: '{run_dir}'; pass a folder made by `threedistill run`")
        plan = load_run_plan(run_dir / "config.yaml")
        state = load_checkpoint(checkpoint or run_dir / "checkpoints" / "last.pt")
        index = int(state.get("stage", 0))
        if not 0 <= index < len(plan):
            raise UserError(f"the checkpoint is from stage {index + 1} but config.yaml has {len(plan)} stage(s); resume the run folder it came from")
        stage = plan[index]
        trainer = cls(stage.names, stage.cfg, run_dir, console, plan, index)
        trainer.load_state(state)
        trainer.log(f"resumed {trainer.stage_title()}at step {trainer.step}")
        return trainer

    # ------------------------------------------------------------------ the loop
    def train_step(self) -> dict[str, float]:
        """One optimisation step (DESIGN.md section 2). Returns scalars to log."""
        step = self.step + 1
        cams = self.sampler.sample(self.generator, batch_size=self.cfg.sampler.batch_size * self.num_particles)
        if self.cfg.dynamic:
            cams = clips_of(cams, self.frames, self.cfg.motion)
        out = self.backdrop.apply(self.representation.render(cams, self.background), cams)
        images, emb = self._guidance_inputs(out.rgb, cams)
        if getattr(self.guidance, "uses_render_output", False):  # scene objectives also fit alpha
            g = self.guidance(images, cams, emb, step, out=out)
        else:
            g = self.guidance(images, cams, emb, step)
        loss = g.loss
        if self.image_objective is not None:
            loss = loss + self._image_loss(out.rgb, cams, step, g.logs)
        regularisation = getattr(self.representation, "regularisation", None)
        if regularisation is not None:  # e.g. NeRF's orientation / sparsity / opacity terms
            loss = loss + regularisation(out, step)
        if not torch.isfinite(loss):
            self.skipped_steps += 1
            self.log(f"step {step}: non-finite loss, step skipped")
            self.optimizer.zero_grad(set_to_none=True)
            self.step = step
            return {"loss": float("nan"), "skipped": 1.0}
        loss.backward()
        self._set_learning_rates(step)
        self.optimizer.step()
        self.guidance.after_step(step)
        self.representation.after_step(step, out, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        self.step = step
        self._last_render = out.rgb.detach()
        return {"loss": float(loss.detach()), **g.logs}

    def _guidance_inputs(self, rgb: torch.Tensor, cams: Any) -> tuple[torch.Tensor, Any]:
        """The renders as the objective sees them (clips [B,F,3,H,W] for a video prior) and their embeddings."""
        if self.frames == 1:
            return rgb, (self.prompts.for_cameras(cams) if self.prompts is not None else None)
        clip = rgb.view(-1, self.frames, *rgb.shape[1:])
        amplify_motion(clip, self.cfg.motion.motion_amplification)
        assert self.prompts is not None
        return clip, self.prompts.for_cameras(cams[torch.arange(0, len(cams), self.frames)])  # one embedding per clip

    def _image_loss(self, rgb: torch.Tensor, cams: Any, step: int, logs: dict[str, float]) -> torch.Tensor:
        """Weighted per-frame SDS of the hybrid objective on the first (or every) frame of each clip."""
        assert self.image_objective is not None
        objective, prompts = self.image_objective
        weight = evaluate_schedule(self.cfg.motion.image_weight, step, self.cfg.steps)
        rows = torch.arange(0, len(cams), self.frames if self.cfg.motion.image_frames == "first" else 1, device=rgb.device)
        g = objective(rgb[rows], cams[rows], prompts.for_cameras(cams[rows]), step)
        logs["image_loss"] = float(g.loss.detach())
        return weight * g.loss

    def _set_learning_rates(self, step: int) -> None:
        """Exponential decay from each group's base rate to lr_final_factor times it."""
        factor = getattr(self.cfg.representation, "lr_final_factor", 1.0)
        if factor == 1.0:
            return
        scale = factor ** (step / max(self.cfg.steps, 1))
        for group in self.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * scale

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop_requested:  # second Ctrl-C: stop right now
            raise KeyboardInterrupt
        self._stop_requested = True

    def train(self, until: Optional[int] = None) -> bool:
        """Run steps until `until` (default: the configured total). False if interrupted."""
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        previous = signal.signal(signal.SIGINT, self._request_stop) if _main_thread() else None
        progress = progress_bar(self.console, disable=not cfg.log.progress)
        try:
            with progress, (self.run_dir / "metrics.jsonl").open("a") as metrics_log:
                task = progress.add_task(self.stage_title().rstrip(": ") or "distilling", total=cfg.steps, completed=self.step, loss=math.nan, speed=0.0)
                while self.step < until and not self._stop_requested:
                    t0 = time.perf_counter()
                    logs = self.train_step()
                    dt = time.perf_counter() - t0
                    self.elapsed += dt
                    progress.update(task, advance=1, loss=logs["loss"], speed=1.0 / max(dt, 1e-9))
                    self._periodic(logs, metrics_log)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if self._stop_requested:
            self.save_checkpoint()
            self.log(f"interrupted at step {self.step}; checkpoint saved")
            return False
        return True

    def _periodic(self, logs: dict[str, float], metrics_log: Any) -> None:
        cfg, step = self.cfg.log, self.step
        if cfg.log_every and step % cfg.log_every == 0:
            row = {"step": step, "seconds": round(self.elapsed, 3), "num_points": _num_points(self.representation), **logs}
            metrics_log.write(json.dumps(row) + "\n")
            metrics_log.flush()
        if cfg.preview_every and step % cfg.preview_every == 0 and self._last_render is not None:
            save_image_grid(self.run_dir / "previews" / f"step-{step:06d}.png", self._last_render)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < self.cfg.steps:
            self.save_checkpoint()

    # ------------------------------------------------------------------ the end
    def evaluate(self) -> Optional[dict[str, Any]]:
        """toyworld scores on held-out cameras (None for priors without ground truth).

        With several particles: each particle's scores under `particles`, their means as
        mask_iou / psnr, and `modes_reached`, the number of distinct modes they matched.
        """
        if not hasattr(self.prior, "modes"):
            return None
        members = particle_members(self.representation)
        if self.cfg.dynamic:
            return evaluate_toyworld_clips(members[0], self.prior, self.cfg.prompt, self.cfg.log.eval_views, self.frames, self.background)
        scores = [evaluate_toyworld(m, self.prior, self.cfg.prompt, self.cfg.log.eval_views, self.background) for m in members]
        if any(f in MESH_FORMATS for f in self.cfg.log.export_formats):
            for i, s in enumerate(scores):
                mesh = self.mesh_of(i)
                if mesh is not None:
                    s.update(chamfer_to_toyworld(mesh, self.prior, self.cfg.prompt))
                    if math.isfinite(mesh.level):  # marching cubes' level (an explicit mesh has none)
                        s["mesh_level"] = mesh.level
        if len(scores) == 1:
            return scores[0]
        summary = {
            "mask_iou": sum(s["mask_iou"] for s in scores) / len(scores),
            "psnr": sum(s["psnr"] for s in scores) / len(scores),
            "modes_reached": len({s["mode"] for s in scores}),
            "particles": scores,
        }
        if all("chamfer" in s for s in scores):
            summary["chamfer"] = sum(s["chamfer"] for s in scores) / len(scores)
        return summary

    def field_of_member(self, index: int) -> Any:
        """The density/albedo field meshes of particle `index` come from (cached): its own field,
        the Gaussians' opacity field, or a 4D asset's first frame. An explicit mesh has no density;
        its colour source knows each surface point's face (`SurfaceColour`)."""
        if index not in self._fields:
            member = particle_members(self.representation)[index]
            if hasattr(member, "surface_colour"):
                self._fields[index] = SurfaceColour(member.surface_colour, member.albedo)
            else:
                self._fields[index] = frame_field(member, 0.0) if isinstance(member, Deformed) else field_of(member)
        return self._fields[index]

    def mesh_of(self, index: int) -> Any:
        """The extracted mesh of particle `index` (cached; None, logged, when it has no surface)."""
        if index not in self._meshes:
            member = particle_members(self.representation)[index]
            if hasattr(member, "exported_mesh"):  # an explicit mesh exports itself
                self._meshes[index] = member.exported_mesh()
                return self._meshes[index]
            try:
                self._meshes[index] = extract_mesh(self.field_of_member(index), self.cfg.mesh)
            except UserError as exc:
                self.log(f"no mesh for particle {index}: {exc}")
                self._meshes[index] = None
        return self._meshes[index]

    def finish(self) -> dict[str, Any]:
        """Checkpoint and score the stage; after the last stage also metrics.json and the exports.

        A staged run's metrics.json has the last stage's scores at the top level and every
        stage's under `stages`."""
        self.save_checkpoint()
        summary: dict[str, Any] = {
            "prompt": self.cfg.prompt,
            "prior": self.names.prior,
            "guidance": self.names.guidance,
            "representation": self.names.representation,
            "steps": self.step,
            "skipped_steps": self.skipped_steps,
            "seconds": round(self.elapsed, 2),
        }
        scores = self.evaluate()
        if scores is not None:
            summary.update(scores)
        if self.staged:
            history = [h for h in self.stage_history if h.get("stage") != self.stage_label]
            self.stage_history = [*history, {"stage": self.stage_label, **summary}]
            summary["stages"] = self.stage_history
            summary["seconds"] = round(sum(h["seconds"] for h in self.stage_history), 2)
            self.save_checkpoint(keep_step_file=False)  # last.pt carries the stage history
        self.log(f"{self.stage_title()}finished: " + json.dumps({k: v for k, v in summary.items() if k != "stages"}))
        if self.stage_index < len(self.plan) - 1:
            return summary
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
        formats = list(self.cfg.log.export_formats)
        if not all(hasattr(_static(m), "splat_tensors") for m in particle_members(self.representation)):
            formats = [f for f in formats if f != "splat"]  # splats.ply exists only for Gaussians
        for path in self.export(formats):
            self.log(f"exported {path.name}")
        return json.loads((self.run_dir / "metrics.json").read_text())  # with obj_psnr when an OBJ was written

    def export(self, formats: list[str]) -> list[Path]:
        """Write the requested exports into RUN_DIR/export (atomically)."""
        written = export_representation(self.representation, self.run_dir / "export", [f for f in formats if f not in MESH_FORMATS],
                                        self.cfg, self.background, self.frames)
        mesh_formats = [f for f in formats if f in MESH_FORMATS]
        for i, member in enumerate(particle_members(self.representation) if mesh_formats else []):
            mesh = self.mesh_of(i)
            if mesh is not None:
                stem = "mesh" if i == 0 else f"mesh_particle{i}"
                field = self.field_of_member(i)
                albedo = field if isinstance(field, SurfaceColour) else field.albedo
                files = write_mesh_files(mesh, self.run_dir / "export", mesh_formats, albedo, self.cfg.mesh, stem)
                written += files
                obj = next((f for f in files if f.suffix == ".obj"), None)
                if obj is not None:
                    self._record_obj_psnr(obj, member, i)
        return written

    def _record_obj_psnr(self, obj: Path, member: Any, index: int) -> None:
        """Score the textured OBJ against the asset's renders; log it and add it to metrics.json."""
        score = round(obj_psnr(obj, member, self.background), 3)
        self.log(f"{obj.name}: textured OBJ renders at {score} dB PSNR against the asset's")
        metrics_path = self.run_dir / "metrics.json"
        if metrics_path.exists():
            metrics = json.loads(metrics_path.read_text())
            metrics["obj_psnr" if index == 0 else f"obj_psnr_particle{index}"] = score
            atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")


def particle_members(representation: Any) -> list[Any]:
    """The independent models of a run: the particles, or the representation itself."""
    return list(representation.members) if isinstance(representation, Particles) else [representation]


def export_representation(representation: Any, out_dir: Path, formats: list[str], cfg: Any, background: torch.Tensor,
                          clip_frames: int = 1) -> list[Path]:
    """splat -> splats.ply (particle i > 0: splats_particle{i}.ply; 4D: the first frame);
    video -> turntable.mp4 + .gif (particles side by side; 4D: animated, plus clips.mp4, four
    views over time); sequence (4D) -> splats_tNNN.ply and mesh_tNNN.glb per frame."""
    written: list[Path] = []
    members = particle_members(representation)
    dynamic = isinstance(members[0], Deformed)
    for fmt in formats:
        if fmt == "splat":
            for i, member in enumerate(members):
                if not hasattr(_static(member), "splat_tensors"):
                    raise UserError(f"--format splat needs a Gaussian run; this representation is {type(_static(member)).__name__}")
                name = "splats.ply" if i == 0 else f"splats_particle{i}.ply"
                tensors = member.splat_tensors_at(0.0) if dynamic else member.splat_tensors()
                written.append(write_splat_ply(out_dir / name, **tensors))
        elif fmt == "video":
            cycles = 2 if dynamic else 0
            frames = torch.cat([render_turntable(m, cfg.log.turntable_frames, cfg.log.turntable_resolution, background,
                                                 animation_cycles=cycles) for m in members], dim=-1)
            written.append(write_video(out_dir / "turntable.mp4", frames, fps=24))
            written.append(write_video(out_dir / "turntable.gif", frames, fps=24))
            if dynamic:
                grid = view_grid_frames(members[0], 4, max(clip_frames, 2) * 3, cfg.log.turntable_resolution, background)
                written.append(write_video(out_dir / "clips.mp4", grid, fps=12))
        elif fmt == "sequence":
            if not dynamic:
                raise UserError("--format sequence needs a dynamic (4D) run; use glb/ply/splat for a static one")
            written += write_sequence(members[0], out_dir, max(clip_frames, 2), cfg.mesh)
        else:
            raise UserError(f"unknown export format '{fmt}'; valid formats: splat, video, sequence, {', '.join(MESH_FORMATS)}")
    return written


def _static(member: Any) -> Any:
    """A 4D asset's undeformed representation (the member itself when static)."""
    return member.static() if isinstance(member, Deformed) else member


def _num_points(representation: Any) -> int:
    return int(getattr(representation, "num_points", 0))


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def progress_bar(console: Console, disable: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TextColumn("{task.fields[speed]:.1f} it/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )
