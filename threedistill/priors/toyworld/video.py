"""toyworld-video: a video diffusion prior whose data distribution is known exactly.

The data are clips of animated catalogue objects (toyworld_animated.py). A reference clip is
one camera drawn from the training camera distribution (the run's OrbitSampler, as for the
image prior) rendered at the F frame times f / (F - 1), f = 0..F-1, with the reference
renderer; the whole clip is one vector. The denoiser is the image prior's exact posterior mean
(toyworld.py) over those clip vectors, with the camera kernel on the clip's camera direction:

    w = softmax((-|x_t - a_t x_i|^2 / (2 s_t^2) + kappa * cos(angle(c, c_i))) / T)

where c is the first frame's camera of each clip (one camera per clip is what the references
have). `temperature` and `data_noise` act as in the image prior.

Clip convention (every video prior): `encode(clips [B,F,3,H,W] in [0,1]) -> x0 [B,F,3,R,R]`
in [-1,1]; `predict_eps(x_t [B,F,...], t [B], emb [B], cameras)` where `cameras` holds B*F
cameras, view-major (clip b's frames are rows b*F .. b*F+F-1), each with its `time`.
Embeddings are reference-set ids as in the image prior: id 0 is the union of the animated
prompts, view phrases share their object's references. References are cached on disk under
`<cache>/toyworld-video`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ...core.cameras import Cameras, OrbitSamplerConfig, split_view_phrase
from ...core.tensor_cache import TensorCache
from ...core.errors import UserError
from ...core.motion import frame_times
from ...render.mesh_torch import render_mesh
from ...core.types import RenderOutput, TextEmbeddings
from ..base import PRIORS, PriorConfig, VariationalConfig
from .prior import (UNCOND_ID, ReferenceSet, ToyworldConfig, ToyworldPrior, check_posterior_settings, reference_shape_problem,
                    split_evenly)
from .animated import AnimatedToy, animated_mesh, animated_prompts, resolve_animated
from .catalogue import ToyMesh
from .variational import ToyworldVariationalModel

VIDEO_REFERENCE_FORMAT_VERSION = 2


@dataclass
class ToyworldVideoConfig(PriorConfig):
    """The built-in ground-truth video prior (clips of animated catalogue objects)."""

    resolution: int = 32
    """Pixel resolution of every frame of the references; renders are resized to it."""
    frames: int = 8
    """Clip length F (frame f is at time f / (F - 1))."""
    num_references: int = 600
    """Reference clips per prompt (split over the modes of a multi-modal prompt)."""
    uncond_references_per_object: int = 100
    """Reference clips per animated object in the unconditional (union) set."""
    kappa: float = 200.0
    """Strength of the camera kernel (0: the prior does not know the view)."""
    temperature: Optional[float] = None
    """Softmax temperature of the posterior (see the image prior); None: 1 or the objective's preference."""
    data_noise: Optional[float] = None
    """sigma_d of the blurred empirical distribution (see the image prior); None: 0 or the objective's preference."""
    reference_seed: int = 0
    """Seed of the reference cameras (independent of the run seed)."""
    cache_dir: Optional[str] = None
    """Reference cache folder (default: $THREEDISTILL_CACHE or ~/.cache/threedistill)."""

    def clip_frames(self) -> Optional[int]:
        return self.frames

    def check(self) -> None:
        check_posterior_settings(self.temperature, self.data_noise)


