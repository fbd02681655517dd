"""toyworld: a diffusion prior whose data distribution is known exactly (DESIGN.md section 5).

The data are renders of catalogue objects (or a user mesh) from the training camera
distribution. The denoiser is the exact posterior mean of that empirical distribution with
a camera kernel:

    w = softmax((-|x_t - a_t x_i|^2 / (2 s_t^2) + kappa * cos(angle(c, c_i))) / T)
    D = sum_i w_i x_i,     eps = (x_t - a_t D) / s_t

with Stable Diffusion's noise schedule. x lives in pixel space scaled to [-1, 1] at
`resolution` px. Text embeddings are ids of reference sets: id 0 is the unconditional set
(the union of the catalogue), every other prompt gets its own set, built on first use and
cached on disk. View phrases ("a red mug, side view", "side view of a red mug") get their own
id that shares the object's references and carries the phrase's camera direction, used when
`predict_eps` is called without cameras.

`material = "pbr"`: the references are GGX-shaded under the training lights, one reference set
per (prompt, light), and each view is scored against those of the light it was rendered with
(materials.py; the light comes from the step's render, `observe_render`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.mesh_file import ColouredMesh, load_mesh_file
from ...core.errors import UserError
from ...core.cameras import VIEW_LABEL_ANGLES, Cameras, OrbitSampler, OrbitSamplerConfig, orbit_cameras, split_view_phrase, view_phrase
from ...render.mesh_torch import render_mesh
from ...core.runtime import default_cache_dir
from ...core.tensor_cache import TensorCache, shape_problem
from ...core.types import ReferenceImage, RenderOutput
from ..base import PRIORS, GuidanceDefaults, LatentSpace, Prior, PriorConfig, VariationalConfig, noise_coefficients, scaled_linear_alphas_cumprod
from .catalogue import catalogue_prompts, resolve_prompt
from .materials import face_materials, light_of, render_material_truth, render_pbr_ground_truth
from ...render.pbr import TRAINING_LIGHTS
from .references import SKIP_MASS, ReferenceSet, posterior_mean, sparse_posterior

if TYPE_CHECKING:
    from .variational import ToyworldVariationalModel

REFERENCE_FORMAT_VERSION = 2  # 2: reference cameras shuffled (modes see every direction)
UNCOND_ID = 0


@dataclass
class ToyworldConfig(PriorConfig):
    """The built-in ground-truth prior."""

    resolution: int = 64
    """Pixel resolution of the references; renders are resized to it."""
    num_references: int = 2400
    """References per prompt (split over the modes of a multi-modal prompt)."""
    uncond_references_per_object: int = 24
    """References per catalogue object in the unconditional (union) set."""
    kappa: float = 200.0
    """Strength of the camera kernel (0: the prior does not know the view)."""
    temperature: Optional[float] = None
    """Softmax temperature of the posterior: logits are divided by it (1 = exact). Larger values
    soften the posterior, which classifier-style objectives need: the exact posterior is one-hot
    except at very high noise, so e(y) - e(null) carries almost no signal. None: 1, or the
    objective's preference (csd and csm: 100)."""
    data_noise: Optional[float] = None
    """sigma_d: the data are the references blurred by N(0, sigma_d^2) per pixel (in [-1,1] units),
    and the denoiser is that distribution's exact posterior mean. 0 is the plain empirical
    distribution, whose denoiser memorises: at low noise it returns a reference, never its
    input. With sigma_d > 0 it is ~ the identity below noise ~sigma_d, as a trained network is,
    which DDIM inversion needs. None: 0, or the objective's preference (ism, tsm: 4)."""
    mesh: Optional[str] = None
    """A user mesh (.glb/.obj/.ply/.stl) that any prompt then names."""
    reference_seed: int = 0
    """Seed of the reference cameras (independent of the run seed)."""
    cache_dir: Optional[str] = None
    """Reference cache folder (default: $THREEDISTILL_CACHE or ~/.cache/threedistill)."""
    material: Optional[Literal["lambert", "pbr"]] = None
    """lambert: flat Lambertian references under one light; pbr: GGX-shaded with the objects' known
    roughness and metallic under the training lights (materials.py). None: pbr for a
    `--representation.material pbr` run, else lambert."""

    def check(self) -> None:
        check_posterior_settings(self.temperature, self.data_noise)
        if self.material not in (None, "lambert", "pbr"):
            raise UserError(f"unknown --prior.material '{self.material}'; valid: lambert, pbr")
        if self.mesh:
            load_mesh_file(self.mesh, name="user mesh")  # readable, with faces


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` references over `parts` modes, as evenly as possible (the first ones take the remainder); the
    reference sets are these runs of rows, mode after mode."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def check_posterior_settings(temperature: Optional[float], data_noise: Optional[float]) -> None:
    """The softmax temperature is positive and the data noise non-negative (None: their defaults)."""
    if data_noise is not None and data_noise < 0:
        raise UserError(f"--prior.data-noise must be >= 0, got {data_noise}; 0 is the exact empirical distribution")
    if temperature is not None and temperature <= 0:
        raise UserError(f"--prior.temperature must be positive, got {temperature}; 1 is the exact posterior")


def sampler_sharing_key(sampler_config: OrbitSamplerConfig) -> str:
    """The training-camera ranges the references are drawn from (not the render size or batch)."""
    ranges = {k: v for k, v in asdict(sampler_config).items() if k not in ("width", "height", "batch_size", "scene")}
    return repr(sorted(ranges.items()))


def catalogue_modes(prompt: str) -> list[ColouredMesh]:
    """The catalogue object(s) a prompt names, view phrase ignored; an animated object ("a bouncing
    ball") as its first frame, the static stage of a 4D run. Unknown prompts are a UserError."""
    base = split_view_phrase(prompt)[0]
    try:
        return list(resolve_prompt(base))
    except UserError:
        from .animated import resolve_animated

        try:
            return [toy.at(0.0) for toy in resolve_animated(base)]
        except UserError:
            pass
        raise


def render_ground_truth(mesh: ColouredMesh, cams: Cameras, device: torch.device) -> RenderOutput:
    """A catalogue (or user) mesh through the reference renderer (Lambertian, white background):
    what toyworld's data are and what runs on a ground-truth prior are scored against."""
    v, f, c = mesh.to_torch(device)
    with torch.no_grad():
        return render_mesh(v, f, c, cams.to(device))


@PRIORS.register("toyworld")
class ToyworldPrior(Prior):
    """Exact empirical-posterior denoiser over rendered references (see module docstring)."""

    Config = ToyworldConfig
    config: ToyworldConfig
    has_ground_truth = True
    provides_variational_model = True
    reads_image = True
    num_train_timesteps = 1000

    def __init__(self, config: ToyworldConfig, sampler_config: OrbitSamplerConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.resolution = config.resolution
        self.alphas_cumprod = scaled_linear_alphas_cumprod(self.num_train_timesteps).to(self.device)
        self.defaults = GuidanceDefaults(cfg_scale=1.0, min_step=20, max_step=[(0.0, 980.0), (0.5, 500.0)], cfg_scale_low=1.0)
        self.temperature = 1.0 if config.temperature is None else float(config.temperature)
        self.data_noise = 0.0 if config.data_noise is None else float(config.data_noise)
        check_posterior_settings(config.temperature, config.data_noise)
        self.sampler_config = sampler_config
        self.cache_dir = Path(config.cache_dir or default_cache_dir()) / "toyworld"
        self._user_mesh: Optional[ColouredMesh] = load_mesh_file(config.mesh, name="user mesh") if config.mesh else None
        self._prompt_ids: dict[str, int] = {"": UNCOND_ID}
        self._sets: dict[int, ReferenceSet] = {}
        self._lit_sets: dict[tuple[int, int], ReferenceSet] = {}  # pbr: one per (set id, training light)
        self.pbr = config.material == "pbr"
        self._lights: Optional[Tensor] = None  # the latest render's light per view (pbr)
        self._meshes: dict[int, list[ColouredMesh]] = {}
        self._set_of: dict[int, int] = {}  # view-phrase id -> the object's reference-set id
        self._view_dirs: dict[int, Tensor] = {}  # view-phrase id -> default camera direction [3]
        self.skip_mass = SKIP_MASS  # posterior mass the denoiser may leave out (0: dense, references.py)

    @classmethod
    def sharing_key(cls, config: PriorConfig, sampler_config: OrbitSamplerConfig) -> str:
        """Its settings and the training-camera ranges its references are drawn from."""
        return f"{config!r}|{sampler_sharing_key(sampler_config)}"

    @classmethod
    def check_prompt(cls, config: PriorConfig, prompt: str) -> None:
        """A prompt names a catalogue object (any prompt names the user mesh when there is one)."""
        assert isinstance(config, ToyworldConfig)
        if not config.mesh:
            catalogue_modes(prompt)

    # ------------------------------------------------------------------ prompts
    def modes(self, prompt: str) -> list[ColouredMesh]:
        """The object(s) a prompt names, view phrase ignored: one mesh per mode (user mesh when configured)."""
        if self._user_mesh is not None:
            return [self._user_mesh]
        return catalogue_modes(prompt)

    def _embedding_id(self, text: str) -> int:
        """The id of one prompt, registering it (and its object, for a view phrase) on first use."""
        base, label = split_view_phrase(text.strip().lower())
        key = base if label is None else view_phrase(base, label)  # one id per (object, view), either form
        if key in self._prompt_ids:
            return self._prompt_ids[key]
        if label is None:
            meshes = self.modes(key)  # validates the prompt now
            new_id = self._prompt_ids[key] = len(self._prompt_ids)
            self._meshes[new_id] = meshes
            return new_id
        set_id = self._embedding_id(base)
        new_id = self._prompt_ids[key] = len(self._prompt_ids)
        self._set_of[new_id] = set_id
        el, az = VIEW_LABEL_ANGLES[label]
        one = torch.ones(1)
        cam = orbit_cameras(one * el, one * az, one, one * 40.0, 1, 1)
        self._view_dirs[new_id] = cam.directions()[0].to(self.device, torch.float64)
        return new_id

    def embed(self, texts: list[str]) -> Tensor:
        """Embedding ids [len(texts)]; empty text means unconditional. Unknown prompts raise."""
        ids = [self._embedding_id(text) for text in texts]
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def condition_on_image(self, reference: ReferenceImage) -> str:
        """Image-to-3D: the catalogue object the image shows (identify.py), or the user mesh, as the prompt."""
        if self._user_mesh is not None:
            return Path(str(self.config.mesh)).stem
        from .identify import identify_catalogue_object

        return identify_catalogue_object(reference, self.device)

    # ------------------------------------------------------------------ encoding
    @classmethod
    def latent_channels(cls, config: PriorConfig) -> Optional[int]:
        """Pixel space: x0 is the RGB image in [-1, 1], so a latent field on toyworld renders 3 channels."""
        return None if cls.is_video else 3

    def latent_space(self) -> LatentSpace:
        """The identity 'latent': RGB in [-1, 1] at the prior resolution (`encode`/`decode` are affine maps)."""
        return LatentSpace(channels=3, size=self.resolution, downscale=1)

    # ------------------------------------------------------------------ encoding
    def encode(self, images: Tensor) -> Tensor:
        """Renders [B,3,H,W] in [0,1] -> x0 in [-1,1] at the prior resolution (differentiable)."""
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear", antialias=True, align_corners=False)
        return images * 2.0 - 1.0

    def decode(self, x0: Tensor) -> Tensor:
        """x0 in [-1,1] -> images in [0,1]."""
        return ((x0 + 1.0) * 0.5).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ references
    def reference_cameras(self, n: int, seed: int) -> Cameras:
        """Reference cameras drawn from the training camera distribution at the prior resolution,
        in a seeded random order: the sampler stratifies azimuth, so its cameras come sorted by
        azimuth, and each mode (or catalogue object) takes a contiguous slice of them."""
        cfg = OrbitSamplerConfig(**{**asdict(self.sampler_config), "width": self.resolution, "height": self.resolution})
        gen = torch.Generator().manual_seed(seed)
        cams = OrbitSampler(cfg).sample(gen, batch_size=n)
        return cams[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]

    def render_ground_truth(self, mesh: ColouredMesh, cams: Cameras, light: int = -1) -> RenderOutput:
        """Render a catalogue mesh with the reference renderer (Lambertian, white background; pbr:
        GGX-shaded under training light `light`, or the held-out one for -1)."""
        if self.pbr:
            return render_pbr_ground_truth(mesh, cams, [light_of(light)] * len(cams), self.device)
        return render_ground_truth(mesh, cams, self.device)

    def material_truth(self, mesh: ColouredMesh, cams: Cameras) -> tuple[Tensor, Tensor]:
        """The mesh's unshaded [albedo, roughness, metallic] maps [B,5,H,W] and alpha (materials.py)."""
        return render_material_truth(mesh, cams, self.device)

    def observe_render(self, out: RenderOutput, cams: Cameras) -> None:
        """pbr: the light each view was rendered with (extras["light_index"]; -1 = held out)."""
        if self.pbr:
            light = out.extras.get("light_index")
            self._lights = None if light is None else torch.as_tensor(light).to(self.device).long()

    def _row_lights(self, rows: int) -> Tensor:
        """The light of each of `rows` prior rows (branches of one batch repeat its views); 0 without pbr."""
        lights = self._lights
        if not self.pbr or lights is None or rows % len(lights):
            return torch.zeros(rows, dtype=torch.long, device=self.device)
        return lights.repeat(rows // len(lights))

    def _cache_key(self, meshes: list[ColouredMesh], counts: list[int], seed: int, light: int) -> str:
        h = hashlib.sha1()
        h.update(f"v{REFERENCE_FORMAT_VERSION}|{self.resolution}|{counts}|{seed}|{asdict(self.sampler_config)}".encode())
        if self.pbr:
            h.update(f"pbr|{light_of(light)!r}".encode())
        for m in meshes:
            arrays = (m.vertices, m.faces, m.face_colors) + ((face_materials(m),) if self.pbr else ())
            for arr in arrays:
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:20]

    def _render_references(self, meshes: list[ColouredMesh], counts: list[int], seed: int, light: int = 0) -> tuple[Tensor, Tensor]:
        """Images [N,3,R,R] in [0,1] and camera directions [N,3]: counts[i] views of meshes[i], cached
        (core/tensor_cache.py: a damaged cache file is warned about and re-rendered)."""
        key = self._cache_key(meshes, counts, seed, light)
        n, r = sum(counts), self.resolution
        cache = TensorCache(self.cache_dir, "toyworld reference cache")
        cached = cache.load(key, {"key": key}, lambda t: reference_shape_problem(t, {"images": (n, 3, r, r), "dirs": (n, 3)}))
        if cached is not None:
            return cached["images"].float(), cached["dirs"].float()
        cams = self.reference_cameras(n, seed)
        images, start = [], 0
        for mesh, count in zip(meshes, counts):
            images.append(self.render_ground_truth(mesh, cams[start : start + count], light).rgb.cpu())
            start += count
        images_t, dirs = torch.cat(images).half(), cams.directions().cpu()
        cache.save(key, {"key": key}, {"images": images_t, "dirs": dirs})
        return images_t.float(), dirs

    def _build_set(self, set_id: int, light: int) -> ReferenceSet:
        cfg = self.config
        share = len(TRAINING_LIGHTS) if self.pbr else 1  # pbr: the references are split over the lights
        meshes: list[ColouredMesh]
        if set_id == UNCOND_ID:
            meshes = [m for p in catalogue_prompts() for m in resolve_prompt(p)]
            if self._user_mesh is not None:
                meshes.append(self._user_mesh)
            counts = [max(cfg.uncond_references_per_object // share, 1)] * len(meshes)
        else:
            meshes = self._meshes[set_id]
            counts = split_evenly(max(cfg.num_references // share, len(meshes)), len(meshes))
        images, dirs = self._render_references(meshes, counts, cfg.reference_seed + set_id * 7919 + light * 104729, light)
        x = (images * 2.0 - 1.0).flatten(1).to(self.device, torch.float64)
        return ReferenceSet(x, dirs.to(self.device, torch.float64))

    def reference_set(self, set_id: int, light: int = 0) -> ReferenceSet:
        """The (lazily built) references of one embedding id (view phrases share their object's) under
        training light `light` (pbr; always 0 otherwise)."""
        set_id = self._set_of.get(set_id, set_id)
        if set_id != UNCOND_ID and set_id not in self._meshes and set_id not in self._sets:
            raise ValueError(f"unknown toyworld embedding id {set_id}")
        if self.pbr:
            if (set_id, light) not in self._lit_sets:
                self._lit_sets[(set_id, light)] = self._build_set(set_id, light)
            return self._lit_sets[(set_id, light)]
        if set_id not in self._sets:
            self._sets[set_id] = self._build_set(set_id, 0)
        return self._sets[set_id]

    # ------------------------------------------------------------------ denoiser
    def _likelihood(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a, var) [B,1] float64: x_t | i ~ N(a x_i, var I), var = s^2 + a^2 sigma_d^2."""
        a, s = noise_coefficients(self.alphas_cumprod.double(), t, 2)
        return a, s * s + a * a * self.data_noise**2

    def posterior_weights(self, x_t: Tensor, t: Tensor, refs: ReferenceSet, cam_dirs: Optional[Tensor], tol: float = 0.0) -> Tensor:
        """Posterior weights [B,N] of each reference given noisy x_t (flattened [B,D]); with tol > 0,
        references carrying less than tol of the mass in all are left at 0 (references.py)."""
        a, var = self._likelihood(t)
        ids, w = sparse_posterior(x_t, a, var, refs, cam_dirs, self.config.kappa, self.temperature, tol)
        return w.new_zeros(w.shape[0], len(refs)).index_copy_(1, ids, w)

    def posterior_mean(self, x_t: Tensor, t: Tensor, refs: ReferenceSet, cam_dirs: Optional[Tensor]) -> Tensor:
        """D = E[x0 | x_t] for flattened float64 x_t [B,D]: sum_i w_i (x_i + c (x_t - a x_i)),
        c = a sigma_d^2 / (s^2 + a^2 sigma_d^2) (c = 0 for the exact empirical distribution).
        References with negligible weight (at most `self.skip_mass` in all) are skipped."""
        a, var = self._likelihood(t)
        mean = posterior_mean(x_t, a, var, refs, cam_dirs, self.config.kappa, self.temperature, self.skip_mass)
        if self.data_noise == 0.0:
            return mean
        c = a * self.data_noise**2 / var
        return mean + c * (x_t - a * mean)

    def posterior_eps(self, x_t: Tensor, t: Tensor, refs: ReferenceSet, cam_dirs: Optional[Tensor]) -> Tensor:
        """eps = (x_t - a_t D) / s_t with D the posterior mean over `refs` (x_t any shape [B,...])."""
        d = self.posterior_mean(x_t.detach().flatten(1).double(), t, refs, cam_dirs).view(x_t.shape).to(x_t.dtype)
        a, s = noise_coefficients(self.alphas_cumprod, t, x_t.ndim)
        return (x_t - a * d) / s

    def variational_model(self, config: VariationalConfig) -> "ToyworldVariationalModel":
        """VSD's variational model: the exact denoiser over a buffer of recent renders."""
        from .variational import ToyworldVariationalModel

        return ToyworldVariationalModel(self, config)

    def denoise(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras: Optional[Cameras] = None) -> Tensor:
        """The exact posterior mean D(x_t, t, y, c), same shape as x_t."""
        shape = x_t.shape
        flat = x_t.detach().flatten(1).double()
        dirs = cameras.directions().double().to(self.device) if cameras is not None else None
        out = torch.empty_like(flat)
        lights = self._row_lights(len(emb))
        groups = torch.stack([emb.to(self.device), lights.clamp(min=0)], 1).unique(dim=0).tolist()
        for emb_id, light in groups:
            rows = ((emb.to(self.device) == emb_id) & (lights.clamp(min=0) == light)).nonzero().squeeze(1)
            refs = self.reference_set(emb_id, light)
            if dirs is not None:
                row_dirs: Optional[Tensor] = dirs[rows]
            else:  # a view phrase's direction stands in for the missing cameras
                view_dir = self._view_dirs.get(emb_id)
                row_dirs = None if view_dir is None else view_dir.expand(len(rows), 3)
            out[rows] = self.posterior_mean(flat[rows], t[rows], refs, row_dirs)
        return out.view(shape).to(x_t.dtype)

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras: Optional[Cameras] = None) -> Tensor:
        """eps = (x_t - a_t D) / s_t."""
        d = self.denoise(x_t, t, emb, cameras)
        a, s = noise_coefficients(self.alphas_cumprod, t, x_t.ndim)
        return (x_t - a * d) / s


def reference_shape_problem(tensors: dict[str, Tensor], shapes: dict[str, tuple[int, ...]]) -> Optional[str]:
    """What is wrong with cached reference tensors (a missing name, a shape, a non-finite or out-of-range
    value), or None."""
    problem = shape_problem(tensors, shapes)
    if problem is not None:
        return problem
    images = tensors.get("images", tensors.get("clips"))
    if images is not None and images.numel() and (images.min() < 0 or images.max() > 1):
        return "pixel values outside [0, 1]"
    return None
