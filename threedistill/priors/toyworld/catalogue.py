"""The toyworld catalogue: named objects built from coloured trimesh primitives.

World axes: z up, an object's front faces +x. Every object is centred on its bounding-box
centre and scaled so its farthest vertex lies at radius 0.85. A prompt is
`[a|an|the] [colour] object`; a colour word recolours the object's main part(s). An object
may declare `modes` (colour words) that a prompt without a colour word resolves to, one mesh
per mode ("a ball" is a red, a green, a blue and a yellow ball).

Every part also has a known PBR material, roughness and metallic (default 0.7 and 0: matte
plastic), which `--representation.material pbr` runs are scored against: the balls are polished
metal (0.35, 1), the can's body and lids brushed metal (0.3, 1), the dumbbell's bar and the
lamp's base and pole metal, the mug glossy ceramic (0.25, 0), the cube matte (0.85, 0).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence, Union

import numpy as np
import trimesh

from ...core.errors import UserError
from ...core.mesh_file import ColouredMesh, normalise

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.12),
    "green": (0.20, 0.65, 0.25),
    "blue": (0.15, 0.35, 0.85),
    "yellow": (0.95, 0.82, 0.15),
    "orange": (0.95, 0.50, 0.10),
    "purple": (0.55, 0.25, 0.75),
    "pink": (0.95, 0.50, 0.70),
    "brown": (0.50, 0.30, 0.15),
    "white": (0.95, 0.95, 0.95),
    "black": (0.08, 0.08, 0.08),
    "grey": (0.55, 0.55, 0.55),
}
"""Colour words a prompt may use (and their RGB in [0,1])."""

_COLOUR_ALIASES = {"gray": "grey"}
_ARTICLES = ("a", "an", "the")
_TAN = (0.80, 0.58, 0.35)
_BEIGE = (0.92, 0.85, 0.70)

Colour = Union[str, tuple[float, float, float]]


@dataclass
class ToyMesh(ColouredMesh):
    """A catalogue object: a coloured triangle mesh inside the unit sphere whose main faces a
    colour word recolours."""

    face_materials: Optional[np.ndarray] = None  # [F,2] float32: roughness, metallic

    def recoloured(self, colour: str, name: str) -> "ToyMesh":
        """A copy whose main faces have the colour word `colour`."""
        colors = self.face_colors.copy()
        colors[self.main_faces] = COLOURS[colour]
        return replace(self, face_colors=colors, name=name)


@dataclass
class Part:
    """One primitive of an object, with its colour (a colour word or RGB)."""

    mesh: trimesh.Trimesh
    colour: Colour
    main: bool = False
    roughness: float = 0.7
    metallic: float = 0.0


def _rgb(colour: Colour) -> tuple[float, float, float]:
    return COLOURS[colour] if isinstance(colour, str) else colour


def assemble(parts: Sequence[Part], name: str, normalised: bool = True) -> ToyMesh:
    """Concatenate parts into one ToyMesh with per-face colours, normalised into the unit
    sphere (`normalised=False`: kept in world units, e.g. animated frames)."""
    offsets = np.cumsum([0] + [len(p.mesh.vertices) for p in parts[:-1]])
    faces = np.concatenate([np.asarray(p.mesh.faces) + o for p, o in zip(parts, offsets)])
    colors = np.concatenate([np.tile(_rgb(p.colour), (len(p.mesh.faces), 1)) for p in parts])
    main = np.concatenate([np.full(len(p.mesh.faces), p.main) for p in parts])
    vertices = np.concatenate([np.asarray(p.mesh.vertices) for p in parts])
    materials = np.concatenate([np.tile((p.roughness, p.metallic), (len(p.mesh.faces), 1)) for p in parts]).astype(np.float32)
    vertices = normalise(vertices) if normalised else vertices.astype(np.float32)
    return ToyMesh(vertices, faces.astype(np.int64), colors.astype(np.float32), name, main, materials)


# --- geometry helpers (z up, front +x) ---------------------------------------------------


def _at(mesh: trimesh.Trimesh, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> trimesh.Trimesh:
    return mesh.apply_translation((x, y, z))


def _turn(mesh: trimesh.Trimesh, axis: str, degrees: float) -> trimesh.Trimesh:
    vec = {"x": (1, 0, 0), "y": (0, 1, 0), "z": (0, 0, 1)}[axis]
    return mesh.apply_transform(trimesh.transformations.rotation_matrix(np.deg2rad(degrees), vec))


def _box(sx: float, sy: float, sz: float) -> trimesh.Trimesh:
    return trimesh.creation.box((sx, sy, sz))


def _sphere(radius: float, subdivisions: int = 2) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions, radius)


def _cylinder(radius: float, height: float, sections: int = 24) -> trimesh.Trimesh:
    """A z-axis cylinder centred on the origin."""
    return trimesh.creation.cylinder(radius, height, sections=sections)


def _cone(radius: float, height: float, toward: str = "z", sections: int = 24) -> trimesh.Trimesh:
    """A cone with its base centred on the origin, apex along +z or +x."""
    cone = trimesh.creation.cone(radius, height, sections=sections)
    return _turn(cone, "y", 90.0) if toward == "x" else cone


def _frustum(r_bottom: float, r_top: float, height: float, sections: int = 24) -> trimesh.Trimesh:
    """A closed truncated cone from z = 0 to z = height."""
    profile = [(0.0, 0.0), (r_bottom, 0.0), (r_top, height), (0.0, height)]
    return trimesh.creation.revolve(profile, sections=sections)


def _hull(points: Sequence[Sequence[float]]) -> trimesh.Trimesh:
    return trimesh.convex.convex_hull(np.asarray(points, dtype=np.float64))


def _upper(mesh: trimesh.Trimesh, z: float) -> trimesh.Trimesh:
    """The faces of `mesh` whose centroid lies above height z (an open shell)."""
    keep = mesh.triangles_center[:, 2] > z
    return trimesh.Trimesh(mesh.vertices, mesh.faces[keep], process=False)


# --- the objects -------------------------------------------------------------------------


def _cube() -> list[Part]:
    return [Part(_box(1, 1, 1), "red", main=True, roughness=0.85)]


def _ball() -> list[Part]:
    return [Part(_sphere(0.5, 3), "red", main=True, roughness=0.35, metallic=1.0)]


def _mug() -> list[Part]:
    handle = _at(_turn(trimesh.creation.torus(0.28, 0.07, 24, 12), "y", 90.0), y=0.5)
    return [
        Part(_cylinder(0.5, 1.0), "blue", main=True, roughness=0.25),
        Part(handle, "blue", main=True, roughness=0.25),
        Part(_at(_cylinder(0.44, 0.02), z=0.5), (0.30, 0.18, 0.08)),
        Part(_at(_box(0.04, 0.40, 0.35), x=0.5), "yellow"),
    ]


def _snowman() -> list[Part]:
    body = [Part(_at(_sphere(r), z=z), "white", main=True) for r, z in ((0.5, 0.5), (0.36, 1.08), (0.26, 1.52))]
    eyes = [Part(_at(_sphere(0.04, 1), 0.21, y, 1.62), "black") for y in (-0.09, 0.09)]
    buttons = [Part(_at(_sphere(0.045, 1), 0.35, 0, z), "black") for z in (0.98, 1.14)]
    return body + eyes + buttons + [
        Part(_at(_cone(0.06, 0.32, toward="x"), 0.22, 0, 1.52), "orange"),
        Part(_at(_cylinder(0.27, 0.03), z=1.74), "black"),
        Part(_at(_cylinder(0.17, 0.26), z=1.87), "black"),
    ]


def _can() -> list[Part]:
    return [
        Part(_cylinder(0.4, 1.1), "red", main=True, roughness=0.3, metallic=1.0),
        Part(_at(_cylinder(0.37, 0.03), z=0.56), "grey", roughness=0.3, metallic=1.0),
        Part(_at(_cylinder(0.37, 0.03), z=-0.56), "grey", roughness=0.3, metallic=1.0),
        Part(_at(_cylinder(0.405, 0.25), z=0.05), "white"),
    ]


def _cone_object() -> list[Part]:
    return [
        Part(_at(_cone(0.42, 1.2), z=0.06), "orange", main=True),
        Part(_at(_frustum(0.31, 0.22, 0.22), z=0.45), "white"),
        Part(_at(_box(1.0, 1.0, 0.06), z=0.03), "black"),
    ]


def _donut() -> list[Part]:
    return [
        Part(trimesh.creation.torus(0.6, 0.28, 32, 16), _TAN),
        Part(_upper(trimesh.creation.torus(0.6, 0.29, 32, 16), 0.06), "pink", main=True),
    ]


def _table() -> list[Part]:
    legs = [Part(_at(_box(0.08, 0.08, 0.75), x, y, 0.375), "brown", main=True) for x in (-0.7, 0.7) for y in (-0.42, 0.42)]
    return [Part(_at(_box(1.6, 1.0, 0.08), z=0.79), "brown", main=True)] + legs


def _chair() -> list[Part]:
    legs = [Part(_at(_box(0.07, 0.07, 0.5), x, y, 0.25), "brown") for x in (-0.34, 0.34) for y in (-0.34, 0.34)]
    return legs + [
        Part(_at(_box(0.8, 0.8, 0.08), z=0.54), "green", main=True),
        Part(_at(_box(0.08, 0.8, 0.75), x=-0.36, z=0.955), "green", main=True),
    ]


def _mushroom() -> list[Part]:
    cap = _upper(_sphere(1.0, 3).apply_scale((0.6, 0.6, 0.4)), -0.02)
    spots = []
    for theta, phi in ((35, 0), (35, 120), (35, 240), (65, 60), (65, 180), (65, 300), (0, 0)):
        t, p = np.deg2rad(theta), np.deg2rad(phi)
        spots.append(Part(_at(_sphere(0.07, 1), 0.6 * np.sin(t) * np.cos(p), 0.6 * np.sin(t) * np.sin(p), 0.55 + 0.4 * np.cos(t)), "white"))
    return spots + [
        Part(_at(_cylinder(0.17, 0.6), z=0.3), _BEIGE),
        Part(_at(cap, z=0.55), "red", main=True),
        Part(_at(_cylinder(0.58, 0.02), z=0.55), _BEIGE),
    ]


def _house() -> list[Part]:
    roof = _hull([(x, y, z) for x, z in ((-0.62, 0.8), (0.62, 0.8), (0.0, 1.3)) for y in (-0.68, 0.68)])
    windows = [Part(_at(_box(0.04, 0.2, 0.2), 0.5, y, 0.5), "blue") for y in (-0.38, 0.38)]
    return windows + [
        Part(_at(_box(1.0, 1.2, 0.8), z=0.4), "yellow", main=True),
        Part(roof, "red"),
        Part(_at(_box(0.04, 0.26, 0.46), 0.5, 0, 0.23), "brown"),
        Part(_at(_box(0.16, 0.16, 0.45), -0.3, 0.35, 1.1), "grey"),
    ]


def _duck() -> list[Part]:
    eyes = [Part(_at(_sphere(0.035, 1), 0.58, y, 0.9), "black") for y in (-0.105, 0.105)]
    return eyes + [
        Part(_at(_sphere(1.0, 3).apply_scale((0.55, 0.42, 0.36)), z=0.36), "yellow", main=True),
        Part(_at(_sphere(0.24), 0.38, 0, 0.82), "yellow", main=True),
        Part(_at(_turn(_cone(0.16, 0.3, toward="x"), "y", -35.0), -0.45, 0, 0.42), "yellow", main=True),
        Part(_at(_cone(0.08, 0.22, toward="x").apply_scale((1, 1, 0.5)), 0.58, 0, 0.79), "orange"),
    ]


def _lamp() -> list[Part]:
    return [
        Part(_at(_cylinder(0.35, 0.08), z=0.04), "grey", roughness=0.35, metallic=1.0),
        Part(_at(_cylinder(0.035, 1.1), z=0.6), "grey", roughness=0.35, metallic=1.0),
        Part(_at(_frustum(0.45, 0.25, 0.45), z=1.0), "purple", main=True),
    ]


def _rocket() -> list[Part]:
    fins = [
        Part(_turn(_hull([(0.2, -0.02, 0.2), (0.2, 0.02, 0.2), (0.2, -0.02, 0.7), (0.2, 0.02, 0.7), (0.5, -0.02, 0.05), (0.5, 0.02, 0.05)]), "z", a), "red")
        for a in (45.0, 135.0, 225.0, 315.0)
    ]
    window = _at(_turn(_cylinder(0.1, 0.04), "y", 90.0), 0.25, 0, 1.0)
    return fins + [
        Part(_at(_cylinder(0.25, 1.1), z=0.8), "white", main=True),
        Part(_at(_cone(0.25, 0.45), z=1.35), "red"),
        Part(_at(_frustum(0.12, 0.2, 0.15), z=0.1), "grey"),
        Part(window, "blue"),
    ]


def _tree() -> list[Part]:
    tiers = [Part(_at(_cone(r, h), z=z), "green", main=True) for r, h, z in ((0.55, 0.7, 0.4), (0.45, 0.6, 0.75), (0.32, 0.5, 1.1))]
    return [Part(_at(_cylinder(0.12, 0.5), z=0.25), "brown")] + tiers


def _dumbbell() -> list[Part]:
    bar = _turn(_cylinder(0.05, 1.4), "x", 90.0)
    weights = [Part(_at(_turn(_cylinder(0.3, 0.2), "x", 90.0), y=y), "black", main=True) for y in (-0.5, 0.5)]
    return [Part(bar, "grey", roughness=0.3, metallic=1.0)] + weights


@dataclass(frozen=True)
class ToySpec:
    """A catalogue entry: how to build it and what it is."""

    build: Callable[[], list[Part]]
    description: str
    asymmetric: bool = False
    modes: tuple[str, ...] = ()
    default_colour: Optional[str] = None
    """Colour word of the main part by default (used in the canonical prompt)."""


CATALOGUE: dict[str, ToySpec] = {
    "cube": ToySpec(_cube, "a unit cube", default_colour="red"),
    "ball": ToySpec(_ball, "a sphere", modes=("red", "green", "blue", "yellow")),
    "mug": ToySpec(_mug, "a mug with its handle on the +y side and a yellow badge on the front", True, default_colour="blue"),
    "snowman": ToySpec(_snowman, "three snowballs, a carrot nose, eyes and buttons facing front, a top hat", True, default_colour="white"),
    "can": ToySpec(_can, "a drink can with grey lids and a white band", default_colour="red"),
    "cone": ToySpec(_cone_object, "a traffic cone on a black base", default_colour="orange"),
    "donut": ToySpec(_donut, "a ring doughnut with icing on top", default_colour="pink"),
    "table": ToySpec(_table, "a rectangular table on four legs", default_colour="brown"),
    "chair": ToySpec(_chair, "a chair, backrest at the back (-x)", True, default_colour="green"),
    "mushroom": ToySpec(_mushroom, "a spotted cap on a pale stem", default_colour="red"),
    "house": ToySpec(_house, "a house with a door and windows in front, a chimney at the back", True, default_colour="yellow"),
    "duck": ToySpec(_duck, "a rubber duck, head and beak toward the front", True, default_colour="yellow"),
    "lamp": ToySpec(_lamp, "a floor lamp with a conical shade", default_colour="purple"),
    "rocket": ToySpec(_rocket, "a rocket with four fins and a porthole on the front", True, default_colour="white"),
    "tree": ToySpec(_tree, "a fir tree: three green tiers on a trunk", default_colour="green"),
    "dumbbell": ToySpec(_dumbbell, "two weights on a bar along y", default_colour="black"),
}
"""Every named toyworld object; front is +x."""

ALIASES = {"box": "cube", "sphere": "ball", "cylinder": "can", "torus": "donut", "doughnut": "donut", "cup": "mug"}
"""Other names a prompt may use for a catalogue object."""


def catalogue_names() -> list[str]:
    """Names of the catalogue objects."""
    return list(CATALOGUE)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _canonical_prompt(name: str) -> str:
    spec = CATALOGUE[name]
    words = f"{spec.default_colour} {name}" if spec.default_colour and not spec.modes else name
    return f"{_article(words)} {words}"


def catalogue_prompts() -> list[str]:
    """One canonical prompt per catalogue object (e.g. "a blue mug", "a ball")."""
    return [_canonical_prompt(name) for name in CATALOGUE]


def describe_catalogue() -> list[tuple[str, str]]:
    """(canonical prompt, one-line description) per object, flagging asymmetry and modes."""
    rows = []
    for name, spec in CATALOGUE.items():
        notes = (["asymmetric"] if spec.asymmetric else []) + ([f"multi-modal: {', '.join(spec.modes)}"] if spec.modes else [])
        rows.append((_canonical_prompt(name), spec.description + (f" ({'; '.join(notes)})" if notes else "")))
    return rows


@functools.lru_cache(maxsize=None)
def _base_mesh(name: str) -> ToyMesh:
    return assemble(CATALOGUE[name].build(), name)


def _parse(prompt: str) -> tuple[Optional[str], Optional[str]]:
    """(colour word or None, catalogue name or None) of a prompt."""
    words = re.sub(r"[^a-z ]", " ", prompt.lower()).split()
    if words and words[0] in _ARTICLES:
        words = words[1:]
    colour = None
    if words and _COLOUR_ALIASES.get(words[0], words[0]) in COLOURS:
        colour, words = _COLOUR_ALIASES.get(words[0], words[0]), words[1:]
    name = " ".join(words)
    name = ALIASES.get(name, name)
    return colour, (name if name in CATALOGUE else None)


def resolve_prompt(prompt: str) -> list[ToyMesh]:
    """The meshes a prompt stands for: one per mode (one for most prompts)."""
    colour, name = _parse(prompt)
    if name is None:
        from .procedural import parse_shape_prompt, procedural_shape

        shape = parse_shape_prompt(prompt)
        if shape is not None:  # "a red shape 7": a procedural shape (procedural.py)
            mesh = procedural_shape(shape[1])
            return [mesh.recoloured(shape[0], f"{shape[0]} {mesh.name}") if shape[0] else replace(mesh, face_colors=mesh.face_colors.copy())]
        raise UserError(
            f"unknown toyworld prompt '{prompt}'; known objects: {', '.join(CATALOGUE)}; "
            f"optional colour words: {', '.join(COLOURS)}; procedural shapes: 'shape N'; or pass --prior.mesh PATH"
        )
    base = _base_mesh(name)
    colours = [colour] if colour else list(CATALOGUE[name].modes)
    if not colours:
        return [replace(base, face_colors=base.face_colors.copy())]
    return [base.recoloured(c, f"{c} {name}") for c in colours]
