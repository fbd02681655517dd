"""The representation contract: what every `--representation NAME` provides.

A representation is an `nn.Module` that renders cameras, hands the optimiser its parameter
groups, names its regularisers, and says which exports it supports (docs/architecture.md):

- `render(cams, background) -> RenderOutput` and `param_groups()` (Adam groups with `lr`).
- `losses(out, active) -> {name: unweighted term}` for the term names in `active`. Each term
  `name` is weighted by the schedule `lambda_<name>` of its config (`loss_weights()`); the
  loop evaluates the weights, asks only for the terms whose weight is not zero, sums them and
  logs each one as `loss_<name>`.
- Step callbacks: `before_step(step, active)` before the render (e.g. a NeRF keeps its samples
  for the orientation loss), `after_step(step, out, optimizer)` after the optimiser step
  (densification, occupancy updates).
- Capabilities, None when absent: `as_splats(time)` (3D Gaussians in the 3DGS layout),
  `as_field(time)` (a density/albedo field that meshes are extracted from), `as_mesh()` (an
  explicit mesh that exports itself) and `texture_colour()` (colours for its baked texture).
- Structure: `members()` lists independent models (particles), `static()` is the undeformed
  asset of a 4D one, `is_dynamic` says whether it renders cameras at their times.

Built as `cls(config, generator, backend=...)`; `state_dict`/`load_state_dict` hold tensors
only (checkpoints are data, engine/checkpoint.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn

from ..core.cameras import Cameras
from ..core.geometry import Field, SurfaceMesh, TextureColour
from ..core.registry import Registry
from ..core.schedule import Schedule, check_lambda_schedules, evaluate_schedule, lambda_weights
from ..core.types import RenderOutput, SplatTensors


@dataclass
class RepresentationConfig:
    """Base of every representation's settings; `lambda_<name>` fields weight its loss terms."""

    lr_final_factor: float = 0.1
    """Every learning rate decays exponentially to this fraction of itself by the last step."""

    def check(self) -> None:
        """Raise a UserError for a setting that cannot work (called when the run plan is validated)."""
        check_lambda_schedules(self, "representation")


