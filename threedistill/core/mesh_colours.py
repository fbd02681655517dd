"""The colour of every face of a mesh read from a file, as the tools that wrote it show it.

One trimesh geometry (a glTF primitive, an OBJ material group, a PLY) in, one RGB per face out:

- glTF materials: base colour = baseColorFactor x baseColorTexture(uv) x COLOR_0, in linear
  light as the specification defines it (the texture is sRGB-encoded, factor and COLOR_0 are
  linear), then encoded to sRGB for our renders (display colours);
- OBJ + MTL: Kd x map_Kd(uv) (display colours, as OBJ viewers take them);
- vertex colours (PLY, OBJ extensions, COLOR_0 without a material) and face colours as given;
- nothing: light grey.

A texture is *sampled at the surface*: each face's colour is the mean of the texture at
`SAMPLES` points spread over the face (bilinear, wrapping as glTF's default sampler does), and
faces whose UVs span more than `MAX_UV_EDGE` of the texture (or two texels) are first subdivided (up to
`MAX_FACES` faces), so a low-poly textured model keeps its texture's pattern instead of one
averaged colour per large triangle.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

MAX_UV_EDGE = 1.0 / 24.0
MAX_FACES = 20000
_GREY = (0.7, 0.7, 0.7)
SAMPLES = np.array([[1 / 3, 1 / 3, 1 / 3], [2 / 3, 1 / 6, 1 / 6], [1 / 6, 2 / 3, 1 / 6], [1 / 6, 1 / 6, 2 / 3],
                    [1 / 2, 1 / 2, 0.0], [0.0, 1 / 2, 1 / 2], [1 / 2, 0.0, 1 / 2]], np.float64)
"""Barycentric points where a face samples its texture and vertex colours."""


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def unit_colours(values: Any) -> np.ndarray:
    """Colour channels in [0, 1] from floats or normalised integers (uint8 / uint16), RGB only."""
    array = np.asarray(values)
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float64) / float(np.iinfo(array.dtype).max)
    return np.clip(array.astype(np.float64)[..., :3], 0.0, 1.0)


def _texture(image: Any) -> Optional[np.ndarray]:
    """A PIL texture as float RGB [H,W,3] in [0, 1] (None without one)."""
    if image is None:
        return None
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear samples [N,3] at uv [N,2] (trimesh's convention: v up), wrapping at the edges."""
    h, w = texture.shape[:2]
    x = (uv[:, 0] % 1.0) * w - 0.5
    y = ((1.0 - uv[:, 1]) % 1.0) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    xi, yi = x0.astype(np.int64), y0.astype(np.int64)

    def at(dx: int, dy: int) -> np.ndarray:
        return texture[(yi + dy) % h, (xi + dx) % w]
    return (at(0, 0) * (1 - fx) + at(1, 0) * fx) * (1 - fy) + (at(0, 1) * (1 - fx) + at(1, 1) * fx) * fy


def subdivide_textured(vertices: np.ndarray, faces: np.ndarray, attributes: dict[str, np.ndarray], texture_side: int
                       ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Split faces whose UV edges exceed MAX_UV_EDGE, or two texels of a small texture (four ways,
    up to MAX_FACES faces)."""
    import trimesh

    longest = max(MAX_UV_EDGE, 2.0 / texture_side)
    for _ in range(6):
        uv = attributes["uv"][faces]
        edges = np.linalg.norm(uv - np.roll(uv, 1, axis=1), axis=-1).max(axis=1)
        big = np.flatnonzero(edges > longest)
        if len(big) == 0 or len(faces) + 3 * len(big) > MAX_FACES:
            break
        vertices, faces, attributes = trimesh.remesh.subdivide(vertices, faces, face_index=big, vertex_attributes=attributes)
    return vertices, faces, attributes


def geometry_faces(geometry: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices [V,3], faces [F,3], face colours [F,3] in [0, 1]) of one trimesh geometry."""
    vertices = np.asarray(geometry.vertices, np.float64)
    faces = np.asarray(geometry.faces, np.int64)
    visual = geometry.visual
    kind = getattr(visual, "kind", None)
    if kind == "face":
        return vertices, faces, unit_colours(visual.face_colors)
    if kind == "vertex":
        colours = unit_colours(visual.vertex_colors)
        return vertices, faces, colours[faces].mean(axis=1)
    material = getattr(visual, "material", None)
    if material is None:
        return vertices, faces, np.tile(np.array(_GREY), (len(faces), 1))
    return _material_faces(vertices, faces, visual, material)


def _material_faces(vertices: np.ndarray, faces: np.ndarray, visual: Any, material: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from trimesh.visual.material import PBRMaterial

    pbr = isinstance(material, PBRMaterial)
    if pbr:
        factor = unit_colours(material.baseColorFactor) if material.baseColorFactor is not None else np.ones(3)
        texture = _texture(material.baseColorTexture)
    else:  # an OBJ's SimpleMaterial: Kd and map_Kd
        factor = unit_colours(material.diffuse) if getattr(material, "diffuse", None) is not None else np.ones(3)
        texture = _texture(getattr(material, "image", None))
    attributes: dict[str, np.ndarray] = {}
    uv = getattr(visual, "uv", None)
    if texture is not None and uv is not None and len(uv) == len(vertices):
        attributes["uv"] = np.asarray(uv, np.float64)
    colour0 = getattr(visual, "vertex_attributes", {}).get("color")
    if colour0 is not None and len(colour0) == len(vertices):
        attributes["color"] = unit_colours(colour0)
    if texture is not None and "uv" in attributes:
        vertices, faces, attributes = subdivide_textured(vertices, faces, attributes, min(texture.shape[:2]))
    linear = srgb_to_linear(factor) if not pbr else factor  # glTF's factor is linear; an MTL's Kd is a display colour
    colour = np.tile(linear, (len(faces), len(SAMPLES), 1))
    if texture is not None and "uv" in attributes:
        points = np.einsum("sk,fkc->fsc", SAMPLES, attributes["uv"][faces])
        colour = colour * srgb_to_linear(sample_texture(texture, points.reshape(-1, 2))).reshape(colour.shape)
    if "color" in attributes:
        colour = colour * np.einsum("sk,fkc->fsc", SAMPLES, attributes["color"][faces])
    return vertices, faces, linear_to_srgb(colour.mean(axis=1))
