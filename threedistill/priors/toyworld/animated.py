"""The animated toyworld catalogue: objects whose geometry is a function of time t in [0, 1].

Every animated object keeps its faces and face colours fixed and moves only its vertices, so
frames of one object correspond vertex for vertex (ground-truth motion). World axes as in the
static catalogue (z up, front +x); every frame stays inside the unit sphere (radius <= 0.95).

* "a bouncing ball": a ball (radius 0.35) on a thin grey floor disc whose top is at z = -0.6;
  the ball's centre follows a parabola, touching the floor at t = 0 and t = 1 and highest
  (centre z = 0.55) at t = 0.5.
* "a rotating <object>" (also "spinning", "turning"): any static catalogue object yawed by
  360 * t degrees about z (t = 0 and t = 1 coincide). A multi-modal object ("a rotating ball")
  has one mode per colour, as in the static catalogue.
* "a waving flag": a grey pole and a cloth grid whose vertices follow a travelling sine wave
  (amplitude growing away from the pole; one period over t in [0, 1]).
* "a swinging door": a door frame and a door rotating about its hinge (vertical axis at
  y = -0.4) by 60 * sin(pi * t) degrees, opening toward the front (+x).

A colour word ("a bouncing blue ball", "a blue bouncing ball") recolours the main part.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
import trimesh

from threedistill.core.errors import UserError

from .catalogue import ALIASES, CATALOGUE, COLOURS, Part, ToyMesh, assemble, resolve_prompt

FLOOR_Z = -0.6
"""Top of the bouncing ball's floor disc (the ground plane)."""
BALL_RADIUS = 0.35
BOUNCE_HEIGHT = 0.8
"""Rise of the ball's centre between t = 0 and t = 0.5."""
DOOR_MAX_DEGREES = 60.0
HINGE_Y = -0.4

_MOTION_WORDS = ("rotating", "spinning", "turning")
_COLOUR_ALIASES = {"gray": "grey"}


@dataclass(frozen=True)
class AnimatedToy:
    """One mode of an animated prompt: `at(t)` is its mesh at time t in [0, 1]."""

    name: str
    build: Callable[[float], ToyMesh]

    def at(self, t: float) -> ToyMesh:
        """The mesh at time t (faces and colours are the same for every t)."""
        return self.build(float(t))


def _join(parts: list[Part], name: str) -> ToyMesh:
    """Concatenate parts into a ToyMesh *without* normalising (coordinates are world units)."""
    return assemble(parts, name, normalised=False)


