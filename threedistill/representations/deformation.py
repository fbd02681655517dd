"""4D: a HexPlane / K-planes deformation field over (x, y, z, t) wrapping Gaussians or a NeRF.

The field (K-planes, Fridovich-Keil et al. 2023; HexPlane, Cao & Johnson 2023; as used by
4D-GS, Wu et al. 2024, and DreamGaussian4D): six feature planes, three spatial (xy, xz, yz)
and three space-time (xt, yt, zt), sampled bilinearly (`grid_sample`, align_corners=True) at
a point's coordinates, fused by an elementwise product, one scale after another (spatial
resolution x `multires`, concatenated). An MLP trunk reads the features; one head per output
predicts offsets of position [3], log-scale [3] and quaternion [4]. The last layer of every
head is zero-initialised, so at initialisation every offset is exactly 0 and a dynamic run
starts from the static asset (renders are bit-identical to the base's at every time).
Spatial planes start uniform in [0.1, 0.5] (K-planes), space-time planes at 1 ("no change
over time", which the L1 time-plane regulariser pulls them back to).

`Deformed` wraps a base representation:

- Gaussians: at time t every Gaussian is moved by the field at its centre (4D-GS):
  means + d_position, log_scales + d_log_scale, quats + d_quat (an additive quaternion offset,
  as in 4D-GS; the renderer normalises quaternions, so a zero offset is the identity exactly).
- NeRF: sample point x at time t is looked up in the static (canonical) field at
  x + d_position(x, t) (a backward warp, D-NeRF style), through `NeRF.point_warp`. The
  occupancy grid lives in observation space: it is refreshed from the maximum density over
  `occupancy_times` evenly spaced times (its dilation covers the times in between).

A batch is rendered one time value at a time (cameras without a time are at t = 0) and the
outputs are put back in camera order. Densification of Gaussians keeps working: the deformation
is a function of position, not per Gaussian, so nothing needs remapping, and the view-space
gradients of the time groups are gathered into one [B,N,2] set for `Gaussians.after_step`.
NeRF's orientation loss is not applied to deformed renders (its normals would be the static
field's); its sparsity / opacity terms are.

Regularisers (K-planes): total variation of every plane, smoothness in time (squared second
difference along t of the space-time planes), and L1 of (space-time planes - 1). Their default
weights are 4D-GS's times 1000, because a score-distillation loss is a sum over pixels, about
10^3 times larger than the photometric mean squared error those were set for (not tuned).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.cameras import Cameras
from ..core.errors import UserError
from ..core.geometry import Field
from ..core.schedule import Schedule, check_lambda_schedules, lambda_weights
from ..core.types import RenderOutput, SplatTensors
from ..render.splats import resolve_splat_backend
from .base import Representation
from .gaussian_field import GaussianField
from .gaussians import Gaussians
from .nerf import NeRF, _linear

SPATIAL = ((0, 1), (0, 2), (1, 2))  # xy, xz, yz
TEMPORAL = ((0, 3), (1, 3), (2, 3))  # xt, yt, zt (coordinate 3 is time)


@dataclass
class DeformationConfig:
    """A HexPlane / K-planes deformation field for 4D (text-to-4D) runs."""

    resolution: int = 32
    """Spatial cells per side of the coarsest planes."""
    time_resolution: int = 25
    """Rows along t of the space-time planes (t in [0, 1])."""
    features: int = 16
    """Features per plane (fused by product across the six planes)."""
    multires: tuple[int, ...] = (1, 2)
    """Spatial resolution multipliers; each scale has its own six planes, features concatenated."""
    bound: float = 1.0
    """The field covers [-bound, bound]^3; points outside read the border."""
    hidden_dim: int = 64
    """Width of the MLP trunk and of each head's hidden layer."""
    deform_scale: bool = True
    """Predict log-scale offsets for Gaussians."""
    deform_rotation: bool = True
    """Predict quaternion offsets for Gaussians."""
    train_base: bool = True
    """Optimise the base representation too (False: only the deformation; no densification)."""
    lr: float = 6.4e-3
    """Adam learning rate of the planes (DreamGaussian4D's grid rate)."""
    lr_network: float = 6.4e-4
    """Adam learning rate of the MLP (DreamGaussian4D's deformation rate)."""
    lambda_plane_tv: Schedule = 0.1
    """Total variation of all planes (a number or (step, value) points; fractional steps need `total_steps`)."""
    lambda_time_smooth: Schedule = 10.0
    """Squared second difference along t of the space-time planes."""
    lambda_time_l1: Schedule = 0.1
    """L1 distance of the space-time planes from 1 (no motion)."""
    occupancy_times: int = 5
    """NeRF: times at which the density is evaluated to refresh the occupancy grid."""

    def check(self) -> None:
        check_lambda_schedules(self, "deformation")
        if self.time_resolution < 3 or self.resolution < 2:
            raise UserError("deformation planes need time_resolution >= 3 and resolution >= 2; raise them")


