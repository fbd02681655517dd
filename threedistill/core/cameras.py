"""Camera batches, the random orbit sampler and view-direction labels.

Conventions (DESIGN.md section 3/4): world is right-handed with z up; `c2w` uses OpenCV
camera axes (x right, y down, z forward); angles in degrees except `fov_y` (radians).
Azimuth 0 looks at the object's front (camera on +x), azimuth grows counter-clockwise
seen from above.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Protocol, Sequence

import torch
from torch import Tensor


_PER_CAMERA_FIELDS = ("c2w", "fov_y", "elevation", "azimuth", "distance", "time", "view")


@dataclass
class Cameras:
    """A batch of B pinhole cameras sharing one image size."""

    c2w: Tensor  # [B,4,4], OpenCV axes
    fov_y: Tensor  # [B], radians
    width: int
    height: int
    elevation: Tensor  # [B], degrees
    azimuth: Tensor  # [B], degrees
    distance: Tensor  # [B]
    time: Optional[Tensor] = None  # [B] in [0,1] for 4D
    view: Optional[Tensor] = None  # [B] long: index into a fixed view set (a scene's cameras)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def _map(self, fn: "Callable[[Tensor], Tensor]") -> "Cameras":
        """Apply `fn` to every per-camera tensor."""
        values = {name: getattr(self, name) for name in _PER_CAMERA_FIELDS}
        mapped: dict[str, Any] = {name: None if v is None else fn(v) for name, v in values.items()}
        return replace(self, **mapped)

    def to(self, device: torch.device | str) -> "Cameras":
        """The same cameras on another device."""
        return self._map(lambda t: t.to(device))

    def __getitem__(self, index: slice | Tensor | Sequence[int] | int) -> "Cameras":
        """A sub-batch (an int index keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self._map(lambda t: t[index])

    def with_size(self, width: int, height: int) -> "Cameras":
        """The same cameras rendering at another resolution (same field of view)."""
        return replace(self, width=width, height=height)

    @property
    def focal(self) -> Tensor:
        """Focal length in pixels [B] (square pixels)."""
        return 0.5 * self.height / torch.tan(0.5 * self.fov_y)

    def intrinsics(self) -> Tensor:
        """Pinhole intrinsics K [B,3,3] with the principal point at the image centre."""
        B = len(self)
        K = torch.zeros(B, 3, 3, device=self.device, dtype=self.c2w.dtype)
        f = self.focal.to(self.c2w.dtype)
        K[:, 0, 0] = f
        K[:, 1, 1] = f
        K[:, 0, 2] = 0.5 * self.width
        K[:, 1, 2] = 0.5 * self.height
        K[:, 2, 2] = 1.0
        return K

    def viewmats(self) -> Tensor:
        """World-to-camera matrices [B,4,4] (OpenCV axes)."""
        return torch.linalg.inv(self.c2w)

    @property
    def positions(self) -> Tensor:
        """Camera centres in world space [B,3]."""
        return self.c2w[:, :3, 3]

    def directions(self) -> Tensor:
        """Unit vectors from the origin toward each camera [B,3]."""
        return torch.nn.functional.normalize(self.positions, dim=-1)


def look_at_c2w(positions: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """OpenCV-axes camera-to-world matrices [B,4,4] looking from `positions` [B,3] at `target`."""
    if target is None:
        target = torch.zeros_like(positions)
    forward = torch.nn.functional.normalize(target - positions, dim=-1)
    up = torch.tensor([0.0, 0.0, 1.0], device=positions.device, dtype=positions.dtype).expand_as(forward)
    right = torch.cross(forward, up, dim=-1)
    # Straight above or below: any horizontal right vector will do.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    fallback = torch.tensor([0.0, 1.0, 0.0], device=positions.device, dtype=positions.dtype).expand_as(right)
    right = torch.nn.functional.normalize(torch.where(degenerate, fallback, right), dim=-1)
    down = torch.cross(forward, right, dim=-1)
    c2w = torch.eye(4, device=positions.device, dtype=positions.dtype).repeat(positions.shape[0], 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = down
    c2w[:, :3, 2] = forward
    c2w[:, :3, 3] = positions
    return c2w


def orbit_cameras(
    elevation: Tensor,
    azimuth: Tensor,
    distance: Tensor,
    fov_y_deg: Tensor,
    width: int,
    height: int,
    time: Optional[Tensor] = None,
) -> Cameras:
    """Cameras on spheres around the origin, looking at it (angles in degrees)."""
    el, az = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    positions = torch.stack(
        [distance * torch.cos(el) * torch.cos(az), distance * torch.cos(el) * torch.sin(az), distance * torch.sin(el)],
        dim=-1,
    )
    return Cameras(
        c2w=look_at_c2w(positions),
        fov_y=torch.deg2rad(fov_y_deg),
        width=width,
        height=height,
        elevation=elevation,
        azimuth=azimuth,
        distance=distance,
        time=time,
    )


def concat_cameras(batches: Sequence[Cameras]) -> Cameras:
    """One batch of the cameras of several batches of the same image size, in order."""
    first = batches[0]
    if any((b.width, b.height) != (first.width, first.height) for b in batches):
        raise ValueError("camera batches of different image sizes cannot be joined")
    values: dict[str, Any] = {}
    for name in _PER_CAMERA_FIELDS:
        parts = [getattr(b, name) for b in batches]
        values[name] = None if any(p is None for p in parts) else torch.cat(parts)
    return replace(first, **values)


@dataclass
class OrbitSamplerConfig:
    """Ranges of the random training cameras (degrees; distance in world units)."""

    batch_size: int = 4
    """Views rendered per optimisation step."""
    width: int = 64
    height: int = 64
    elevation_range: tuple[float, float] = (-10.0, 60.0)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    distance_range: tuple[float, float] = (2.8, 2.8)
    fov_range: tuple[float, float] = (40.0, 40.0)
    """Vertical field of view range in degrees."""
    stratified_azimuth: bool = True
    """Spread each batch's azimuths over equal sectors of the range."""
    scene: Optional[str] = None
    """Draw training views from this scene's cameras instead (a nerfstudio/Blender folder with
    transforms.json): reconstruction and edit runs (`threedistill edit`)."""
    scene_downscale: int = 0
    """Integer factor the scene's images are shrunk by (0: the one that brings their height closest to `height`)."""
    scene_normalise: bool = True
    """Move and scale the scene so its cameras look at the origin from ~2.8 units, as the
    training orbit does (scenes that already do, like toyworld's, are left as they are)."""


class OrbitSampler:
    """Random cameras on an orbit around the object, drawn from one seeded generator.

    With `group` > 1 (a multi-view prior, `PriorConfig.view_group`) a batch is made of groups of
    `group` views of one camera setting: one elevation, distance and field of view per group, the
    azimuths 360/group degrees apart from a random start (stratified over the groups)."""

    def __init__(self, config: OrbitSamplerConfig, device: torch.device | str = "cpu", group: int = 1) -> None:
        self.config = config
        self.device = torch.device(device)
        self.group = group

    def _uniform(self, lo_hi: tuple[float, float], n: int, gen: torch.Generator) -> Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    def sample(self, generator: torch.Generator, batch_size: Optional[int] = None, time: Optional[Tensor] = None) -> Cameras:
        """Draw a batch of cameras. Uses `generator` (a CPU generator) for all randomness."""
        cfg = self.config
        B = batch_size or cfg.batch_size
        if B % self.group:
            raise ValueError(f"a batch of {B} views is not made of groups of {self.group}")
        n = B // self.group
        lo, hi = cfg.azimuth_range
        if cfg.stratified_azimuth:
            u = (torch.arange(n, dtype=torch.float32) + torch.rand(n, generator=generator)) / n
            azimuth = lo + (hi - lo) * u
        else:
            azimuth = self._uniform(cfg.azimuth_range, n, generator)
        if self.group > 1:
            azimuth = (azimuth[:, None] + torch.arange(self.group, dtype=torch.float32) * (360.0 / self.group)).flatten()
        # Wrap into [-180, 180) so labels and kernels see one range.
        azimuth = torch.remainder(azimuth + 180.0, 360.0) - 180.0
        elevation, distance, fov = (self._uniform(r, n, generator).repeat_interleave(self.group)
                                    for r in (cfg.elevation_range, cfg.distance_range, cfg.fov_range))
        cams = orbit_cameras(elevation, azimuth, distance, fov, cfg.width, cfg.height, time=time)
        return cams.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        """Nothing: all its randomness comes from the run's generator."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


class FixedViewSampler:
    """Batches of a fixed camera set (a scene's views, an objective's `training_views`), each camera
    carrying its index in `Cameras.view`; every view is used once per epoch (a fresh random order
    each epoch) before any repeats."""

    def __init__(self, cameras: Cameras, batch_size: int, device: torch.device | str = "cpu") -> None:
        self.cameras = cameras
        self.config_batch_size = batch_size
        self.device = torch.device(device)
        self._order: Optional[Tensor] = None
        self._next = 0

    def sample(self, generator: torch.Generator, batch_size: Optional[int] = None, time: Optional[Tensor] = None) -> Cameras:
        n = len(self.cameras)
        chosen = []
        for _ in range(batch_size or self.config_batch_size):
            if self._order is None or self._next >= n:
                self._order, self._next = torch.randperm(n, generator=generator), 0
            chosen.append(int(self._order[self._next]))
            self._next += 1
        index = torch.tensor(chosen, dtype=torch.long)
        cams = self.cameras[index]
        cams.view = index
        return cams.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"order": self._order, "next": self._next}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._order, self._next = state.get("order"), int(state.get("next", 0))


def ring_cameras(n: int, elevations: Sequence[float], sampler: OrbitSamplerConfig) -> Cameras:
    """n cameras evenly spaced in azimuth from -180 degrees, elevations cycling through `elevations`, at the
    middle of the sampler's distance and field-of-view ranges and its image size, each with its `view` index."""
    azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n) - 180.0
    elevation = torch.tensor([float(elevations[i % len(elevations)]) for i in range(n)], dtype=torch.float32)
    distance = torch.full((n,), 0.5 * sum(sampler.distance_range))
    fov = torch.full((n,), 0.5 * sum(sampler.fov_range))
    cams = orbit_cameras(elevation, azimuth, distance, fov, sampler.width, sampler.height)
    cams.view = torch.arange(n)
    return cams


class CameraSampler(Protocol):
    """Where a stage's training cameras come from: the random orbit, or a scene's views."""

    def sample(self, generator: torch.Generator, batch_size: Optional[int] = None, time: Optional[Tensor] = None) -> Cameras: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def heldout_cameras(
    n: int = 16,
    width: int = 64,
    height: int = 64,
    elevations: tuple[float, ...] = (10.0, 35.0),
    distance: float = 2.8,
    fov_deg: float = 40.0,
) -> Cameras:
    """Fixed evaluation cameras: evenly spaced azimuths, alternating elevations."""
    azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n) - 180.0 + 180.0 / n
    elevation = torch.tensor([elevations[i % len(elevations)] for i in range(n)], dtype=torch.float32)
    return orbit_cameras(elevation, azimuth, torch.full((n,), distance), torch.full((n,), fov_deg), width, height)


def scene_cameras(n: int, resolution: int, distance: float = 2.8, fov_deg: float = 40.0) -> Cameras:
    """The views of a written scene: three interleaved turns at elevations -5, 20 and 45 degrees."""
    azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n) * 3.0 % 360.0 - 180.0
    elevation = torch.tensor([(-5.0, 20.0, 45.0)[i % 3] for i in range(n)])
    return orbit_cameras(elevation, azimuth, torch.full((n,), distance), torch.full((n,), fov_deg), resolution, resolution)


