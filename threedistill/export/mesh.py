"""Mesh export: mesh.glb, mesh.obj (+ mesh.mtl, mesh_albedo.png) and mesh.ply, written atomically.

- `mesh.glb`: vertex colours (COLOR_0), y up as glTF requires: our world is z up, so points are
  rotated by -90 degrees about x, (x, y, z) -> (x, z, -y); the object's front (+x) stays +x.
  A PBR material (`--material pbr`) is written instead as a glTF pbrMetallicRoughness material on
  xatlas UVs: baseColorTexture (the albedo as rendered, stored as sRGB like every glTF colour
  texture) and metallicRoughnessTexture (roughness in G, metallic in B, R = 1), factors 1, which
  is what Blender's glTF importer wires into its Principled BSDF.
- `mesh.obj`: y up as for glTF (what Blender's and most tools' OBJ importers assume), UVs from
  xatlas and a texture baked from the field's albedo: every texel whose centre lies in a UV
  triangle gets the albedo of the 3D surface point with the same barycentric coordinates;
  texels in the gutter around each chart are then filled from their neighbours for
  `texture_padding` rings, so bilinear and mip-mapped lookups near seams stay on colour.
  OBJ's v axis points up: texel row i holds v = 1 - (i + 0.5) / size.
- `mesh.ply`: binary, vertex colours, in world axes (z up), like the other .ply files of a run.
Each file goes through a temporary file and a rename; the OBJ is written last, after the
texture and material it names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import imageio.v3 as iio
import numpy as np

from ..core.atomic import atomic_write_bytes, atomic_write_text
from ..core.errors import UserError
from ..core.geometry import Field, SurfaceMesh, TextureColour
from .extract import MeshExportConfig, eval_chunked, extract_mesh

MESH_FORMATS = ("glb", "obj", "ply")

Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
"""Rotation taking world (z up) coordinates to glTF/OBJ (y up) coordinates, applied as R @ p."""


def to_y_up(points: np.ndarray) -> np.ndarray:
    return (np.asarray(points, np.float64) @ Z_UP_TO_Y_UP.T).astype(np.float32)


def write_glb(path: str | Path, mesh: SurfaceMesh, material: Optional[TextureColour] = None,
              config: Optional[MeshExportConfig] = None) -> Path:
    """Binary glTF, y up: vertex colours, or with `material` (5 channels: albedo, roughness,
    metallic) baked baseColor and metallicRoughness textures."""
    if material is not None:
        return write_pbr_glb(path, mesh, material, config or MeshExportConfig())
    tm = mesh.to_trimesh()
    tm.vertices = to_y_up(mesh.vertices)
    atomic_write_bytes(path, tm.export(file_type="glb"))
    return Path(path)


def pbr_textures(baked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [S,S,5] (albedo, roughness, metallic) -> (baseColor [S,S,3], metallicRoughness [S,S,3] = (255, r, m))."""
    rough_metal = np.concatenate([np.full_like(baked[..., :1], 255), baked[..., 3:5]], -1)
    return np.ascontiguousarray(baked[..., :3]), np.ascontiguousarray(rough_metal)


def write_pbr_glb(path: str | Path, mesh: SurfaceMesh, material: TextureColour, config: MeshExportConfig) -> Path:
    """glb with a pbrMetallicRoughness material whose textures are baked from `material` on xatlas UVs."""
    import trimesh
    from PIL import Image

    vmap, faces, uvs, uncharted = uv_unwrap(mesh.vertices, mesh.faces, config.texture_size, config.texture_padding)
    vertices = mesh.vertices[vmap]
    baked = bake_texture(vertices, faces, uvs, material, config.texture_size, config.texture_padding, config.chunk_points, uncharted,
                         vertex_ids=vmap)
    base, rough_metal = pbr_textures(baked)
    pbr = trimesh.visual.material.PBRMaterial(name="material", baseColorTexture=Image.fromarray(base),
                                              metallicRoughnessTexture=Image.fromarray(rough_metal),
                                              metallicFactor=1.0, roughnessFactor=1.0, baseColorFactor=[255, 255, 255, 255])
    tm = trimesh.Trimesh(to_y_up(vertices), faces, visual=trimesh.visual.TextureVisuals(uv=uvs, material=pbr), process=False)
    data = tm.export(file_type="glb")
    assert isinstance(data, bytes)  # glb is binary
    atomic_write_bytes(path, data)
    return Path(path)


