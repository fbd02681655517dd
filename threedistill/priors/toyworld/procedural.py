"""Procedural toyworld shapes: random, asymmetric compositions of primitives, for measuring how
the defaults do on shapes they were never tuned on (tools/bench_shapes.py).

`procedural_shape(k)` is shape number k (any integer >= 0; the same k always gives the same
shape): 3 to 6 parts drawn from boxes, cylinders, spheres and tori, at least one of them thin
(a bar, a rod or a ring about 1-2 render pixels across at 64 px), in 2 to 4 catalogue colours,
each part attached to a random surface point of an earlier one in a random orientation, so the
whole is asymmetric. The first part is the main one (a colour word recolours it). Prompts:
"shape 7", "a procedural shape 7", "a red shape 7".
"""

from __future__ import annotations

import functools
import re
from typing import Optional

import numpy as np
import trimesh

from .catalogue import COLOURS, Part, ToyMesh, assemble

PROMPT = re.compile(r"^(?:(?:a|an|the)\s+)?(?:(?!procedural\b)(\w+)\s+)?(?:procedural\s+)?shape\s+(\d+)$")
KINDS = ("box", "cylinder", "sphere", "torus")
_PALETTE = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "white", "black")


def parse_shape_prompt(prompt: str) -> Optional[tuple[Optional[str], int]]:
    """(colour word or None, shape number) of a procedural-shape prompt, None for any other prompt."""
    match = PROMPT.match(" ".join(prompt.lower().split()))
    if match is None:
        return None
    colour, number = match.group(1), int(match.group(2))
    colour = {"gray": "grey"}.get(colour, colour) if colour else None
    if colour is not None and colour not in COLOURS:
        return None
    return colour, number


def _primitive(kind: str, rng: np.random.Generator, thin: bool) -> trimesh.Trimesh:
    """One primitive around the origin, in world units before normalisation (object size ~1)."""
    if kind == "box":
        dims = rng.uniform(0.15, 0.7, 3)
        if thin:  # a bar: long, two thin sides
            dims = np.array([rng.uniform(0.6, 1.1), rng.uniform(0.03, 0.06), rng.uniform(0.03, 0.06)])
        return trimesh.creation.box(rng.permutation(dims))
    if kind == "cylinder":
        radius, height = (rng.uniform(0.02, 0.035), rng.uniform(0.6, 1.0)) if thin else (rng.uniform(0.1, 0.3), rng.uniform(0.2, 0.8))
        return trimesh.creation.cylinder(radius, height, sections=24)
    if kind == "sphere":  # a "thin" sphere is a small one
        return trimesh.creation.icosphere(2, rng.uniform(0.08, 0.12) if thin else rng.uniform(0.15, 0.35))
    major = rng.uniform(0.2, 0.35)
    minor = rng.uniform(0.02, 0.035) if thin else rng.uniform(0.05, 0.12)
    return trimesh.creation.torus(major, minor, major_sections=32, minor_sections=12)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    return trimesh.transformations.quaternion_matrix(q / np.linalg.norm(q))


@functools.lru_cache(maxsize=64)
def procedural_shape(number: int) -> ToyMesh:
    """Procedural shape `number` (module docstring), normalised like the catalogue (radius 0.85)."""
    if number < 0:
        raise ValueError(f"procedural shape numbers are >= 0, got {number}")
    rng = np.random.default_rng(1_000_003 + number)
    n_parts = int(rng.integers(3, 7))
    kinds = [str(rng.choice(KINDS)) for _ in range(n_parts)]
    thin = rng.random(n_parts) < 0.35
    forced = int(rng.integers(1, n_parts))  # at least one thin part (a bar, rod or ring), never the main one
    thin[forced] = True
    if kinds[forced] == "sphere":
        kinds[forced] = str(rng.choice(("box", "cylinder", "torus")))
    thin[0] = False
    colours = list(rng.choice(_PALETTE, size=int(rng.integers(2, 5)), replace=False))
    parts: list[Part] = []
    for i, kind in enumerate(kinds):
        mesh = _primitive(kind, rng, bool(thin[i]))
        mesh.apply_transform(_random_rotation(rng))
        if parts:  # its innermost vertex a little inside a random surface point of an earlier part
            anchor = parts[int(rng.integers(0, len(parts)))].mesh
            point = trimesh.sample.sample_surface(anchor, 1, seed=int(rng.integers(1 << 31)))[0][0]
            out = point - anchor.centroid
            out = out / max(float(np.linalg.norm(out)), 1e-9)
            vertices = np.asarray(mesh.vertices)
            innermost = vertices[int(np.argmin(vertices @ out))]
            mesh.apply_translation(point - 0.02 * out - innermost)
        parts.append(Part(mesh, colours[i % len(colours)] if i else colours[0], main=i == 0))
    return assemble(parts, f"shape {number}")


def shape_prompt(number: int) -> str:
    return f"shape {number}"