def turntable_cameras(n: int, width: int, height: int, elevation: float = 20.0, distance: float = 2.8, fov_deg: float = 40.0) -> Cameras:
    """One full turn around the object at a fixed elevation."""
    azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n) - 180.0
    return orbit_cameras(torch.full((n,), elevation), azimuth, torch.full((n,), distance), torch.full((n,), fov_deg), width, height)


VIEW_LABELS = ("front", "side", "back", "overhead")

VIEW_LABEL_ANGLES: dict[str, tuple[float, float]] = {
    "front": (20.0, 0.0),
    "side": (20.0, 90.0),
    "back": (20.0, 180.0),
    "overhead": (90.0, 0.0),
}
"""A representative (elevation, azimuth) in degrees for each view label."""

_LABEL_RE = "|".join(VIEW_LABELS)
_SUFFIX_RE = re.compile(rf"^(?P<prompt>.*?\S)(?:\s*,\s*|\s+)(?P<label>{_LABEL_RE})\s+view\s*$", re.IGNORECASE)
_PREFIX_RE = re.compile(rf"^\s*(?P<label>{_LABEL_RE})\s+view\s+of\s+(?P<prompt>.*?\S)\s*$", re.IGNORECASE)


@dataclass
class ViewLabelConfig:
    """Where one view-direction label ends and the next begins (degrees)."""

    front_threshold: float = 45.0
    """|azimuth| <= this is the front view."""
    back_threshold: float = 45.0
    """|azimuth| >= 180 - this is the back view."""
    overhead_threshold: float = 60.0
    """elevation > this is the overhead view (overrides the azimuth labels)."""


