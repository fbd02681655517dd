"""3D Gaussians: parameters, initialisation, rendering, densification and pruning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..core.cameras import Cameras
from ..core.errors import UserError
from ..core.geometry import Field
from ..core.schedule import Schedule
from ..core.types import RenderOutput, SplatTensors
from ..render.splats import render_splats
from ..render.splats_torch import quat_to_rotmat
from .adam_state import replace_rows
from .base import REPRESENTATIONS, Representation, RepresentationConfig, z_variance_loss
from .gaussian_field import GaussianField
from .sh import num_sh_bases, rgb_to_sh_dc, sh_to_rgb

PARAM_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")


@dataclass
class GaussiansConfig(RepresentationConfig):
    """3D Gaussian splats (Kerbl et al. 2023) optimised by score distillation."""

    num_points: int = 3000
    """Gaussians at initialisation."""
    init: Literal["ball", "points"] = "ball"
    """ball: normal(0, init_std) means clipped to init_radius; points: positions from init_points."""
    init_std: float = 0.3
    init_radius: float = 0.9
    init_points: Optional[str] = None
    """A .ply point cloud (x,y,z and optional red,green,blue) for init='points'."""
    init_scale: float = 0.04
    init_opacity_logit: float = -1.0
    """Initial opacity logit. toyworld-sd starts fainter (-4, config.py's SITUATIONAL_DEFAULTS): a learned
    prior reads an opaque starting ball as a ball and keeps it."""
    sh_degree: int = 0
    """0..3; toyworld is Lambertian under a fixed light, so 0 suffices there."""
    lr_means: float = 5e-3
    lr_scales: float = 1e-2
    lr_quats: float = 1e-2
    lr_opacity: float = 5e-2
    lr_colors: float = 5e-2
    lr_sh_rest_factor: float = 0.05
    """Learning rate of the higher SH bands relative to lr_colors."""
    densify_from: int = 100
    densify_until: int = 0
    """Last step of densification (0: no densification)."""
    densify_every: int = 50
    densify_grad_threshold: float = 0.002
    """Mean view-space gradient norm (NDC units) above which a Gaussian is cloned or split."""
    percent_dense: float = 0.01
    """Gaussians larger than percent_dense * scene_extent are split, smaller ones cloned."""
    scene_extent: float = 2.0
    prune_opacity: float = 0.005
    prune_scale: float = 0.5
    """Prune Gaussians whose largest scale exceeds this fraction of scene_extent."""
    max_points: int = 20000
    relocate_every: int = 0
    """Every this many steps from relocate_from to relocate_until (0: never), move the Gaussians whose opacity
    fell below relocate_opacity onto live ones drawn by opacity (3DGS-MCMC's relocation; the count is kept).
    On toyworld (SDS) it is on by default: every 25 steps from 250 to 450 (config.py SITUATIONAL_DEFAULTS)."""
    relocate_from: int = 100
    relocate_until: int = 0
    relocate_opacity: float = 0.02
    lambda_z_variance: Schedule = 0.0
    """HiFA's z-variance analogue (hifa preset: 100): variance of camera depth among the Gaussians each pixel
    composites, on pixels with alpha > 0.5 (a number or (step, value) points)."""


def _normal_in_ball(n: int, std: float, radius: float, gen: torch.Generator) -> Tensor:
    pts = torch.randn(n, 3, generator=gen) * std
    norm = pts.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return torch.where(norm > radius, pts / norm * radius, pts)


def load_point_cloud(path: str) -> tuple[Tensor, Optional[Tensor]]:
    """Positions [N,3] and colours [N,3] in [0,1] (or None) from a .ply point cloud."""
    from plyfile import PlyData

    try:
        v = PlyData.read(path)["vertex"]
        xyz = np.stack([v["x"], v["y"], v["z"]], axis=-1).astype(np.float32)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise UserError(f"could not read point cloud '{path}' ({exc}); pass a .ply with x, y, z vertex properties") from None
    names = v.data.dtype.names
    rgb = None
    if all(c in names for c in ("red", "green", "blue")):
        rgb = torch.from_numpy(np.stack([v["red"], v["green"], v["blue"]], axis=-1).astype(np.float32) / 255.0)
    return torch.from_numpy(xyz), rgb


@REPRESENTATIONS.register("gaussians")
class Gaussians(Representation):
    """A set of anisotropic 3D Gaussians with SH colours."""

    Config = GaussiansConfig
    config: GaussiansConfig
    means: nn.Parameter  # [N,3]
    log_scales: nn.Parameter  # [N,3]
    quats: nn.Parameter  # [N,4]
    opacity_logits: nn.Parameter  # [N]
    sh_dc: nn.Parameter  # [N,1,3]
    sh_rest: nn.Parameter  # [N,K-1,3]

    def __init__(self, config: GaussiansConfig, generator: torch.Generator, backend: str = "auto", params: Optional[dict[str, Tensor]] = None) -> None:
        super().__init__()
        self.config = config
        self.generator = generator
        self.backend = backend
        self.sh_degree = config.sh_degree
        self.depth_moments = False
        """The next training render sums weight x z^2 (z-variance loss)."""
        self._set_params(params if params is not None else self._initial_params())
        self.grad_accum: Tensor
        self.grad_count: Tensor
        self._reset_densify_stats()

    # ------------------------------------------------------------------ parameters
    def _initial_params(self) -> dict[str, Tensor]:
        cfg, gen = self.config, self.generator
        rgb = None
        if cfg.init == "points":
            if not cfg.init_points:
                raise UserError("representation.init is 'points' but no --representation.init-points PATH was given")
            means, rgb = load_point_cloud(cfg.init_points)
        elif cfg.init == "ball":
            means = _normal_in_ball(cfg.num_points, cfg.init_std, cfg.init_radius, gen)
        else:
            raise UserError(f"unknown Gaussian init '{cfg.init}'; valid: ball, points")
        n = means.shape[0]
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        sh_dc = torch.zeros(n, 1, 3) if rgb is None else rgb_to_sh_dc(rgb).unsqueeze(1)
        return {
            "means": means,
            "log_scales": torch.full((n, 3), float(np.log(cfg.init_scale))),
            "quats": quats,
            "opacity_logits": torch.full((n,), cfg.init_opacity_logit),
            "sh_dc": sh_dc,
            "sh_rest": torch.zeros(n, num_sh_bases(cfg.sh_degree) - 1, 3),
        }

    def _set_params(self, params: dict[str, Tensor]) -> None:
        for name in PARAM_NAMES:
            setattr(self, name, nn.Parameter(params[name].detach().clone().float()))

    @property
    def num_points(self) -> int:
        return self.means.shape[0]

    def param_groups(self) -> list[dict[str, Any]]:
        """Adam parameter groups with their learning rates."""
        cfg = self.config
        lrs = {
            "means": cfg.lr_means,
            "log_scales": cfg.lr_scales,
            "quats": cfg.lr_quats,
            "opacity_logits": cfg.lr_opacity,
            "sh_dc": cfg.lr_colors,
            "sh_rest": cfg.lr_colors * cfg.lr_sh_rest_factor,
        }
        return [{"params": [getattr(self, n)], "lr": lrs[n], "name": n} for n in PARAM_NAMES]

    @property
    def sh(self) -> Tensor:
        """All SH coefficients [N,K,3]."""
        return torch.cat([self.sh_dc, self.sh_rest], dim=1)

    def as_splats(self, time: float = 0.0) -> SplatTensors:
        """Detached parameters in the 3DGS layout (static: the same at every time)."""
        return SplatTensors(means=self.means.detach(), sh=self.sh.detach(), opacity_logits=self.opacity_logits.detach(),
                            log_scales=self.log_scales.detach(), quats=self.quats.detach())

    def as_field(self, time: float = 0.0) -> Field:
        """The composited opacity field of the Gaussians (representations/gaussian_field.py)."""
        return GaussianField.from_splat_tensors(self.as_splats())

    @classmethod
    def from_splat_tensors(cls, tensors: SplatTensors, config: Optional[GaussiansConfig] = None, backend: str = "auto") -> "Gaussians":
        """Build Gaussians from exported tensors (inverse of `as_splats`)."""
        sh = tensors["sh"]
        degree = int(round(sh.shape[1] ** 0.5)) - 1
        config = config or GaussiansConfig()
        config = GaussiansConfig(**{**config.__dict__, "sh_degree": degree})
        params = {
            "means": tensors["means"],
            "log_scales": tensors["log_scales"],
            "quats": tensors["quats"],
            "opacity_logits": tensors["opacity_logits"],
            "sh_dc": sh[:, :1],
            "sh_rest": sh[:, 1:],
        }
        return cls(config, torch.Generator(), backend=backend, params=params)

    # ------------------------------------------------------------------ rendering
    def colors(self, cams: Cameras) -> Tensor:
        """RGB per Gaussian: [N,3] (degree 0) or per view [B,N,3]."""
        if self.sh_degree == 0:
            return sh_to_rgb(self.sh_dc, None, 0)
        dirs = torch.nn.functional.normalize(self.means[None] - cams.positions[:, None], dim=-1)
        return sh_to_rgb(self.sh, dirs, self.sh_degree)

    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        """Render all cameras of the batch on `background` [3] or [B,3]."""
        return render_splats(
            self.means,
            self.quats,
            self.log_scales.exp(),
            torch.sigmoid(self.opacity_logits),
            self.colors(cams),
            cams,
            background,
            backend=self.backend,
            depth_moments=self.training and torch.is_grad_enabled() and self.depth_moments,
        )

    def before_step(self, step: int, active: frozenset[str]) -> None:
        """Render depth moments when the z-variance loss will be asked for."""
        self.depth_moments = "z_variance" in active

    def losses(self, out: RenderOutput, active: frozenset[str]) -> dict[str, Tensor]:
        """z_variance where asked for."""
        return {"z_variance": z_variance_loss(out)} if "z_variance" in active and "depth_sq" in out.extras else {}

    def render_with(self, cams: Cameras, background: Tensor, means: Optional[Tensor] = None,
                    log_scales: Optional[Tensor] = None, quats: Optional[Tensor] = None) -> RenderOutput:
        """`render` with means [N,3] / log_scales [N,3] / quats [N,4] replaced where given (e.g.
        deformed by a 4D field, representations/deformation.py), or per view ([B,N,...], torch
        backend: every camera at its own time); SH view directions use the given means."""
        means = self.means if means is None else means
        log_scales = self.log_scales if log_scales is None else log_scales
        quats = self.quats if quats is None else quats
        if self.sh_degree == 0:
            colors = sh_to_rgb(self.sh_dc, None, 0)
        else:
            per_view = means if means.dim() == 3 else means[None]
            colors = sh_to_rgb(self.sh, torch.nn.functional.normalize(per_view - cams.positions[:, None], dim=-1), self.sh_degree)
        return render_splats(means, quats, log_scales.exp(), torch.sigmoid(self.opacity_logits), colors, cams, background, backend=self.backend)

    # ------------------------------------------------------------------ densification
    def _reset_densify_stats(self) -> None:
        for name in ("grad_accum", "grad_count"):
            self.register_buffer(name, torch.zeros(self.num_points, device=self.means.device), persistent=False)

    def densify_active(self, step: int) -> bool:
        cfg = self.config
        return cfg.densify_until > 0 and cfg.densify_from <= step <= cfg.densify_until

    @torch.no_grad()
    def accumulate_view_gradients(self, out: RenderOutput) -> None:
        """Add this step's view-space gradient norms (NDC units) of visible Gaussians."""
        means2d = out.extras.get("means2d")
        if means2d is None or means2d.grad is None:
            return
        grad = means2d.grad.clone()  # [B,N,2] in pixels
        H, W = out.rgb.shape[-2:]
        grad[..., 0] *= 0.5 * W
        grad[..., 1] *= 0.5 * H
        visible = (out.extras["radii"] > 0).float()
        self.grad_accum += (grad.norm(dim=-1) * visible).sum(0)
        self.grad_count += visible.sum(0)

    def relocate_due(self, step: int) -> bool:
        cfg = self.config
        return cfg.relocate_every > 0 and cfg.relocate_from <= step <= cfg.relocate_until and step % cfg.relocate_every == 0

    def after_step(self, step: int, out: RenderOutput, optimizer: torch.optim.Optimizer) -> None:
        """Accumulate gradients and, on schedule, densify and prune or relocate (updating the optimiser)."""
        if self.densify_active(step):
            self.accumulate_view_gradients(out)
            if step > self.config.densify_from and step % self.config.densify_every == 0:
                self.densify_and_prune(optimizer)
        if self.relocate_due(step):
            self.relocate_dead(optimizer)

    @torch.no_grad()
    def relocate_dead(self, optimizer: Optional[torch.optim.Optimizer]) -> int:
        """Move Gaussians fainter than relocate_opacity onto live ones drawn with probability proportional to
        their opacity (3DGS-MCMC). A target and its copy share its opacity so that together they are as opaque
        as it was, 1 - (1 - o)^(1/2) each, and the copy sits at an offset drawn from its shape. At most one copy
        per live Gaussian an event (the faintest move first): many copies of one would each be so faint that the
        next event moves them again. Returns how many moved."""
        n = self.num_points
        opacity = torch.sigmoid(self.opacity_logits.detach())
        faint = opacity < self.config.relocate_opacity
        alive = (~faint).nonzero().squeeze(1)
        dead = faint.nonzero().squeeze(1)
        dead = dead[opacity[dead].argsort()[: alive.numel()]]
        if dead.numel() == 0:
            return 0
        pick = torch.multinomial(opacity[alive].cpu(), dead.numel(), replacement=False, generator=self.generator)
        targets = alive[pick.to(alive.device)]
        source = torch.arange(n, device=opacity.device)
        source[dead] = targets
        fresh = torch.zeros(n, dtype=torch.bool, device=opacity.device)
        fresh[dead] = True
        copies = torch.bincount(targets, minlength=n).to(opacity.dtype)
        shared = (1 - (1 - opacity).pow(1 / (copies + 1))).clamp(1e-4, 1 - 1e-4)
        params = {name: getattr(self, name).detach()[source].clone() for name in PARAM_NAMES}
        params["opacity_logits"] = torch.logit(shared[source])
        params["means"][dead] += self._offsets_within(targets)
        self._replace_rows(params, source, fresh, optimizer)
        return int(dead.numel())

    @torch.no_grad()
    def densify_and_prune(self, optimizer: Optional[torch.optim.Optimizer]) -> dict[str, int]:
        """Clone small / split large high-gradient Gaussians; prune transparent or huge ones."""
        cfg = self.config
        n = self.num_points
        avg = self.grad_accum / self.grad_count.clamp_min(1.0)
        max_scale = self.log_scales.exp().max(dim=-1).values
        big = max_scale > cfg.percent_dense * cfg.scene_extent
        room = max(cfg.max_points - n, 0)
        candidates = (avg >= cfg.densify_grad_threshold).nonzero().squeeze(1)
        if candidates.numel() > room:  # keep the strongest within the point budget
            candidates = candidates[avg[candidates].argsort(descending=True)[:room]]
        grow = torch.zeros(n, dtype=torch.bool, device=self.means.device)
        grow[candidates] = True
        clone, split = grow & ~big, grow & big

        keep = ~split
        keep &= torch.sigmoid(self.opacity_logits) >= cfg.prune_opacity
        keep &= max_scale <= cfg.prune_scale * cfg.scene_extent
        keep |= clone  # a Gaussian being cloned is kept once as itself
        base = keep.nonzero().squeeze(1)
        cloned = clone.nonzero().squeeze(1)
        split_idx = split.nonzero().squeeze(1)
        source = torch.cat([base, cloned, split_idx, split_idx])
        fresh = torch.zeros(source.shape[0], dtype=torch.bool, device=source.device)
        fresh[base.numel() :] = True

        params = {name: getattr(self, name).detach()[source].clone() for name in PARAM_NAMES}
        if split_idx.numel():
            rows = slice(base.numel() + cloned.numel(), None)
            params["means"][rows] += self._offsets_within(split_idx.repeat(2))
            params["log_scales"][rows] = torch.log(self.log_scales.detach()[split_idx].exp() / 1.6).repeat(2, 1)

        self._replace_rows(params, source, fresh, optimizer)
        return {"cloned": int(cloned.numel()), "split": int(split_idx.numel()), "pruned": int(n - split_idx.numel() - base.numel())}

    def _offsets_within(self, index: Tensor) -> Tensor:
        """One offset [len(index),3] per row drawn from the Gaussian it names: N(0, its scales) in its frame."""
        scales = self.log_scales.detach()[index].exp()
        offsets = torch.randn(index.numel(), 3, generator=self.generator).to(scales.device) * scales
        return torch.einsum("nij,nj->ni", quat_to_rotmat(self.quats.detach()[index]), offsets)

    def _replace_rows(self, params: dict[str, Tensor], source: Tensor, fresh: Tensor, optimizer: Optional[torch.optim.Optimizer]) -> None:
        """Swap in new parameter rows (row i made from old row source[i]); Adam's moments follow, zero where fresh."""
        old = {name: getattr(self, name) for name in PARAM_NAMES}
        self._set_params(params)
        if optimizer is not None:
            for name in PARAM_NAMES:
                replace_rows(optimizer, old[name], getattr(self, name), source, fresh)
        self._reset_densify_stats()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        state = {name: getattr(self, name).detach().clone() for name in PARAM_NAMES}
        state["grad_accum"] = self.grad_accum.clone()
        state["grad_count"] = self.grad_count.clone()
        return state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:  # type: ignore[override]
        """Load parameters of any point count (the module is resized to match)."""
        missing = [n for n in PARAM_NAMES if n not in state]
        if missing:
            raise UserError(f"checkpoint lacks Gaussian parameters {missing}; it was not written by a Gaussian run")
        self._set_params({n: state[n] for n in PARAM_NAMES})
        self._reset_densify_stats()
        if "grad_accum" in state:
            self.grad_accum.copy_(state["grad_accum"])
            self.grad_count.copy_(state["grad_count"])

