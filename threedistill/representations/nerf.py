"""NeRF: a multi-resolution hash-grid field with density and albedo heads, volume-rendered.

The field (instant-NGP style, Mueller et al. 2022, written in torch): L levels of trilinearly
interpolated feature grids over [-bound, bound]^3, resolutions growing geometrically from
`base_resolution` to `max_resolution`. A level whose (R+1)^3 corner points fit in the table
is stored densely and sampled with `grid_sample` (fast on the CPU); finer levels hash their
corners into a table of 2^log2_table_size entries (instant-NGP's spatial hash). A small MLP
(one shared hidden layer, two linear heads) reads the concatenated features: density (raw +
a density bias, then softplus/trunc_exp) and albedo (sigmoid). Score distillation on toyworld needs no shading:
its references are lit by a fixed world light, so the albedo bakes it in.

A latent field (`latent_channels` N > 0; ED-NeRF, `threedistill edit --method latent-dds`) renders
the prior's latent image instead of RGB: the colour head gives N unbounded channels, composited on
a learnt background latent, then a small residual stack of 3x3 convolutions over the rendered map
(and its alpha) refines it (`refine_layers`; its last layer starts at zero, so it starts as the
identity). It has no albedo, so no mesh is extracted from it (`as_field` is None); an edit ends by
distilling an RGB field from its decoded renders (scene/latent.py), which starts from its geometry
(`continue_from`).

Rendering (render/volume_torch.py, or nerfacc's kernels on CUDA) skips empty space with a
binary occupancy grid that `after_step` refreshes from the density every few steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.cameras import Cameras
from ..core.errors import UserError
from ..core.geometry import Field
from ..core.schedule import Schedule
from ..core.types import RenderOutput
from ..render.volume_nerfacc import render_volume_nerfacc, resolve_volume_backend
from ..render.volume_torch import OccupancyGrid, render_volume_torch
from .base import REPRESENTATIONS, Representation, RepresentationConfig, z_variance_loss

_PRIMES = (1, -1640531535, 805459861)  # instant-NGP's hash primes as int32 (2654435761 wraps)


@dataclass
class NeRFConfig(RepresentationConfig):
    """A hash-grid NeRF (instant-NGP field, DreamFusion/Magic3D-style density bias)."""

    bound: float = 1.0
    """The field lives in the box [-bound, bound]^3 (objects have radius about 1)."""
    levels: int = 4
    """Hash-grid levels."""
    features_per_level: int = 2
    """Features per level (the MLP input is levels x features_per_level)."""
    log2_table_size: int = 19
    """Entries per level are 2^this; levels whose (R+1)^3 corners fit are stored densely (2^19:
    every level up to R = 79, sampled with grid_sample, which is ~5x cheaper on the CPU than the
    hashed gather; larger max_resolution adds hashed levels)."""
    base_resolution: int = 16
    """Grid resolution of the coarsest level."""
    max_resolution: int = 64
    """Grid resolution of the finest level (64 px renders of a radius-1 object need ~64)."""
    hidden_dim: int = 32
    """Width of the hidden layer shared by the density and albedo heads."""
    density_activation: Literal["softplus", "trunc_exp"] = "softplus"
    """Activation of raw density + bias."""
    density_bias: Literal["blob_magic3d", "blob_dreamfusion", "none"] = "blob_magic3d"
    """blob_magic3d: scale*(1-|p|/std); blob_dreamfusion: scale*exp(-|p|^2/(2 std^2))."""
    blob_scale: float = 10.0
    """Scale of the density bias."""
    blob_std: float = 0.5
    """Radius parameter of the density bias."""
    samples_per_ray: int = 32
    """Equally spaced samples between a ray's entry into and exit from the box (CUDA backend:
    a fixed step of 2 * bound / samples_per_ray)."""
    occ_resolution: int = 64
    """Cells per side of the occupancy grid used to skip empty space."""
    occ_update_every: int = 16
    """Refresh the occupancy grid every N steps (0: never skip empty space)."""
    occ_warmup_steps: int = 256
    """Until this step every cell is re-evaluated; later a quarter plus the occupied ones."""
    occ_threshold: float = 0.01
    """A cell is occupied when its EMA of density x step size exceeds min(this, mean)."""
    occ_ema_decay: float = 0.95
    """EMA decay of the cell values."""
    occ_dilate: int = 1
    """Grow the occupied region by this many cells (lets surfaces move outward)."""
    early_stop_eps: float = 0.0
    """Skip samples whose transmittance is below this (behind opaque matter; 0: off). On the
    torch backend it costs a no-grad density pass; score-distilled densities stay soft enough
    that it skipped < 0.1% of samples on toyworld, so it is off there (nerfacc uses 1e-4)."""
    alpha_threshold: float = 0.0
    """Skip samples whose alpha is below this (nearly empty; 0: off)."""
    normal_eps: float = 0.01
    """Finite-difference step for density normals."""
    lr_encoding: float = 3e-2
    """Adam learning rate of the hash-grid features (3x threestudio's 1e-2: runs here are 1000
    steps, not 10000; toyworld mug loss at step 200: 13 against 31 with 1e-2)."""
    lr_network: float = 3e-3
    """Adam learning rate of the MLP (3x threestudio's 1e-3)."""
    lambda_orient: Schedule = 0.0
    """Orientation loss weight (normals facing away from the camera; needs 6 extra density passes).
    Every lambda is a constant or a schedule of (step, value) points, e.g. threestudio's
    orientation warm-up `0 10 0.2 1000` (a float step in (0,1) is a fraction of the stage)."""
    lambda_sparsity: Schedule = 0.0
    """Sparsity loss weight: mean(sqrt(alpha^2 + 0.01))."""
    lambda_opaque: Schedule = 0.0
    """Opacity loss weight: binary entropy of alpha (pushes alpha to 0 or 1)."""
    lambda_z_variance: Schedule = 0.0
    """HiFA's z-variance weight (hifa preset: 100): variance of depth along each ray, on pixels with alpha > 0.5."""
    latent_channels: int = 0
    """0: an RGB field. N > 0: a latent field rendering the prior's N-channel latent image (see the module docstring)."""
    refine_layers: int = 2
    """Latent fields: 3x3 convolutions of the residual refinement over the rendered latent map (0: none)."""
    refine_width: int = 32
    """Latent fields: channels of the refinement's hidden layers."""

    @property
    def channels(self) -> int:
        """Channels a render has: 3 (RGB) or `latent_channels`."""
        return self.latent_channels or 3

    def check(self) -> None:
        super().check()
        density_bias(torch.zeros(1, 3), self.density_bias, 1.0, 1.0)  # a known name


# ---------------------------------------------------------------------- encoding
class HashGrid(nn.Module):
    """Multi-resolution hash encoding: points [M,3] in [-bound,bound]^3 -> features [M, L*F]."""

    _res: Tensor  # [Lh] resolutions of the hashed levels

    def __init__(self, levels: int, features: int, log2_table_size: int, base_resolution: int, max_resolution: int, bound: float, generator: torch.Generator) -> None:
        super().__init__()
        self.bound, self.features, self.table_size = bound, features, 2**log2_table_size
        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(levels - 1, 1))
        self.resolutions = [int(math.floor(base_resolution * growth**lvl)) for lvl in range(levels)]
        self.dense_res = [r for r in self.resolutions if (r + 1) ** 3 <= self.table_size]
        self.hashed_res = [r for r in self.resolutions if (r + 1) ** 3 > self.table_size]

        def init(*shape: int) -> Tensor:
            return (torch.rand(*shape, generator=generator) * 2 - 1) * 1e-4

        self.dense = nn.ParameterList([nn.Parameter(init(1, features, r + 1, r + 1, r + 1)) for r in self.dense_res])
        self.table = nn.Parameter(init(max(len(self.hashed_res), 1), self.table_size, features))
        self.register_buffer("_res", torch.tensor(self.hashed_res or [1], dtype=torch.float32), persistent=False)

    @property
    def out_dim(self) -> int:
        return len(self.resolutions) * self.features

    def forward(self, points: Tensor) -> Tensor:
        x = (points / self.bound).clamp(-1.0, 1.0)
        M = x.shape[0]
        feats = [sample_dense_level(vol, x) for vol in self.dense]
        if self.hashed_res:
            feats.append(self._hashed(x).reshape(M, len(self.hashed_res) * self.features))  # M may be 0 (no ray hit)
        return torch.cat(feats, dim=-1)

    def _hashed(self, x: Tensor) -> Tensor:
        """Trilinear interpolation of hashed corner features [M, Lh, F]."""
        M, Lh, T = x.shape[0], len(self.hashed_res), self.table_size
        res = self._res
        pos = ((x + 1.0) * 0.5)[:, None, :] * res[None, :, None]  # [M,Lh,3]
        cell = torch.minimum(pos.floor(), (res - 1)[None, :, None])
        frac = pos - cell
        i = cell.to(torch.int32)
        primes = torch.tensor(_PRIMES, dtype=torch.int32, device=x.device)
        h = torch.stack([i, i + 1], dim=-1) * primes[:, None]  # [M,Lh,3,2]
        hx, hy, hz = h.unbind(2)
        idx = (hx[..., :, None, None] ^ hy[..., None, :, None] ^ hz[..., None, None, :]) & (T - 1)  # [M,Lh,2,2,2]
        offsets = torch.arange(Lh, device=x.device, dtype=torch.int32) * T
        idx = (idx + offsets[None, :, None, None, None]).view(-1).long()  # int64: index_add (backward) is far faster
        w = torch.stack([1.0 - frac, frac], dim=-1)  # [M,Lh,3,2]
        wx, wy, wz = w.unbind(2)
        weights = (wx[..., :, None, None] * wy[..., None, :, None] * wz[..., None, None, :]).view(M, Lh, 8, 1)
        corner = self.table.view(-1, self.features).index_select(0, idx).view(M, Lh, 8, self.features)
        return (corner * weights).sum(dim=2)