def _yaw(vertices: np.ndarray, degrees: float, pivot: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Rotate vertices [V,3] counter-clockwise (seen from above) about the vertical axis through pivot (x, y)."""
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    out = vertices.copy()
    x, y = vertices[:, 0] - pivot[0], vertices[:, 1] - pivot[1]
    out[:, 0] = c * x - s * y + pivot[0]
    out[:, 1] = s * x + c * y + pivot[1]
    return out


def _recolour(mesh: ToyMesh, colour: Optional[str]) -> ToyMesh:
    return mesh if colour is None else mesh.recoloured(colour, f"{colour} {mesh.name}")


# --- the animated objects ------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _ball_rest() -> ToyMesh:
    """Ball centred on the origin (the first vertices) plus the floor disc."""
    ball = trimesh.creation.icosphere(3, BALL_RADIUS)
    floor = trimesh.creation.cylinder(0.6, 0.03, sections=32).apply_translation((0, 0, FLOOR_Z - 0.015))
    return _join([Part(ball, "red", main=True), Part(floor, "grey")], "bouncing ball")


def ball_centre_height(t: float) -> float:
    """z of the bouncing ball's centre at time t: a parabola resting on the floor at t = 0 and 1."""
    return FLOOR_Z + BALL_RADIUS + BOUNCE_HEIGHT * 4.0 * t * (1.0 - t)


def _bouncing_ball(t: float, colour: Optional[str]) -> ToyMesh:
    rest = _ball_rest()
    v = rest.vertices.copy()
    v[: _n_ball_vertices(), 2] += ball_centre_height(t)  # the ball's vertices come first
    return _recolour(replace(rest, vertices=v, face_colors=rest.face_colors.copy()), colour)


@functools.lru_cache(maxsize=None)
def _n_ball_vertices() -> int:
    return len(trimesh.creation.icosphere(3, BALL_RADIUS).vertices)


FLAG_Y, FLAG_Z, FLAG_WIDTH, FLAG_HEIGHT, FLAG_AMPLITUDE = -0.5, 0.15, 1.0, 0.55, 0.15
_FLAG_NU, _FLAG_NV = 16, 6


def _grid(nu: int, nv: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) in [0,1]^2 of a (nu+1) x (nv+1) vertex grid and its triangle faces."""
    u, v = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1), indexing="ij")
    idx = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return np.stack([u.ravel(), v.ravel()], -1), faces


def _flag_cloth(t: float) -> trimesh.Trimesh:
    uv, faces = _grid(_FLAG_NU, _FLAG_NV)
    u, v = uv[:, 0], uv[:, 1]
    x = FLAG_AMPLITUDE * u * np.sin(2.0 * np.pi * (1.25 * u - t))
    verts = np.stack([x, FLAG_Y + FLAG_WIDTH * u, FLAG_Z + FLAG_HEIGHT * v], -1)
    return trimesh.Trimesh(verts, faces, process=False)


def _waving_flag(t: float, colour: Optional[str]) -> ToyMesh:
    pole = trimesh.creation.cylinder(0.03, 1.4, sections=12).apply_translation((0, FLAG_Y - 0.03, 0.0))
    return _recolour(_join([Part(pole, "grey"), Part(_flag_cloth(t), "red", main=True)], "waving flag"), colour)


def door_angle(t: float) -> float:
    """Opening angle of the swinging door in degrees at time t (0 at t = 0 and 1, max at 0.5)."""
    return DOOR_MAX_DEGREES * float(np.sin(np.pi * t))


def _swinging_door(t: float, colour: Optional[str]) -> ToyMesh:
    box = trimesh.creation.box
    frame = [
        Part(box((0.08, 0.08, 1.4)).apply_translation((0, y, -0.05)), "brown") for y in (HINGE_Y - 0.05, -HINGE_Y + 0.05)
    ] + [Part(box((0.08, 0.98, 0.08)).apply_translation((0, 0, 0.69)), "brown")]
    door = box((0.05, 0.78, 1.22)).apply_translation((0.0, 0.0, -0.04))
    knob = trimesh.creation.icosphere(1, 0.04).apply_translation((0.05, 0.3, -0.1))
    moving = [Part(door, "blue", main=True), Part(knob, "yellow")]
    mesh = _join(frame + moving, "swinging door")
    n_static = sum(len(p.mesh.vertices) for p in frame)
    v = mesh.vertices.copy()
    v[n_static:] = _yaw(v[n_static:], door_angle(t), pivot=(0.0, HINGE_Y))
    return _recolour(replace(mesh, vertices=v), colour)


def _rotating(base: ToyMesh) -> Callable[[float], ToyMesh]:
    def build(t: float) -> ToyMesh:
        return replace(base, vertices=_yaw(base.vertices, 360.0 * t), name=f"rotating {base.name}")

    return build


_BUILDERS: dict[str, Callable[[float, Optional[str]], ToyMesh]] = {
    "bouncing ball": _bouncing_ball,
    "waving flag": _waving_flag,
    "swinging door": _swinging_door,
}

ANIMATED_PROMPTS = ("a bouncing ball", "a rotating duck", "a waving flag", "a swinging door")
"""The canonical animated prompts (the unconditional set of the video prior is their union)."""


def animated_prompts() -> list[str]:
    """The canonical animated prompts; any "a rotating <catalogue object>" is accepted too."""
    return list(ANIMATED_PROMPTS)


def _parse(prompt: str) -> tuple[Optional[str], str]:
    """(colour word or None, the remaining words) of a prompt, article dropped."""
    words = re.sub(r"[^a-z ]", " ", prompt.lower()).split()
    if words and words[0] in ("a", "an", "the"):
        words = words[1:]
    colour = None
    for i, w in enumerate(words):
        w = _COLOUR_ALIASES.get(w, w)
        if w in COLOURS:
            colour = w
            del words[i]
            break
    return colour, " ".join(words)


def _unknown(prompt: str) -> UserError:
    return UserError(
        f"unknown animated toyworld prompt '{prompt}'; known: {', '.join(ANIMATED_PROMPTS)}, or "
        f"'a rotating <object>' with one of: {', '.join(CATALOGUE)}; optional colour words: {', '.join(COLOURS)}"
    )


def resolve_animated(prompt: str) -> list[AnimatedToy]:
    """The animated objects a prompt stands for: one per mode (one for most prompts)."""
    colour, rest = _parse(prompt)
    if rest in _BUILDERS:
        builder = _BUILDERS[rest]
        name = f"{colour} {rest}" if colour else rest
        return [AnimatedToy(name, functools.partial(builder, colour=colour))]  # type: ignore[call-arg]  # (time, colour) builders
    words = rest.split()
    if len(words) >= 2 and words[0] in _MOTION_WORDS:
        obj = ALIASES.get(" ".join(words[1:]), " ".join(words[1:]))
        if obj in CATALOGUE:
            bases = resolve_prompt(f"{colour} {obj}" if colour else obj)
            return [AnimatedToy(f"rotating {b.name}", _rotating(b)) for b in bases]
    raise _unknown(prompt)


def animated_mesh(prompt: str, t: float) -> ToyMesh:
    """The mesh of an animated prompt at time t in [0, 1] (a multi-modal prompt needs a colour word)."""
    modes = resolve_animated(prompt)
    if len(modes) > 1:
        raise UserError(f"animated prompt '{prompt}' has {len(modes)} modes ({', '.join(m.name for m in modes)}); add a colour word")
    return modes[0].at(t)