def plane_tv(plane: Tensor) -> Tensor:
    """K-planes total variation of a plane [1,F,H,W]: 2 (mean squared step along H + along W)."""
    return 2.0 * ((plane[..., 1:, :] - plane[..., :-1, :]).square().mean() + (plane[..., 1:] - plane[..., :-1]).square().mean())


def time_smoothness(plane: Tensor) -> Tensor:
    """Mean squared second difference along t (dimension 2) of a space-time plane [1,F,T,R]."""
    return (plane[..., 2:, :] - 2.0 * plane[..., 1:-1, :] + plane[..., :-2, :]).square().mean()


class HexPlaneField(nn.Module):
    """(points [M,3], time) -> offsets of position [M,3], log-scale [M,3] and quaternion [M,4]
    (the last two where the config enables them and not `position_only`, e.g. for a NeRF)."""

    def __init__(self, config: DeformationConfig, generator: torch.Generator, position_only: bool = False) -> None:
        super().__init__()
        cfg = self.config = config
        F_, T = cfg.features, cfg.time_resolution
        self.scales = nn.ModuleList()
        for m in cfg.multires:
            R = cfg.resolution * m
            planes = [nn.Parameter(torch.rand(1, F_, R, R, generator=generator) * 0.4 + 0.1) for _ in SPATIAL]
            planes += [nn.Parameter(torch.ones(1, F_, T, R)) for _ in TEMPORAL]
            self.scales.append(nn.ParameterList(planes))
        W = cfg.hidden_dim
        self.trunk = nn.Sequential(_linear(F_ * len(cfg.multires), W, generator), nn.ReLU())
        outputs = {"position": 3, "log_scale": 3 * (cfg.deform_scale and not position_only), "quat": 4 * (cfg.deform_rotation and not position_only)}
        self.heads = nn.ModuleDict({k: self._head(n, generator) for k, n in outputs.items() if n})

    def _head(self, n_out: int, generator: torch.Generator) -> nn.Sequential:
        last = _linear(self.config.hidden_dim, n_out, generator)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return nn.Sequential(_linear(self.config.hidden_dim, self.config.hidden_dim, generator), nn.ReLU(), last)

    def plane_sets(self) -> list[list[Tensor]]:
        """Each scale's six planes, spatial then space-time (SPATIAL + TEMPORAL order)."""
        return [list(planes.parameters()) for planes in self.scales]

    def spatial_planes(self) -> list[Tensor]:
        return [p for planes in self.plane_sets() for p in planes[: len(SPATIAL)]]

    def time_planes(self) -> list[Tensor]:
        return [p for planes in self.plane_sets() for p in planes[len(SPATIAL):]]

    def features(self, points: Tensor, time: float | Tensor) -> Tensor:
        """Product-fused plane features [M, F x len(multires)] at points [M,3] and time (scalar or [M])."""
        M = points.shape[0]
        x = (points / self.config.bound).clamp(-1.0, 1.0)
        t = torch.as_tensor(time, dtype=x.dtype, device=x.device).expand(M)
        coords = torch.cat([x, (2.0 * t - 1.0).clamp(-1.0, 1.0)[:, None]], dim=-1)
        feats = []
        for planes in self.plane_sets():
            fused: Optional[Tensor] = None
            for plane, (a, b) in zip(planes, SPATIAL + TEMPORAL):
                grid = coords[:, [a, b]].view(1, M, 1, 2)
                f = F.grid_sample(plane, grid, mode="bilinear", align_corners=True).view(-1, M).t()
                fused = f if fused is None else fused * f
            assert fused is not None
            feats.append(fused)
        return torch.cat(feats, dim=-1)

    def forward(self, points: Tensor, time: float | Tensor) -> dict[str, Tensor]:
        """Offsets at points [M,3] and time: "position" [M,3] and, where enabled, "log_scale" [M,3], "quat" [M,4]."""
        h = self.trunk(self.features(points, time))
        return {k: head(h) for k, head in self.heads.items()}

    def losses(self) -> dict[str, Tensor]:
        """The unweighted regularisers: plane_tv (all planes), time_smooth, time_l1 (space-time planes)."""
        planes, tplanes = self.spatial_planes() + self.time_planes(), self.time_planes()
        return {
            "plane_tv": torch.stack([plane_tv(p) for p in planes]).sum(),
            "time_smooth": torch.stack([time_smoothness(p) for p in tplanes]).sum(),
            "time_l1": torch.stack([(p - 1.0).abs().mean() for p in tplanes]).sum(),
        }