PARALLEL_GRID_SAMPLE_MIN_POINTS = 8192
"""Fewer points than this are sampled in one grid_sample batch (splitting costs more than it saves)."""


def sample_dense_level(volume: Tensor, x: Tensor) -> Tensor:
    """Trilinear features [M,F] of a dense level `volume` [1,F,R+1,R+1,R+1] at points x [M,3] in [-1,1]^3.

    On the CPU, torch's 3D grid_sample (and its backward) runs one thread per batch entry, so the points are split
    into one batch entry per torch thread over the same (expanded) volume: every feature is computed as in a single
    batch; the volume's gradient is summed over the entries (rounding may differ in the last bits). About 2x on 2
    threads for the forward and backward together."""
    M, features = x.shape[0], volume.shape[1]
    parts = torch.get_num_threads() if x.device.type == "cpu" and M >= PARALLEL_GRID_SAMPLE_MIN_POINTS else 1
    if parts <= 1:
        return F.grid_sample(volume, x.view(1, M, 1, 1, 3), mode="bilinear", align_corners=True).view(features, M).t()
    padded = F.pad(x, (0, 0, 0, (-M) % parts))
    out = F.grid_sample(volume.expand(parts, -1, -1, -1, -1), padded.view(parts, -1, 1, 1, 3), mode="bilinear", align_corners=True)
    return out.view(parts, features, -1).transpose(1, 2).reshape(-1, features)[:M]