def write_ply(path: str | Path, mesh: SurfaceMesh) -> Path:
    """Binary little-endian .ply with uchar vertex colours, world axes (z up)."""
    atomic_write_bytes(path, mesh.to_trimesh().export(file_type="ply", encoding="binary"))
    return Path(path)


# ---------------------------------------------------------------------- UVs and texture
def uv_unwrap(vertices: np.ndarray, faces: np.ndarray, size: int, padding: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts packed into one size x size atlas.

    Returns (vertex index map [V'], faces [F,3], uvs [V',2] in [0,1], uncharted [F] bool): faces
    xatlas left out of every chart (slivers without area) borrow UVs and are not baked."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, indices, uvs = atlas[0]
    vmapping, indices, uvs = vmapping.astype(np.int64), indices.astype(np.int64), uvs.astype(np.float32)
    # xatlas leaves sliver triangles (no area) out of every chart, their UVs at (0, 0): give each
    # such vertex the UV of a charted copy of the same vertex (they cover no texel either way)
    unmapped = (uvs == 0.0).all(1)
    uncharted = unmapped[indices].any(1)
    if unmapped.any() and not unmapped.all():
        charted = np.full(int(vmapping.max()) + 1, -1, np.int64)
        charted[vmapping[~unmapped]] = np.nonzero(~unmapped)[0]
        source = charted[vmapping[unmapped]]
        fix = np.nonzero(unmapped)[0][source >= 0]
        uvs[fix] = uvs[source[source >= 0]]
    return vmapping, indices, uvs, uncharted


def _edge(o: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    return (s[..., 0] - o[..., 0]) * (t[..., 1] - o[..., 1]) - (s[..., 1] - o[..., 1]) * (t[..., 0] - o[..., 0])


def rasterise_uv(uvs: np.ndarray, faces: np.ndarray, size: int, pair_budget: int = 1 << 22) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels covered by UV triangles: (texel index row*size+col [T], face [T], barycentrics [T,3]).

    A texel whose centre lies in several triangles (on shared edges) belongs to the one with the
    largest UV area.
    """
    px = np.stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size], -1).astype(np.float64)[faces]  # [F,3,2]
    lo = np.ceil(px.min(1) - 0.5).astype(np.int64).clip(0, size)
    hi = np.floor(px.max(1) - 0.5).astype(np.int64).clip(-1, size - 1)
    n = (hi - lo + 1).clip(min=0)
    counts = n[:, 0] * n[:, 1]
    area = _edge(px[:, 0], px[:, 1], px[:, 2])
    tri = np.nonzero((counts > 0) & (np.abs(area) > 1e-12))[0]
    tri = tri[np.argsort(-np.abs(area[tri]), kind="stable")]  # larger UV triangles own shared texels
    texels, owners, barys = [], [], []
    cum = np.cumsum(counts[tri])
    start = 0
    while start < len(tri):
        base = cum[start - 1] if start else 0
        end = max(int(np.searchsorted(cum, base + pair_budget, side="right")), start + 1)
        t_ids = tri[start:end]
        local = np.repeat(np.arange(len(t_ids)), counts[t_ids])
        offset = np.arange(len(local)) - np.repeat(np.cumsum(counts[t_ids]) - counts[t_ids], counts[t_ids])
        f = t_ids[local]
        x = lo[f, 0] + offset % n[f, 0]
        y = lo[f, 1] + offset // n[f, 0]
        p = np.stack([x + 0.5, y + 0.5], -1)
        a, b, c = px[f, 0], px[f, 1], px[f, 2]
        w = np.stack([_edge(b, c, p), _edge(c, a, p), _edge(a, b, p)], -1) / area[f, None]
        inside = (w >= -1e-7).all(-1)
        texels.append(y[inside] * size + x[inside])
        owners.append(f[inside])
        barys.append(w[inside].clip(0.0, 1.0))
        start = end
    if not texels:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3))
    texel, owner, bary = np.concatenate(texels), np.concatenate(owners), np.concatenate(barys)
    texel, first = np.unique(texel, return_index=True)
    return texel, owner[first], bary[first] / bary[first].sum(-1, keepdims=True)


def dilate(image: np.ndarray, filled: np.ndarray, rings: int) -> tuple[np.ndarray, np.ndarray]:
    """Grow the filled texels of image [H,W,C] outward `rings` times (mean of filled 3x3 neighbours).

    Returns the grown image and its filled mask."""
    from scipy import ndimage

    image, filled = image.copy(), filled.copy()
    kernel = np.ones((3, 3), np.float32)
    for _ in range(rings):
        weight = ndimage.convolve(filled.astype(np.float32), kernel, mode="constant")
        grow = ~filled & (weight > 0)
        if not grow.any():
            break
        total = np.stack([ndimage.convolve(image[..., c] * filled, kernel, mode="constant") for c in range(image.shape[-1])], -1)
        image[grow] = total[grow] / weight[grow, None]
        filled |= grow
    return image, filled


def _at_surface(colour: TextureColour, points: np.ndarray, corners: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """`colour.at_surface` on numpy arrays -> float32 numpy [N,C]."""
    import torch

    assert colour.at_surface is not None
    out = colour.at_surface(torch.as_tensor(np.asarray(points, np.float32)), torch.as_tensor(np.asarray(corners, np.int64)),
                            torch.as_tensor(np.asarray(bary, np.float32)))
    return out.detach().float().cpu().numpy()


def bake_texture(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, colour: TextureColour,
                 size: int, padding: int, chunk: int = 1 << 18, skip: Optional[np.ndarray] = None,
                 vertex_ids: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8 texture [size,size,C]: the colour (C channels) at the surface point of every covered texel, dilated by
    `padding`; faces marked in `skip` [F] are not rasterised. A colour with `at_surface` gets each
    texel's corner vertices as ids of the original mesh (`vertex_ids` [V]: the UV unwrap's map)."""
    ids = np.arange(len(vertices)) if vertex_ids is None else vertex_ids
    if skip is not None:
        faces = faces[~skip]
    texel, face, bary = rasterise_uv(uvs, faces, size)
    points = np.einsum("tk,tkc->tc", bary, vertices[faces[face]].astype(np.float64))
    per_face = colour.at_surface is not None
    if per_face:  # colours defined per face (an explicit mesh's vertex residual)
        corners = ids[faces[face]]
        colours = np.concatenate([_at_surface(colour, points[i : i + chunk], corners[i : i + chunk], bary[i : i + chunk])
                                  for i in range(0, len(points), chunk)] or [np.zeros((0, 3), np.float32)])
    else:
        colours = eval_chunked(colour.at_points, points.astype(np.float32), chunk)
    image = np.zeros((size * size, colours.shape[1] if colours.ndim == 2 else 3), np.float32)
    filled = np.zeros(size * size, bool)
    image[texel], filled[texel] = colours, True
    # the texel under every vertex, for charts too thin to cover a texel centre
    col = np.clip(np.floor(uvs[:, 0] * size), 0, size - 1).astype(np.int64)
    row = np.clip(np.floor((1.0 - uvs[:, 1]) * size), 0, size - 1).astype(np.int64)
    under = row * size + col
    missing = np.nonzero(~filled[under])[0]
    if len(missing) and per_face:
        one_hot = np.tile(np.array([[1.0, 0.0, 0.0]]), (len(missing), 1))
        image[under[missing]] = _at_surface(colour, vertices[missing], np.stack([ids[missing]] * 3, 1), one_hot)
    elif len(missing):
        image[under[missing]] = eval_chunked(colour.at_points, vertices[missing].astype(np.float32), chunk)
        filled[under[missing]] = True
    covered = filled.reshape(size, size)
    texture, grown = dilate(image.reshape(size, size, -1), covered, padding)
    if covered.any():
        texture[~grown] = texture[covered].mean(0)  # the unused rest of the atlas: the mean colour
    return (np.clip(texture, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_obj(path: str | Path, mesh: SurfaceMesh, colour: Optional[TextureColour] = None,
              config: Optional[MeshExportConfig] = None) -> list[Path]:
    """OBJ + MTL + baked PNG texture (xatlas UVs). Without `colour`, the texture is baked from the
    vertex colours (interpolated). Returns [texture, material, obj]."""
    config = config or MeshExportConfig()
    path = Path(path)
    mtl_path, png_path = path.with_suffix(".mtl"), path.with_name(path.stem + "_albedo.png")
    vmap, faces, uvs, uncharted = uv_unwrap(mesh.vertices, mesh.faces, config.texture_size, config.texture_padding)
    vertices = mesh.vertices[vmap]
    if colour is None:
        colour = TextureColour(_interpolated_colours(mesh))
    texture = bake_texture(vertices, faces, uvs, colour, config.texture_size, config.texture_padding, config.chunk_points, uncharted,
                           vertex_ids=vmap)
    atomic_write_bytes(png_path, iio.imwrite("<bytes>", texture, extension=".png"))
    atomic_write_text(mtl_path, f"newmtl albedo\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {png_path.name}\n")
    lines = [f"# threedistill mesh: {len(vertices)} vertices, {len(faces)} faces, y up", f"mtllib {mtl_path.name}", "o mesh"]
    v = _format_rows("v", to_y_up(vertices), "%.6f")
    vt = _format_rows("vt", uvs, "%.6f")
    idx = faces + 1
    f = "\n".join("f " + " ".join(f"{i}/{i}" for i in row) for row in idx.tolist())
    atomic_write_text(path, "\n".join(lines + [v, vt, "usemtl albedo", f]) + "\n")
    return [png_path, mtl_path, path]


def _format_rows(tag: str, rows: np.ndarray, fmt: str) -> str:
    line = tag + (" " + fmt) * rows.shape[1]
    return "\n".join(line % tuple(r) for r in rows.tolist())


def _interpolated_colours(mesh: SurfaceMesh) -> Callable[..., Any]:
    """An albedo function that returns the vertex colour of the nearest vertex (for meshes without a field)."""
    import torch
    from scipy.spatial import cKDTree

    tree = cKDTree(mesh.vertices)

    def albedo(points: Any) -> Any:
        idx = tree.query(np.asarray(points, np.float64), k=1)[1]
        return torch.from_numpy(mesh.vertex_colors[idx])

    return albedo


# ---------------------------------------------------------------------- entry points
def write_mesh_files(mesh: SurfaceMesh, out_dir: str | Path, formats: Sequence[str], colour: Optional[TextureColour] = None,
                     config: Optional[MeshExportConfig] = None, stem: str = "mesh", material: Optional[TextureColour] = None) -> list[Path]:
    """Write `mesh` as out_dir/{stem}.glb, .obj (+ .mtl, _albedo.png), .ply for the requested formats
    (`material`: a PBR material for the glb, see `write_glb`)."""
    out = Path(out_dir)
    written: list[Path] = []
    for fmt in formats:
        if fmt == "glb":
            written.append(write_glb(out / f"{stem}.glb", mesh, material, config))
        elif fmt == "obj":
            written += write_obj(out / f"{stem}.obj", mesh, colour, config)
        elif fmt == "ply":
            written.append(write_ply(out / f"{stem}.ply", mesh))
        else:
            raise UserError(f"unknown mesh format '{fmt}'; valid: {', '.join(MESH_FORMATS)}")
    return written


def export_mesh(field: Field, out_dir: str | Path, formats: Sequence[str] = MESH_FORMATS,
                config: Optional[MeshExportConfig] = None, stem: str = "mesh") -> list[Path]:
    """Extract a mesh from a field and write it in `formats`, the texture baked from its albedo."""
    bad = [f for f in formats if f not in MESH_FORMATS]
    if bad:
        raise UserError(f"unknown mesh format '{bad[0]}'; valid: {', '.join(MESH_FORMATS)}")
    config = config or MeshExportConfig()
    mesh = extract_mesh(field, config)
    return write_mesh_files(mesh, out_dir, formats, TextureColour(field.albedo), config, stem)