@PRIORS.register("toyworld-video")
class ToyworldVideoPrior(ToyworldPrior):
    """Exact empirical-posterior denoiser over rendered reference clips (see module docstring)."""

    Config = ToyworldVideoConfig  # type: ignore[assignment]
    config: ToyworldVideoConfig  # type: ignore[assignment]  # it has every field the image prior reads
    is_video = True

    def __init__(self, config: ToyworldVideoConfig, sampler_config: OrbitSamplerConfig, device: torch.device | str = "cpu") -> None:
        names = {f.name for f in fields(ToyworldConfig)}
        super().__init__(ToyworldConfig(**{k: v for k, v in asdict(config).items() if k in names}), sampler_config, device)
        if config.frames < 1:
            raise UserError(f"--prior.frames must be >= 1, got {config.frames}")
        self.config = config
        self.frames = config.frames
        self.cache_dir = self.cache_dir.parent / "toyworld-video"
        self._meshes: dict[int, list[AnimatedToy]] = {}  # type: ignore[assignment]

    @classmethod
    def check_prompt(cls, config: PriorConfig, prompt: str) -> None:
        """A prompt names an animated catalogue object."""
        resolve_animated(split_view_phrase(prompt)[0])

    # ------------------------------------------------------------------ prompts
    def modes(self, prompt: str) -> list[AnimatedToy]:  # type: ignore[override]
        """The animated object(s) a prompt names, view phrase ignored: one per mode."""
        return resolve_animated(split_view_phrase(prompt)[0])

    @staticmethod
    def ground_truth_at(prompt: str, time: float) -> ToyMesh:
        """The ground-truth mesh of a (single-mode) animated prompt at time in [0, 1]."""
        return animated_mesh(prompt, time)

    # ------------------------------------------------------------------ encoding
    def encode(self, images: Tensor) -> Tensor:
        """Clips [B,F,3,H,W] in [0,1] -> x0 [B,F,3,R,R] in [-1,1] (differentiable)."""
        B, Fr = images.shape[:2]
        return super().encode(images.flatten(0, 1)).unflatten(0, (B, Fr))

    def decode(self, x0: Tensor) -> Tensor:
        """x0 [B,F,3,R,R] in [-1,1] -> clips in [0,1]."""
        return super().decode(x0)

    # ------------------------------------------------------------------ references
    def render_ground_truth(self, mesh: Union[str, AnimatedToy, ToyMesh], cams: Cameras) -> RenderOutput:  # type: ignore[override]
        """Render a prompt or animated object with each camera at its own `time` (a static ToyMesh
        ignores time). A prompt must have one mode; pass `modes(prompt)[i]` otherwise."""
        if isinstance(mesh, ToyMesh):
            return super().render_ground_truth(mesh, cams)
        if isinstance(mesh, str):
            modes = self.modes(mesh)
            if len(modes) > 1:
                raise UserError(f"animated prompt '{mesh}' has {len(modes)} modes; render modes(prompt)[i] instead")
            mesh = modes[0]
        if cams.time is None:
            raise ValueError("render_ground_truth of an animated object needs cameras with `time` set")
        return self._render_at_times(mesh, cams.to(self.device), cams.time.tolist())

    def _render_at_times(self, toy: AnimatedToy, cams: Cameras, times: Sequence[float]) -> RenderOutput:
        """One render per camera, camera i showing `toy` at times[i] (one render call per distinct time)."""
        rgb: list[Optional[Tensor]] = [None] * len(cams)
        alpha: list[Optional[Tensor]] = [None] * len(cams)
        depth: list[Optional[Tensor]] = [None] * len(cams)
        for time in sorted(set(times)):
            rows = [i for i, s in enumerate(times) if s == time]
            v, f, c = toy.at(time).to_torch(self.device)
            with torch.no_grad():
                out = render_mesh(v, f, c, cams[torch.tensor(rows)])
            for j, i in enumerate(rows):
                rgb[i], alpha[i], depth[i] = out.rgb[j], out.alpha[j], out.depth[j]
        return RenderOutput(torch.stack(rgb), torch.stack(alpha), torch.stack(depth))  # type: ignore[arg-type]

    def _clip_cache_key(self, toys: list[AnimatedToy], counts: list[int], seed: int) -> str:
        h = hashlib.sha1()
        h.update(f"v{VIDEO_REFERENCE_FORMAT_VERSION}|{self.resolution}|{self.frames}|{counts}|{seed}|{asdict(self.sampler_config)}".encode())
        for toy in toys:
            for time in frame_times(self.frames).tolist():
                m = toy.at(time)
                for arr in (m.vertices, m.faces, m.face_colors):
                    h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:20]

    def render_reference_clips(self, toys: list[AnimatedToy], counts: list[int], seed: int) -> tuple[Tensor, Tensor]:
        """Clips [N,F,3,R,R] in [0,1] and camera directions [N,3]: counts[i] clips of toys[i], cached."""
        key = self._clip_cache_key(toys, counts, seed)
        n, r = sum(counts), self.resolution
        cache = TensorCache(self.cache_dir, "toyworld-video reference cache")
        shapes = {"clips": (n, self.frames, 3, r, r), "dirs": (n, 3)}
        cached = cache.load(key, {"key": key}, lambda t: reference_shape_problem(t, shapes))
        if cached is not None:
            return cached["clips"].float(), cached["dirs"].float()
        cams = self.reference_cameras(n, seed)
        clips, start = [], 0
        for toy, count in zip(toys, counts):
            cam = cams[start : start + count].to(self.device)
            frames = [self._render_at_times(toy, cam, [time] * count).rgb.cpu() for time in frame_times(self.frames).tolist()]
            clips.append(torch.stack(frames, dim=1))
            start += count
        clips_t, dirs = torch.cat(clips).half(), cams.directions().cpu()
        cache.save(key, {"key": key}, {"clips": clips_t, "dirs": dirs})
        return clips_t.float(), dirs

    def _build_set(self, set_id: int, light: int = 0) -> ReferenceSet:
        cfg = self.config
        if set_id == UNCOND_ID:
            toys = [m for p in animated_prompts() for m in resolve_animated(p)]
            counts = [cfg.uncond_references_per_object] * len(toys)
        else:
            toys = self._meshes[set_id]
            counts = split_evenly(cfg.num_references, len(toys))
        clips, dirs = self.render_reference_clips(toys, counts, cfg.reference_seed + set_id * 7919)
        x = (clips * 2.0 - 1.0).flatten(1).to(self.device, torch.float64)
        return ReferenceSet(x, dirs.to(self.device, torch.float64))

    # ------------------------------------------------------------------ sampling (explicit 4D)
    samples_clips = True

    def sample_clips(self, prompt: str, emb: TextEmbeddings, cams: Cameras, generator: torch.Generator,
                     sampling_steps: int) -> tuple[Tensor, Optional[Tensor]]:
        """An exact sample at each camera: one mode of the prompt, drawn once for every camera (a
        multi-modal prompt: mode m with the posterior mass of its references at pure noise, seen from the
        first camera), rendered at each camera at the F frame times, with its masks. At pure noise the
        posterior over references is the camera kernel alone, and with it the sample at a camera is that
        mode seen from that camera; `sampling_steps` is not needed."""
        modes = self.modes(prompt)
        mode = modes[0]
        if len(modes) > 1:
            weights = self.mode_weights(prompt, cams[:1])
            mode = modes[int(torch.multinomial(weights, 1, generator=generator))]
        times = frame_times(self.frames)
        clip_cams = cams[torch.arange(len(cams)).repeat_interleave(self.frames)]
        clip_cams.time = times.repeat(len(cams))
        out = self.render_ground_truth(mode, clip_cams)
        shape = (len(cams), self.frames)
        return out.rgb.cpu().unflatten(0, shape), out.alpha.cpu().unflatten(0, shape)

    def mode_weights(self, prompt: str, cam: Cameras) -> Tensor:
        """Posterior mass [modes] of each mode's references at pure noise seen from `cam`: the camera kernel
        softmax(kappa cos(angle(c, c_i)) / T), summed per mode (float64, CPU)."""
        emb_id = self._embedding_id(split_view_phrase(prompt)[0])
        refs = self.reference_set(emb_id)
        logits = self.config.kappa * (refs.dirs @ cam.directions()[0].to(refs.dirs)) / self.temperature
        w = torch.softmax(logits, 0).cpu()
        return torch.stack([part.sum() for part in w.split(split_evenly(self.config.num_references, len(self.modes(prompt))))])

    # ------------------------------------------------------------------ denoiser
    def denoise(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras: Optional[Cameras] = None) -> Tensor:
        """The exact posterior mean over reference clips for x_t [B,F,...]; the kernel uses each clip's first camera."""
        if x_t.ndim < 3 or x_t.shape[1] != self.frames:
            raise ValueError(f"expected clips [B,{self.frames},...], got {tuple(x_t.shape)}")
        if cameras is not None:
            cameras = _first_frames(cameras, x_t.shape[0], self.frames)
        return super().denoise(x_t, t, emb, cameras)

    def variational_model(self, config: VariationalConfig) -> "ToyworldVideoVariationalModel":
        """VSD's variational model: the exact denoiser over a buffer of recent rendered clips."""
        return ToyworldVideoVariationalModel(self, config)


class ToyworldVideoVariationalModel(ToyworldVariationalModel):
    """The image prior's exact buffer model, on clips: one buffer entry and one direction per clip."""

    prior: ToyworldVideoPrior

    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras: Optional[Cameras]) -> Tensor:
        """Epsilon of the rendered clip distribution (camera kernel off when `cameras` is None)."""
        cams = None if cameras is None else _first_frames(cameras, x_t.shape[0], self.prior.frames)
        return super().predict_eps(x_t, t, emb, cams)

    def update(self, x0: Tensor, emb: Tensor, cameras: Cameras, generator: torch.Generator) -> dict[str, float]:
        """Push detached clips x0 [B,F,...] with their (B*F view-major) cameras."""
        return super().update(x0, emb, _first_frames(cameras, x0.shape[0], self.prior.frames), generator)


def _first_frames(cameras: Cameras, clips: int, frames: int) -> Cameras:
    """One camera per clip: the first frame's of B*F view-major cameras (B cameras pass through)."""
    if len(cameras) == clips * frames:
        return cameras[::frames]
    if len(cameras) == clips:
        return cameras
    raise ValueError(f"expected {clips * frames} cameras (B*F, view-major) or {clips}, got {len(cameras)}")