def view_phrase(prompt: str, label: str, form: str = "suffix") -> str:
    """A view-dependent prompt: 'a corgi, side view' (suffix) or 'side view of a corgi' (prefix)."""
    if label not in VIEW_LABELS:
        raise ValueError(f"unknown view label '{label}'; valid: {', '.join(VIEW_LABELS)}")
    if form == "suffix":
        return f"{prompt}, {label} view"
    if form == "prefix":
        return f"{label} view of {prompt}"
    raise ValueError(f"unknown view-prompt form '{form}'; valid: suffix, prefix")


def split_view_phrase(text: str) -> tuple[str, Optional[str]]:
    """(prompt, view label or None): the inverse of `view_phrase` for either form."""
    match = _SUFFIX_RE.match(text) or _PREFIX_RE.match(text)
    if match is None:
        return text, None
    return match.group("prompt"), match.group("label").lower()


def wrapped_abs_azimuth(cams: Cameras) -> Tensor:
    """|azimuth| in [0, 180] degrees [B] (float64)."""
    return (torch.remainder(cams.azimuth.double() + 180.0, 360.0) - 180.0).abs()


def view_label_indices(cams: Cameras, config: Optional[ViewLabelConfig] = None) -> Tensor:
    """Index into VIEW_LABELS of each camera [B] (threestudio order: side, front, back, overhead)."""
    config = config or ViewLabelConfig()
    az = wrapped_abs_azimuth(cams).cpu()
    idx = torch.full(az.shape, VIEW_LABELS.index("side"), dtype=torch.long)
    idx[az <= config.front_threshold] = VIEW_LABELS.index("front")
    idx[az >= 180.0 - config.back_threshold] = VIEW_LABELS.index("back")
    idx[cams.elevation.double().cpu() > config.overhead_threshold] = VIEW_LABELS.index("overhead")
    return idx


def view_direction_labels(cams: Cameras, config: Optional[ViewLabelConfig] = None) -> list[str]:
    """Label each camera front / side / back / overhead (threestudio-style view prompts)."""
    return [VIEW_LABELS[i] for i in view_label_indices(cams, config).tolist()]