class Representation(nn.Module):
    """Base class of every 3D (or 4D) representation (see the module docstring)."""

    Config: ClassVar[type[RepresentationConfig]]
    config: RepresentationConfig
    fixed_state_shapes: ClassVar[bool] = False
    """Its tensors' shapes follow from its config, so a checkpoint loads only into the same shape
    settings (a NeRF's grids); False: `load_state_dict` resizes it (Gaussians, meshes)."""

    @classmethod
    def build(cls, config: RepresentationConfig, generator: torch.Generator, backend: str = "auto") -> "Representation":
        """A new, initialised instance (how registered representations are made: `cls(config, generator, backend=...)`)."""
        return cls(config, generator, backend=backend)  # type: ignore[call-arg]

    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        """Render the cameras on `background` [3] or [B,3]."""
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        """Adam parameter groups: {"params": [...], "lr": float, "name": str}."""
        raise NotImplementedError

    @property
    def num_points(self) -> int:
        """Its size as logged in metrics.jsonl (Gaussians, occupied cells, vertices)."""
        return 0

    # ------------------------------------------------------------------ losses and callbacks
    def loss_weights(self) -> dict[str, Schedule]:
        """Term name -> weight schedule: the `lambda_<name>` fields of its config."""
        return lambda_weights(self.config)

    def losses(self, out: RenderOutput, active: frozenset[str]) -> dict[str, Tensor]:
        """The unweighted loss terms named in `active` (none by default)."""
        return {}

    def before_step(self, step: int, active: frozenset[str]) -> None:
        """Before the step's render; `active` are the loss terms the step will ask for."""

    def after_step(self, step: int, out: RenderOutput, optimizer: torch.optim.Optimizer) -> None:
        """After the optimiser step."""

    # ------------------------------------------------------------------ structure
    def members(self) -> list["Representation"]:
        """The independent models it holds: itself, or its particles."""
        return [self]

    def static(self) -> "Representation":
        """The undeformed asset (itself unless it is a 4D asset)."""
        return self

    @property
    def is_dynamic(self) -> bool:
        """It renders each camera at its time (a 4D asset)."""
        return False

    # ------------------------------------------------------------------ capabilities
    @classmethod
    def continued_state(cls, before: RepresentationConfig, after: RepresentationConfig) -> Optional[tuple[str, ...]]:
        """The top-level modules a stage configured `after` takes over from a stage configured `before`
        (`continue_from`); None: all of its state."""
        return None

    def continue_from(self, previous: "Representation") -> None:
        """Start from `previous`, a result of the same representation (convert.py): its state, loaded as is."""
        self.load_state_dict(previous.static().state_dict())

    def as_splats(self, time: float = 0.0) -> Optional[SplatTensors]:
        """Its 3D Gaussians at `time` in the 3DGS layout (None: it has none)."""
        return None

    def as_field(self, time: float = 0.0) -> Optional[Field]:
        """A density/albedo field at `time` to extract meshes from (None: it has none)."""
        return None

    def as_mesh(self) -> Optional[SurfaceMesh]:
        """Its own triangle mesh with vertex colours (None: meshes are extracted from `as_field`)."""
        return None

    def texture_colour(self) -> Optional[TextureColour]:
        """Colours for its baked texture when they are not its field's albedo (an explicit mesh)."""
        return None

    def pbr_material(self) -> Optional[TextureColour]:
        """[albedo rgb, roughness, metallic] per surface point for a PBR export (None: no PBR material)."""
        return None

    def material_maps(self, cams: Cameras) -> Optional[tuple[Tensor, Tensor]]:
        """Unshaded [albedo rgb, roughness, metallic] [B,5,H,W] and alpha [B,1,H,W] (None: no PBR material)."""
        return None


REPRESENTATIONS: Registry[Representation] = Registry("representation")
"""Every representation `--representation NAME` can choose."""


def z_variance_loss(out: RenderOutput, min_alpha: float = 0.5) -> Tensor:
    """HiFA's z-variance regulariser: the mean, over pixels whose alpha exceeds `min_alpha`, of the variance of
    camera depth among what each pixel composites, E[z^2] - E[z]^2 with E = sum of weights / alpha (out.depth and
    extras "depth_sq" are weighted sums). NeRF: along the ray; Gaussians: among the Gaussians it blends. 0 when no
    pixel is that opaque."""
    alpha = out.alpha
    mask = alpha > min_alpha
    if not bool(mask.any()):
        return alpha.sum() * 0.0
    a = alpha[mask]
    mean = out.depth[mask] / a
    return (out.extras["depth_sq"][mask] / a - mean * mean).clamp_min(0.0).mean()


def active_loss_weights(representation: Representation, step: int, total_steps: int) -> dict[str, float]:
    """The representation's loss terms whose weight is not zero at `step` of a `total_steps` stage, with their weights."""
    weights = {name: evaluate_schedule(value, step, total_steps) for name, value in representation.loss_weights().items()}
    return {name: w for name, w in weights.items() if w != 0.0}


def weighted_losses(representation: Representation, out: RenderOutput, weights: dict[str, float]) -> tuple[Tensor, dict[str, float]]:
    """sum_i weight_i * term_i over the terms named in `weights`, and each unweighted term as `loss_<name>`."""
    total = out.rgb.new_zeros(())
    logs: dict[str, float] = {}
    for name, term in representation.losses(out, frozenset(weights)).items():
        total = total + weights[name] * term
        logs[f"loss_{name}"] = float(term.detach())
    return total, logs


def regularisation(representation: Representation, out: RenderOutput, step: int, total_steps: int = 1) -> Tensor:
    """The weighted sum of a representation's loss terms at `step` (what the loop adds to the objective's loss)."""
    return weighted_losses(representation, out, active_loss_weights(representation, step, total_steps))[0]