class _TruncExp(torch.autograd.Function):
    """exp with its gradient clamped at exp(15) (threestudio/torch-ngp's trunc_exp)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def density_bias(points: Tensor, kind: str, scale: float, std: float) -> Tensor:
    """Pre-activation density bias [M] (threestudio's blob_magic3d / blob_dreamfusion)."""
    if kind == "blob_magic3d":
        return scale * (1.0 - points.norm(dim=-1) / std)
    if kind == "blob_dreamfusion":
        return scale * torch.exp(-points.square().sum(dim=-1) / (2.0 * std**2))
    if kind == "none":
        return torch.zeros(points.shape[:-1], device=points.device, dtype=points.dtype)
    raise UserError(f"unknown density bias '{kind}'; valid: blob_magic3d, blob_dreamfusion, none")


# ---------------------------------------------------------------------- regularisers
def orientation_loss(weights: Tensor, normals: Tensor, dirs: Tensor, alpha: Tensor) -> Tensor:
    """sum(w.detach() * relu(n . d)^2) / #(alpha > 0): normals facing away from the camera."""
    facing = (normals * dirs).sum(dim=-1).clamp_min(0.0)
    return (weights.detach() * facing.square()).sum() / (alpha > 0).sum().clamp_min(1)


def sparsity_loss(alpha: Tensor) -> Tensor:
    """mean(sqrt(alpha^2 + 0.01)) (DreamFusion's opacity penalty)."""
    return torch.sqrt(alpha.square() + 0.01).mean()


def opaque_loss(alpha: Tensor) -> Tensor:
    """Binary entropy of alpha clamped to [1e-3, 1-1e-3] (pushes alpha to 0 or 1)."""
    a = alpha.clamp(1e-3, 1.0 - 1e-3)
    return F.binary_cross_entropy(a, a)


# ---------------------------------------------------------------------- the representation
class _WarpedField:
    """A field queried at warped points: density/query(x) = field's at warp(x) (NeRF.point_warp)."""

    def __init__(self, field: "NeRF", warp: Callable[[Tensor], Tensor]) -> None:
        self.field, self.warp = field, warp

    def density(self, points: Tensor) -> Tensor:
        return self.field.density(self.warp(points))

    def query(self, points: Tensor) -> tuple[Tensor, Tensor]:
        return self.field.query(self.warp(points))


class NeRFField:
    """A NeRF as a mesh-extraction field (core/geometry.py's `Field`): its density and albedo,
    and its rendered alpha for calibrating the surface level."""

    surface_level: Optional[float] = None

    def __init__(self, nerf: "NeRF") -> None:
        self.nerf = nerf

    def density(self, points: Tensor) -> Tensor:
        return self.nerf.density(points.to(self.nerf.device))

    def albedo(self, points: Tensor) -> Tensor:
        return self.nerf.albedo(points.to(self.nerf.device))

    @torch.no_grad()
    def render_alpha(self, cams: Cameras) -> Tensor:
        device = self.nerf.device
        return self.nerf.render(cams.to(device), torch.ones(3, device=device)).alpha.detach().float().cpu()


@REPRESENTATIONS.register("nerf")
class NeRF(Representation):
    """Hash-grid density + albedo field, volume-rendered with occupancy-grid skipping."""

    Config = NeRFConfig
    config: NeRFConfig
    fixed_state_shapes = True

    point_warp: Optional[Callable[[Tensor], Tensor]] = None
    """When set, `render` queries the field at point_warp(x) for every sample point x (a 4D
    deformation sets it per time, representations/deformation.py); None renders the field as is."""

    def __init__(self, config: NeRFConfig, generator: torch.Generator, backend: str = "auto") -> None:
        super().__init__()
        cfg = self.config = config
        self.generator, self.backend = generator, backend
        self.encoding = HashGrid(cfg.levels, cfg.features_per_level, cfg.log2_table_size, cfg.base_resolution, cfg.max_resolution, cfg.bound, generator)
        self.trunk = nn.Sequential(_linear(self.encoding.out_dim, cfg.hidden_dim, generator), nn.ReLU(inplace=True))
        self.density_head = _linear(cfg.hidden_dim, 1, generator)
        self.albedo_head = _linear(cfg.hidden_dim, cfg.channels, generator)
        self.latent_background: Optional[nn.Parameter] = None
        self.refiner: Optional[LatentRefiner] = None
        if cfg.latent_channels:
            self.latent_background = nn.Parameter(torch.zeros(cfg.latent_channels))
            self.refiner = LatentRefiner(cfg.latent_channels, cfg.refine_layers, cfg.refine_width, generator)
        self.occupancy = OccupancyGrid(cfg.occ_resolution, cfg.bound, cfg.occ_threshold, cfg.occ_ema_decay, cfg.occ_dilate)
        cfg.check()
        self.keep_samples = False  # the next training render keeps its samples (orientation loss)
        self.depth_moments = False  # the next training render sums weight x z^2 (z-variance loss)
        if cfg.occ_update_every > 0:  # start from the density bias's shape, not a full grid
            self.update_occupancy(0)

    # ------------------------------------------------------------------ field
    def _density_from_raw(self, raw: Tensor, points: Tensor) -> Tensor:
        cfg = self.config
        raw = raw + density_bias(points, cfg.density_bias, cfg.blob_scale, cfg.blob_std)
        if cfg.density_activation == "trunc_exp":
            return _TruncExp.apply(raw)
        return F.softplus(raw)

    def density(self, points: Tensor) -> Tensor:
        """Density sigma [M] at points [M,3]."""
        return self._density_from_raw(self.density_head(self.trunk(self.encoding(points))).squeeze(-1), points)

    def query(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Density [M] and albedo [M,3] (a latent field: latent [M,N], unbounded) at points [M,3] (both heads in one product)."""
        h = self.trunk(self.encoding(points))
        heads = (self.density_head, self.albedo_head)
        out = F.linear(h, torch.cat([head.weight for head in heads]), torch.cat([head.bias for head in heads]))
        colour = out[:, 1:] if self.is_latent else torch.sigmoid(out[:, 1:])
        return self._density_from_raw(out[:, 0], points), colour

    def albedo(self, points: Tensor) -> Tensor:
        """Albedo [M,3] in [0,1] at points [M,3] (with `density`: the field mesh export reads)."""
        return torch.sigmoid(self.albedo_head(self.trunk(self.encoding(points))))

    @property
    def device(self) -> torch.device:
        return self.encoding.table.device

    @property
    def is_latent(self) -> bool:
        """It renders a latent image (`latent_channels` > 0), not RGB."""
        return self.refiner is not None

    def as_field(self, time: float = 0.0) -> Optional[Field]:
        return None if self.is_latent else NeRFField(self)

    def normals(self, points: Tensor) -> Tensor:
        """Unit normals [M,3] = -grad(density) by central finite differences."""
        eps = self.config.normal_eps
        offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps
        shifted = torch.cat([points[:, None] + offsets, points[:, None] - offsets], dim=1)  # [M,6,3]
        d = self.density(shifted.reshape(-1, 3)).view(-1, 2, 3)
        grad = (d[:, 0] - d[:, 1]) / (2 * eps)
        return -F.normalize(grad, dim=-1)

    # ------------------------------------------------------------------ interface
    @property
    def num_points(self) -> int:
        """Occupied cells of the occupancy grid (logged where Gaussians log their count)."""
        return int(self.occupancy.binary.sum())

    def param_groups(self) -> list[dict[str, Any]]:
        cfg = self.config
        return [
            {"params": list(self.encoding.parameters()), "lr": cfg.lr_encoding, "name": "encoding"},
            {"params": [p for m in (self.trunk, self.density_head, self.albedo_head) for p in m.parameters()], "lr": cfg.lr_network, "name": "network"},
            *([{"params": [*self.refiner.parameters(), self.latent_background], "lr": cfg.lr_network, "name": "refiner"}]
              if self.refiner is not None and self.latent_background is not None else []),
        ]

    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        """Render the cameras on `background` [3] or [B,3]; a latent field renders on its own learnt background
        latent and refines the map (see the module docstring)."""
        if self.refiner is not None and self.latent_background is not None:
            out = self._render_volume(cams, self.latent_background)
            return RenderOutput(rgb=self.refiner(out.rgb, out.alpha), alpha=out.alpha, depth=out.depth, extras=out.extras)
        return self._render_volume(cams, background)

    def _render_volume(self, cams: Cameras, background: Tensor) -> RenderOutput:
        cfg = self.config
        occupancy = self.occupancy if cfg.occ_update_every > 0 else None
        keep = self.training and torch.is_grad_enabled() and self.keep_samples
        moments = self.training and torch.is_grad_enabled() and self.depth_moments
        field: Any = self if self.point_warp is None else _WarpedField(self, self.point_warp)
        if resolve_volume_backend(self.backend, self.encoding.table.device) == "cuda":
            return render_volume_nerfacc(
                field, cams, background, bound=cfg.bound, samples_per_ray=cfg.samples_per_ray, occupancy=occupancy,
                stratified=torch.is_grad_enabled(), early_stop_eps=cfg.early_stop_eps, alpha_threshold=cfg.alpha_threshold,
                keep_samples=keep, depth_moments=moments,
            )
        return render_volume_torch(
            field, cams, background, bound=cfg.bound, samples_per_ray=cfg.samples_per_ray, occupancy=occupancy,
            stratified=torch.is_grad_enabled(), generator=self.generator, early_stop_eps=cfg.early_stop_eps,
            alpha_threshold=cfg.alpha_threshold, keep_samples=keep, depth_moments=moments,
        )

    def before_step(self, step: int, active: frozenset[str]) -> None:
        """Keep the training render's samples (depth moments) when the orientation (z-variance) loss will be asked for."""
        self.keep_samples = "orient" in active
        self.depth_moments = "z_variance" in active

    def losses(self, out: RenderOutput, active: frozenset[str]) -> dict[str, Tensor]:
        """sparsity, opaque and orient (the last from the render's kept samples) where asked for."""
        terms: dict[str, Tensor] = {}
        if "sparsity" in active:
            terms["sparsity"] = sparsity_loss(out.alpha)
        if "opaque" in active:
            terms["opaque"] = opaque_loss(out.alpha)
        if "z_variance" in active and "depth_sq" in out.extras:
            terms["z_variance"] = z_variance_loss(out)
        if "orient" in active and "sample_points" in out.extras:
            ex = out.extras
            terms["orient"] = orientation_loss(ex["sample_weights"], self.normals(ex["sample_points"]), ex["sample_dirs"], out.alpha)
        return terms

    @torch.no_grad()
    def update_occupancy(self, step: int) -> None:
        """Refresh the occupancy grid from the current density."""
        cfg = self.config
        step_size = 2.0 * cfg.bound / cfg.samples_per_ray
        fraction = 1.0 if step < cfg.occ_warmup_steps else 0.25
        self.occupancy.update(self.density, step_size, self.generator, fraction)

    def after_step(self, step: int, out: RenderOutput, optimizer: torch.optim.Optimizer) -> None:
        """Every occ_update_every steps, refresh the occupancy grid."""
        every = self.config.occ_update_every
        if every > 0 and step % every == 0:
            self.update_occupancy(step)

    @classmethod
    def continued_state(cls, before: RepresentationConfig, after: RepresentationConfig) -> Optional[tuple[str, ...]]:
        """A field whose colour output changes (latent -> RGB) takes over the geometry alone."""
        assert isinstance(before, NeRFConfig) and isinstance(after, NeRFConfig)
        return None if before.latent_channels == after.latent_channels else GEOMETRY_MODULES

    def continue_from(self, previous: Representation) -> None:
        """Start from `previous` (a NeRF): all of it, or its geometry alone when the colour output differs
        (the RGB field distilled at the end of a latent edit keeps the latent field's density)."""
        source = previous.static()
        if not isinstance(source, NeRF) or self.continued_state(source.config, self.config) is None:
            return super().continue_from(previous)
        own = self.state_dict()
        geometry = {k: v for k, v in source.state_dict().items() if k.split(".")[0] in GEOMETRY_MODULES}
        mismatched = [k for k, v in geometry.items() if k not in own or own[k].shape != v.shape]
        if mismatched:
            raise UserError(f"this stage changes the NeRF's shape settings ({mismatched[0]}), so it cannot continue from the "
                            "previous result; keep them equal")
        nn.Module.load_state_dict(self, geometry, strict=False)

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Any:  # type: ignore[override]
        missing = [k for k in self.state_dict() if k not in state]
        if missing:
            raise UserError(f"checkpoint lacks NeRF parameters {missing[:3]}; it was not written by a NeRF run with this configuration")
        return super().load_state_dict(state, strict=strict)


GEOMETRY_MODULES = ("encoding", "trunk", "density_head", "occupancy")
"""The NeRF's modules that hold its shape (an RGB field distilled from a latent one starts with them)."""


class LatentRefiner(nn.Module):
    """ED-NeRF's refinement of a rendered latent map: x + convs([x, alpha]), 3x3 convolutions with SiLU
    between them; the last starts at zero (the identity)."""

    def __init__(self, channels: int, layers: int, width: int, generator: torch.Generator) -> None:
        super().__init__()
        sizes = [channels + 1] + [width] * max(layers - 1, 0) + [channels]
        convs = [nn.Conv2d(a, b, 3, padding=1) for a, b in zip(sizes[:-1], sizes[1:])] if layers > 0 else []
        self.convs = nn.ModuleList(convs)
        with torch.no_grad():
            for i, conv in enumerate(convs):
                last = i == len(convs) - 1
                bound = 0.0 if last else 1.0 / math.sqrt(conv.in_channels * 9)
                conv.weight.copy_((torch.rand(conv.weight.shape, generator=generator) * 2 - 1) * bound)
                assert conv.bias is not None
                conv.bias.zero_()

    def forward(self, latent: Tensor, alpha: Tensor) -> Tensor:
        if not len(self.convs):
            return latent
        h = torch.cat([latent, alpha.to(latent)], dim=1)
        for i, conv in enumerate(self.convs):
            h = conv(h) if i == len(self.convs) - 1 else F.silu(conv(h))
        return latent + h


def _linear(n_in: int, n_out: int, generator: torch.Generator) -> nn.Linear:
    """A linear layer with torch's default init drawn from the run's generator (reproducible)."""
    layer = nn.Linear(n_in, n_out)
    bound = 1.0 / math.sqrt(n_in)
    with torch.no_grad():
        layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
        layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * bound)
    return layer
