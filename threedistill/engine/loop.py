"""One stage's optimisation loop (docs/architecture.md, "One step"): render, score, step, log,
checkpoint; at the end, score and (after the last stage) export.

A `StageTrainer` is built by `Run` (engine/run.py) from a validated plan and the run's shared
`RunContext` (engine/context.py); it never probes a
component: what each provides is declared by its contract (core/objective.py,
representations/base.py, priors/base.py).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.interrupts import StopRequests
from ..core.motion import amplify_motion, clips_of
from ..core.objective import OBJECTIVES, StageContext
from ..core.schedule import evaluate_schedule
from ..core.types import RenderOutput, TextEmbeddings
from ..eval.mesh_fidelity import obj_psnr
from ..eval.scoring import GroundTruth, score_asset
from ..export.asset import AssetExports, ExportSettings
from ..export.images import save_image_grid
from ..export.mesh import MESH_FORMATS
from ..priors.base import PRIORS, Prior
from ..priors.prompts import PromptEmbedder
from ..reference.view import ReferenceView
from ..render.background import Background
from ..representations.base import active_loss_weights, weighted_losses
from ..representations.convert import PreviousAsset
from ..scene.views import SizedViews
from .build import (
    build_image_objective,
    build_objective,
    build_prompts,
    build_representation,
    build_text_objective,
    clip_frames,
    load_image_prior,
    load_stage_scene,
    make_sampler,
    resolve_device,
)
from .checkpoint import save_checkpoint
from .plan import Stage
from .context import RunContext
from .faults import StepGuard, is_out_of_memory, state_before_step, stop_diverged, stop_out_of_memory
from .priors import image_weight, stage_needs_prior
from .progress import progress_bar
from .run_dir import RunFolder

class StageTrainer:
    """Owns one stage of a run: its components and its loop (see the module docstring)."""

    def __init__(self, run: RunContext, index: int, previous: Optional[PreviousAsset] = None) -> None:
        self.context = run
        self.index = index
        self.stage: Stage = run.plan[index]
        cfg = self.cfg = self.stage.cfg
        self.names = self.stage.names
        self.run_dir = run.run_dir
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed + index)
        self.generator = torch.Generator().manual_seed(cfg.seed + index)
        self.scene = load_stage_scene(cfg)
        self.sampler = make_sampler(cfg, self.scene, self.device)
        objective_cls = OBJECTIVES[self.names.guidance]
        self.prior: Optional[Prior] = run.priors.get(self.names.prior, cfg.prior, cfg.sampler) if stage_needs_prior(cfg) else None
        self.reference = ReferenceView(cfg.image, cfg.reference, cfg.sampler.width, cfg.sampler.height, self.device) if cfg.image else None
        self.prompt = cfg.prompt
        """The stage's prompt: the run's, or the text an image-conditioned prior names the reference image by."""
        if self.reference is not None and self.prior is not None and PRIORS[self.names.prior].reads_image:
            self.prompt = self.prior.condition_on_image(self.reference.image)
        self.prompts: Optional[PromptEmbedder] = None
        if objective_cls.needs.prior:
            assert self.prior is not None
            self.prompts = build_prompts(cfg, self.prior, self.prompt)
        self.num_particles = cfg.guidance.particle_count()
        self.frames = clip_frames(cfg)
        self.representation = build_representation(cfg, self.generator, previous).to(self.device)
        self.latent = objective_cls.needs.latent
        """The stage trains a latent field: its views render at the prior's x0 size, previews are decoded, no scores."""
        if self.latent:
            self.sampler = SizedViews(self.sampler, self._require_prior().latent_space().size)
        self.previous = previous
        self.objective = build_objective(cfg, self.prior if objective_cls.needs.prior else None, self.generator)
        self.image_objective = build_image_objective(cfg, run.priors, self.generator)
        self.text_objective = build_text_objective(cfg, run.priors, self.generator, cfg.prompt.strip() or self.prompt)
        self.background = torch.tensor(cfg.render.background, dtype=torch.float32, device=self.device)
        self.backdrop = Background(cfg.render.background_mode, self.background, cfg.render.background_lr, self.generator).to(self.device)
        self.optimizer = self._make_optimizer()
        self.objective.prepare(self._context())
        self.step = 0
        self.skipped_steps = 0
        self.elapsed = 0.0
        self.stops = StopRequests()
        self.guard = StepGuard(cfg.log.max_nonfinite_steps)
        self.consistent = True
        """False while a step is half done (its state must not be checkpointed)."""
        self.last_render: Optional[Tensor] = None
        """The latest step's training views [B,3,H,W] (previews, the live viewer)."""
        self.last_cameras: Optional[Cameras] = None
        self.last_preview: Optional[Callable[[], Tensor]] = None
        """The objective's x0 prediction of the latest step as images, where it has one (ObjectiveOutput.preview)."""
        self.exports = AssetExports(self.representation, self.run_dir / "export", self.export_settings(), self.background, self.log)
        for sub in ("checkpoints", "previews", "export"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        shown = f"image '{cfg.image}' (prompt '{self.prompt}')" if cfg.image else f"prompt '{cfg.prompt}'"
        self.log(f"{self.stage_title()}{self.names.guidance} x {self.names.representation} on {self.names.prior}, {shown}, "
                 f"{cfg.steps} steps, seed {cfg.seed}, device {self.device}")

    def _context(self) -> StageContext:
        """What the objective may read before the first step."""
        return StageContext(
            prompt=self.prompt, negative_prompt=self.cfg.negative_prompt, device=self.device, scene=self.scene,
            render=lambda cams: self.representation.render(cams, self.background),
            embed=lambda text: build_prompts(self.cfg, self._require_prior(), text),
            previous=None if self.previous is None else self._render_previous,
            views=self.cfg.guidance.training_views(self.cfg.sampler), run_dir=self.run_dir, log=self.log,
            image_prior=(lambda: load_image_prior(self.cfg, self.context.priors))
            if self.cfg.guidance.image_prior_settings() is not None else None,
        )

    def _render_previous(self, cams: Cameras) -> RenderOutput:
        assert self.previous is not None
        return self.previous.representation.render(cams, self.background)

    def _require_prior(self) -> Prior:
        if self.prior is None:
            raise RuntimeError(f"stage {self.stage.label} has no prior")
        return self.prior

    def export_settings(self) -> ExportSettings:
        log = self.cfg.log
        return ExportSettings(self.cfg.mesh, log.turntable_frames, log.turntable_resolution, self.frames)

    # ------------------------------------------------------------------ naming and logging
    @property
    def staged(self) -> bool:
        return len(self.context.plan) > 1

    def stage_title(self) -> str:
        """'stage 2/3 refine: ' in a staged run, '' otherwise."""
        return f"stage {self.index + 1}/{len(self.context.plan)} {self.stage.label}: " if self.staged else ""

    def log(self, message: str) -> None:
        """Append a timestamped line to RUN_DIR/log.txt."""
        self.context.folder.log(message)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([*self.representation.param_groups(), *self.backdrop.param_groups()], eps=1e-15)

    # ------------------------------------------------------------------ persistence
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything the loop needs to continue bit for bit: tensors, numbers, strings, containers."""
        return {
            "step": self.step,
            "names": list(self.names),
            "stage": self.index,
            "stage_history": self.context.stage_history,
            "representation": self.representation.state_dict(),
            "background": self.backdrop.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "guidance": self.objective.state_dict(),
            "generator": self.generator.get_state(),
            "sampler": self.sampler.state_dict(),
            "elapsed": self.elapsed,
            "skipped_steps": self.skipped_steps,
        }

    def save_checkpoint(self, keep_step_file: bool = True) -> Path:
        """Write last.pt (and step-NNNNNN.pt) atomically."""
        return self.write_checkpoint(self.checkpoint_state(), keep_step_file)

    def write_checkpoint(self, state: dict[str, Any], keep_step_file: bool = True) -> Path:
        """Write `state` as last.pt (and step-NNNNNN.pt of its step) atomically."""
        ckpt_dir = self.run_dir / "checkpoints"
        if keep_step_file:
            prefix = f"{self.stage.label}-" if self.staged else ""
            save_checkpoint(ckpt_dir / f"{prefix}step-{int(state['step']):06d}.pt", state)
        save_checkpoint(ckpt_dir / "last.pt", state)
        return ckpt_dir / "last.pt"

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore everything a checkpoint holds (the loop then continues bit for bit)."""
        self.representation.load_state_dict(state["representation"])
        if "background" in state:
            self.backdrop.load_state_dict(state["background"])
        self.representation.to(self.device)
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.objective.load_state_dict(state["guidance"])
        self.generator.set_state(state["generator"])
        self.sampler.load_state_dict(state.get("sampler", {}))
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        self.skipped_steps = int(state["skipped_steps"])
        self.context.stage_history = list(state.get("stage_history", []))
        self.exports = AssetExports(self.representation, self.run_dir / "export", self.export_settings(), self.background, self.log)

    # ------------------------------------------------------------------ the loop
    def train_step(self) -> dict[str, float]:
        """One optimisation step. Returns scalars to log."""
        cfg, step = self.cfg, self.step + 1
        cams = self.sampler.sample(self.generator, batch_size=cfg.sampler.batch_size * self.num_particles)
        if cfg.dynamic:
            cams = clips_of(cams, self.frames, cfg.motion)
        weights = active_loss_weights(self.representation, step, cfg.steps)
        self.representation.before_step(step, frozenset(weights))
        out = self.backdrop.composite(self.representation.render(cams, self.background), cams)
        if self.prior is not None:
            self.prior.observe_render(out, cams)
        images, emb = self._objective_inputs(out.rgb, cams)
        g = self.objective(images, cams, emb, step, out)
        loss, logs = g.loss, dict(g.logs)
        if self.image_objective is not None:
            loss = loss + self._image_loss(out, cams, step, logs)
        if self.text_objective is not None:
            text = self.text_objective.objective(out.rgb, cams, self.text_objective.prompts.for_cameras(cams), step, out)
            loss = loss + evaluate_schedule(cfg.reference.text_weight, step, cfg.steps) * text.loss
            logs["text_loss"] = float(text.loss.detach())
        if self.reference is not None:
            reference_loss, reference_logs = self.reference.loss(lambda c: self.representation.render(c, self.background), step, cfg.steps)
            loss, logs = loss + reference_loss, {**logs, **reference_logs}
        terms, term_logs = weighted_losses(self.representation, out, weights)
        loss, logs = loss + terms, {**logs, **term_logs}
        if not torch.isfinite(loss):
            return self._skip(step, "loss")
        if not loss.requires_grad:  # nothing rendered depends on a parameter (e.g. every Gaussian culled)
            return self._skip(step, "loss without gradient")
        loss.backward()
        if not self._gradients_finite():
            return self._skip(step, "gradient")
        self._set_learning_rates(step)
        self.guard.updated = True  # from here on the step cannot be rolled back
        self.optimizer.step()
        self.objective.after_step(step)
        self.representation.after_step(step, out, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        self.step = step
        self.last_render, self.last_cameras, self.last_preview = out.rgb.detach(), cams, g.preview
        return {"loss": float(loss.detach()), **logs}

    def rendered_images(self) -> Tensor:
        """The latest step's training views as RGB images [B,3,H,W] on the CPU (a latent stage's decoded by the prior)."""
        assert self.last_render is not None
        render = self._require_prior().decode(self.last_render) if self.latent else self.last_render[:, :3]
        return render.float().cpu()

    def preview_grid(self) -> tuple[Tensor, Optional[int]]:
        """The latest training views, and with `log.x0_previews` the objective's x0 estimates of them in a second
        row ([2B,3,H,W], B per row); the grid's images and images per row (None: near-square)."""
        render = self.rendered_images()
        if not self.cfg.log.x0_previews or self.last_preview is None:
            return render, None
        x0 = self.last_preview().float().cpu()
        if x0.shape[-2:] != render.shape[-2:]:
            x0 = torch.nn.functional.interpolate(x0, size=render.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        return torch.cat([render, x0[: len(render)]]), len(render)

    def _skip(self, step: int, what: str) -> dict[str, float]:
        """A step whose loss or gradient is not finite changes no parameter; it is counted."""
        self.skipped_steps += 1
        self.log(f"step {step}: non-finite {what}, step skipped")
        self.optimizer.zero_grad(set_to_none=True)
        self.step = step
        return {"loss": float("nan"), "skipped": 1.0}

    def _gradients_finite(self) -> bool:
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    def _objective_inputs(self, rgb: Tensor, cams: Cameras) -> tuple[Tensor, Optional[TextEmbeddings]]:
        """The renders as the objective sees them (clips [B,F,3,H,W] for a video prior) and their embeddings."""
        if self.frames == 1:
            return rgb, (self.prompts.for_cameras(cams) if self.prompts is not None else None)
        clip = rgb.view(-1, self.frames, *rgb.shape[1:])
        amplify_motion(clip, self.cfg.motion.motion_amplification)
        first_frames = cams[torch.arange(0, len(cams), self.frames)]
        return clip, (self.prompts.for_cameras(first_frames) if self.prompts is not None else None)  # one embedding per clip

    def _image_loss(self, out: RenderOutput, cams: Cameras, step: int, logs: dict[str, float]) -> Tensor:
        """Weighted per-frame SDS of the hybrid objective on the first (or every) frame of each clip."""
        assert self.image_objective is not None
        image = self.image_objective
        rows = torch.arange(0, len(cams), self.frames if self.cfg.motion.image_frames == "first" else 1, device=out.rgb.device)
        frames = RenderOutput(out.rgb[rows], out.alpha[rows], out.depth[rows])
        g = image.objective(frames.rgb, cams[rows], image.prompts.for_cameras(cams[rows]), step, frames)
        logs["image_loss"] = float(g.loss.detach())
        return image_weight(self.cfg, step) * g.loss

    def _set_learning_rates(self, step: int) -> None:
        """Exponential decay from each group's base rate to lr_final_factor times it."""
        factor = self.cfg.representation.lr_final_factor
        if factor == 1.0:
            return
        scale = factor ** (step / max(self.cfg.steps, 1))
        for group in self.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * scale

    def request_stop(self) -> None:
        """End the stage after the current step with a checkpoint, as Ctrl-C does (callbacks use it)."""
        self.stops.ask()

    @property
    def stop_requested(self) -> bool:
        return self.stops.requested

    def train(self, until: Optional[int] = None) -> bool:
        """Run steps until `until` (default: the configured total). False if a stop signal came
        (core/interrupts.py): the current step finishes and is checkpointed. Out of memory and a
        run that diverged stop with a checkpoint and a RunStopped (engine/faults.py)."""
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        progress = progress_bar(self.context.console, disable=not cfg.log.progress)
        callbacks = self.context.callbacks
        for callback in callbacks:
            callback.on_stage_start(self)
        with self.stops.deferred(), progress:
            task = progress.add_task(self.stage_title().rstrip(": ") or "distilling", total=cfg.steps, completed=self.step,
                                     loss=math.nan, speed=0.0)
            while self.step < until and not self.stops.requested:
                t0 = time.perf_counter()
                logs = self._guarded_step()
                dt = time.perf_counter() - t0
                self.elapsed += dt
                progress.update(task, advance=1, loss=logs["loss"], speed=1.0 / max(dt, 1e-9))
                self._periodic(logs)
                for callback in callbacks:
                    callback.on_step(self, logs)
        if self.stops.requested:
            self.save_checkpoint()
            self.log(f"interrupted ({self.stops.reason}) at step {self.step}; checkpoint saved")
            return False
        return True

    def _guarded_step(self) -> dict[str, float]:
        """`train_step` with the faults of engine/faults.py handled."""
        self.guard.begin(self.generator, self.sampler.state_dict())
        self.consistent = False
        try:
            logs = self.train_step()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            stop_out_of_memory(self, exc)
        self.consistent = True
        if not logs.get("skipped"):
            self.guard.finite()
        elif self.guard.nonfinite(self.step, lambda: state_before_step(self)):
            stop_diverged(self)
        return logs

    def _periodic(self, logs: dict[str, float]) -> None:
        cfg, step = self.cfg.log, self.step
        if cfg.log_every and step % cfg.log_every == 0:
            row = {"step": step, "seconds": round(self.elapsed, 3), "num_points": self.representation.num_points, **logs}
            self.context.folder.append_metrics(row)
        if cfg.preview_every and step % cfg.preview_every == 0 and self.last_render is not None:
            images, nrow = self.preview_grid()
            save_image_grid(self.run_dir / "previews" / f"step-{step:06d}.png", images, nrow=nrow)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < self.cfg.steps:
            self.save_checkpoint()

    # ------------------------------------------------------------------ the end
    def ground_truth(self) -> Optional[GroundTruth]:
        """The stage's prior when it knows its data exactly (toyworld), else None."""
        prior = PRIORS[self.names.prior]
        if not prior.has_ground_truth or self.prior is None or (prior.is_video and not self.cfg.dynamic):
            return None  # (a static stage on a video prior, explicit 4D's warm-up: its ground truth moves)
        truth: GroundTruth = self.prior  # type: ignore[assignment]  # toyworld priors implement GroundTruth
        return truth

    def evaluate(self) -> Optional[dict[str, Any]]:
        """Scores on held-out cameras against ground truth (None for priors without it)."""
        truth = self.ground_truth()
        if truth is None or self.latent:
            return None
        meshes = any(f in MESH_FORMATS for f in self.cfg.log.export_formats)
        return score_asset(self.representation, truth, self.prompt, self.cfg.log.eval_views, self.background, self.frames,
                           self.exports.mesh if meshes else None)

    def finish(self) -> dict[str, Any]:
        """Checkpoint and score the stage; after the last stage also metrics.json and the exports.

        A staged run's metrics.json has the last stage's scores at the top level and every
        stage's under `stages`."""
        self.save_checkpoint()
        summary: dict[str, Any] = {
            "prompt": self.prompt,
            "prior": self.names.prior,
            "guidance": self.names.guidance,
            "representation": self.names.representation,
            **({"image": self.cfg.image} if self.cfg.image else {}),
            "steps": self.step,
            "skipped_steps": self.skipped_steps,
            "seconds": round(self.elapsed, 2),
        }
        scores = self.evaluate()
        if scores is not None:
            summary.update(scores)
        if self.staged:
            history = [h for h in self.context.stage_history if h.get("stage") != self.stage.label]
            self.context.stage_history = [*history, {"stage": self.stage.label, **summary}]
            summary["stages"] = self.context.stage_history
            summary["seconds"] = round(sum(h["seconds"] for h in self.context.stage_history), 2)
            self.save_checkpoint(keep_step_file=False)  # last.pt carries the stage history
        self.log(f"{self.stage_title()}finished: " + json.dumps({k: v for k, v in summary.items() if k != "stages"}))
        for callback in self.context.callbacks:
            callback.on_stage_end(self, summary)
        if self.index < len(self.context.plan) - 1:
            return summary
        self.context.folder.write_metrics(summary)
        exported = export_asset(self.exports, self.exports.supported(self.cfg.log.export_formats), self.context.folder, self.background)
        for path in exported:
            self.log(f"exported {path.name}")
        metrics = self.context.folder.read_metrics()  # with obj_psnr when an OBJ was written
        for callback in self.context.callbacks:
            callback.on_run_end(self.run_dir, metrics, exported)
        return metrics

    def previous_asset(self) -> PreviousAsset:
        """This stage's result, for the next stage to start from."""
        return PreviousAsset(self.representation, self.names.representation, lambda: self.exports.mesh(0))


def export_asset(exports: AssetExports, formats: list[str], folder: RunFolder, background: Tensor) -> list[Path]:
    """Write `formats`; every textured OBJ is scored against the asset's renders into metrics.json."""
    done = exports.export(formats)
    for index, obj in done.objs:
        score = round(obj_psnr(obj, exports.members[index], background), 3)
        folder.log(f"{obj.name}: textured OBJ renders at {score} dB PSNR against the asset's")
        folder.update_metrics({"obj_psnr" if index == 0 else f"obj_psnr_particle{index}": score})
    return done.files