class NeRFFrame:
    """A deformed NeRF frozen at one time, with what mesh extraction reads (export/extract.py):
    density/albedo(x) = the static field's at x + d_position(x, t), and render_alpha(cams)."""

    surface_level: Optional[float] = None

    def __init__(self, deformed: "Deformed", time: float) -> None:
        self.deformed, self.time = deformed, float(time)

    def density(self, points: Tensor) -> Tensor:
        return self.deformed.nerf().density(self.deformed.warp(points, self.time))

    def albedo(self, points: Tensor) -> Tensor:
        return self.deformed.nerf().albedo(self.deformed.warp(points, self.time))

    def render_alpha(self, cams: Cameras) -> Tensor:
        cams = cams.to(self.deformed.nerf().device)
        cams = replace(cams, time=torch.full((len(cams),), self.time, device=cams.device))
        return self.deformed.render(cams, torch.ones(3, device=cams.device)).alpha


DEFORMABLE = (Gaussians, NeRF)
"""The representations a deformation can wrap."""


class Deformed(Representation):
    """A base representation (Gaussians or NeRF) deformed over time by a `HexPlaneField`.

    `config` is the base's (its learning rates, its loss weights); `deformation` the field's."""

    base: Gaussians | NeRF

    def __init__(self, base: Representation, config: DeformationConfig, generator: torch.Generator) -> None:
        super().__init__()
        if not isinstance(base, DEFORMABLE):
            raise UserError(f"a 4D deformation wraps gaussians or nerf, not {type(base).__name__}; use --representation gaussians or nerf")
        config.check()
        self.deformation, self.base = config, base
        self.config = base.config
        self.field = HexPlaneField(config, generator, position_only=isinstance(base, NeRF))
        self._freeze_base()

    def _freeze_base(self) -> None:
        if not self.deformation.train_base:
            for p in self.base.parameters():
                p.requires_grad_(False)

    def static(self) -> Representation:
        """The undeformed base representation."""
        return self.base

    @property
    def is_dynamic(self) -> bool:
        return True

    def nerf(self) -> NeRF:
        """The base NeRF (for the parts of a deformed NeRF that only a NeRF has)."""
        if not isinstance(self.base, NeRF):
            raise TypeError(f"the deformed {type(self.base).__name__} is not a NeRF")
        return self.base

    @property
    def num_points(self) -> int:
        return int(self.base.num_points)

    # ------------------------------------------------------------------ deformation
    def warp(self, points: Tensor, time: float) -> Tensor:
        """points [M,3] + d_position(points, time)."""
        return points + self.field(points, time)["position"]

    def gaussian_params_at(self, time: float) -> dict[str, Tensor]:
        """Deformed means / log_scales / quats (only those the field moves) at `time`."""
        return {k: v[0] for k, v in self.gaussian_params_at_times(torch.tensor([float(time)])).items()}

    def gaussian_params_at_times(self, times: Tensor) -> dict[str, Tensor]:
        """Deformed means / log_scales / quats [T,N,...] at each of `times` [T], in one field pass."""
        base = self.base
        assert isinstance(base, Gaussians)
        T, N = times.numel(), base.num_points
        points = base.means.repeat(T, 1)
        d = {k: v.view(T, N, -1) for k, v in self.field(points, times.to(points).repeat_interleave(N)).items()}
        params = {"means": base.means + d["position"]}
        if "log_scale" in d:
            params["log_scales"] = base.log_scales + d["log_scale"]
        if "quat" in d:
            params["quats"] = base.quats + d["quat"]  # additive offset (4D-GS); the renderer normalises
        return params

    @torch.no_grad()
    def as_splats(self, time: float = 0.0) -> Optional[SplatTensors]:
        """Deformed Gaussians in the 3DGS layout at `time` (quats normalised); None for a NeRF."""
        if not isinstance(self.base, Gaussians):
            return None
        tensors = self.base.as_splats()
        moved = self.gaussian_params_at(time)
        tensors["means"] = moved["means"].detach()
        tensors["log_scales"] = moved.get("log_scales", tensors["log_scales"]).detach()
        tensors["quats"] = F.normalize(moved.get("quats", tensors["quats"]).detach(), dim=-1)
        return tensors

    def as_field(self, time: float = 0.0) -> Field:
        """The asset at `time` as a density/albedo field (meshes of each frame)."""
        splats = self.as_splats(time)
        if splats is not None:
            return GaussianField.from_splat_tensors(splats)
        return NeRFFrame(self, time)

    # ------------------------------------------------------------------ rendering
    def _render_at(self, time: float, cams: Cameras, background: Tensor) -> RenderOutput:
        base = self.base
        if isinstance(base, Gaussians):
            return base.render_with(cams, background, **self.gaussian_params_at(time))
        base.point_warp = lambda x: self.warp(x, time)
        try:
            out = base.render(cams, background)
        finally:
            base.point_warp = None
        for key in ("sample_points", "sample_weights", "sample_dirs"):  # no orientation loss on a warped field
            out.extras.pop(key, None)
        return out

    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        """Render each camera at its time (none: t = 0) on `background` [3] or [B,3], in camera order.

        Gaussians on the torch backend render all times in one pass (per-view parameters);
        otherwise one render per distinct time. extras: those of the base render when there is
        one pass; else "backend", "samples" (NeRF); always "time_groups": [(camera indices,
        RenderOutput)] (densification statistics).
        """
        B = len(cams)
        times = cams.time if cams.time is not None else torch.zeros(B, device=cams.device)
        values, inverse = torch.unique(times.detach(), return_inverse=True)
        base = self.base
        if isinstance(base, Gaussians) and len(values) > 1 and resolve_splat_backend(base.backend, base.means.device) == "torch":
            # every camera at its own time in one render: the field runs once over all times
            moved = {k: v[inverse] for k, v in self.gaussian_params_at_times(values).items()}  # [B,N,...]
            out = base.render_with(cams, background, **moved)
            return RenderOutput(out.rgb, out.alpha, out.depth, {**out.extras, "time_groups": [(torch.arange(B, device=cams.device), out)]})
        groups: list[tuple[Tensor, RenderOutput]] = []
        for i, t in enumerate(values.tolist()):
            idx = (inverse == i).nonzero().squeeze(1)
            bg = background[idx] if background.dim() == 2 else background
            groups.append((idx, self._render_at(t, cams if len(values) == 1 else cams[idx], bg)))
        if len(groups) == 1:
            out = groups[0][1]
            return RenderOutput(out.rgb, out.alpha, out.depth, {**out.extras, "time_groups": groups})
        order = torch.cat([idx for idx, _ in groups]).argsort()
        outs = [o for _, o in groups]
        extras: dict[str, Any] = {"time_groups": groups, "backend": outs[0].extras.get("backend")}
        if "samples" in outs[0].extras:
            extras["samples"] = sum(int(o.extras["samples"]) for o in outs)
        return RenderOutput(
            rgb=torch.cat([o.rgb for o in outs])[order],
            alpha=torch.cat([o.alpha for o in outs])[order],
            depth=torch.cat([o.depth for o in outs])[order],
            extras=extras,
        )

    # ------------------------------------------------------------------ training
    def param_groups(self) -> list[dict[str, Any]]:
        """The base's groups (when train_base) + the planes (lr) and the MLP (lr_network)."""
        cfg = self.deformation
        groups = self.base.param_groups() if cfg.train_base else []
        return groups + [
            {"params": list(self.field.scales.parameters()), "lr": cfg.lr, "name": "deformation_planes"},
            {"params": list(self.field.trunk.parameters()) + list(self.field.heads.parameters()), "lr": cfg.lr_network, "name": "deformation_network"},
        ]

    def loss_weights(self) -> dict[str, Schedule]:
        """The base's terms and the field's plane_tv, time_smooth and time_l1."""
        return {**self.base.loss_weights(), **lambda_weights(self.deformation)}

    def losses(self, out: RenderOutput, active: frozenset[str]) -> dict[str, Tensor]:
        """The base's terms (NeRF: not orient, see the module docstring) and the field's regularisers."""
        own = {"plane_tv", "time_smooth", "time_l1"}
        terms = self.base.losses(out, active - own)
        if active & own:
            field_terms = self.field.losses()
            terms.update({name: field_terms[name] for name in active & own})
        return terms

    def before_step(self, step: int, active: frozenset[str]) -> None:
        self.base.before_step(step, active)

    def after_step(self, step: int, out: RenderOutput, optimizer: torch.optim.Optimizer) -> None:
        """NeRF: refresh the occupancy grid over time. Gaussians (train_base): densify/prune with
        the view-space gradients of every time group."""
        base = self.base
        if isinstance(base, NeRF):
            every = base.config.occ_update_every
            if every > 0 and step % every == 0:
                self.update_occupancy(step)
        elif self.deformation.train_base and base.densify_active(step):
            base.after_step(step, self._merged_view_gradients(out), optimizer)

    @torch.no_grad()
    def _merged_view_gradients(self, out: RenderOutput) -> RenderOutput:
        """One RenderOutput whose extras hold means2d [B,N,2] (with .grad) and radii [B,N] of all groups."""
        groups = out.extras["time_groups"]
        if len(groups) == 1:
            return groups[0][1]
        B, N = out.rgb.shape[0], self.base.num_points
        grad = out.rgb.new_zeros(B, N, 2)
        radii = None
        for idx, g in groups:
            m2d, r = g.extras.get("means2d"), g.extras.get("radii")
            if m2d is None or m2d.grad is None or r is None:
                continue
            grad[idx] = m2d.grad
            radii = r.new_zeros((B, N)) if radii is None else radii
            radii[idx] = r
        if radii is None:
            return RenderOutput(out.rgb, out.alpha, out.depth, {})
        means2d = torch.zeros_like(grad)
        means2d.grad = grad
        return RenderOutput(out.rgb, out.alpha, out.depth, {"means2d": means2d, "radii": radii})

    @torch.no_grad()
    def update_occupancy(self, step: int) -> None:
        """Refresh the NeRF's occupancy grid from the maximum warped density over `occupancy_times` times."""
        base, n = self.nerf(), max(int(self.deformation.occupancy_times), 1)
        times = torch.linspace(0.0, 1.0, n).tolist() if n > 1 else [0.0]

        def density(points: Tensor) -> Tensor:
            return torch.stack([base.density(self.warp(points, t)) for t in times]).amax(dim=0)

        cfg = base.config
        fraction = 1.0 if step < cfg.occ_warmup_steps else 0.25
        base.occupancy.update(density, 2.0 * cfg.bound / cfg.samples_per_ray, base.generator, fraction)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The base's state under "base." and the field's under "deformation."."""
        state = {f"base.{k}": v for k, v in self.base.state_dict().items()}
        state.update({f"deformation.{k}": v.detach().clone() for k, v in self.field.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:  # type: ignore[override]
        if not any(k.startswith("deformation.") for k in state):
            raise UserError("checkpoint lacks a deformation field; it was not written by a 4D run")
        self.base.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("base.")})
        self.field.load_state_dict({k[12:]: v for k, v in state.items() if k.startswith("deformation.")}, strict=strict)
        self._freeze_base()
