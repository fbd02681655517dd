"""An explicit triangle mesh with learnable vertex offsets and a texture field.

Geometry: fixed base vertices and faces (buffers, so a checkpoint restores a mesh of any
size) plus a learnable offset per vertex. Colour: a texture field (the NeRF's grid encoding,
`HashGrid`, and a one-hidden-layer MLP) evaluated at the surface point of every covered
pixel, plus a learnable per-vertex logit residual interpolated across each face:
rgb = sigmoid(field(x) + residual(x)). The residual starts at zero, or, when the mesh comes
with vertex colours (a user file or the previous stage's extracted mesh), at
logit(colour) - field(vertex), so the first render already shows those colours exactly at
the vertices without any pre-fitting; the field then learns detail finer than the vertices.
Colours are baked (unlit), like the NeRF's albedo.

`material="pbr"` (DreamMat): the field and the residual carry five channels, albedo rgb,
roughness and metallic (all sigmoids), shaded by the GGX shader (render/pbr.py,
render/mesh_pbr.py) with the mesh's face normals. A render with gradients (a training step)
lights each view by one of `TRAINING_LIGHTS`, drawn from the run's generator, and records the
draw in extras["light_index"] (the toyworld prior reads it to score the view under the same
light); a render without gradients (scores, previews, exports, the viewer) uses `HELDOUT_LIGHT`
(index -1). The glb export then carries baseColor and metallicRoughness textures.

Rendering: render/mesh_torch.py (z-buffer, perspective-correct barycentrics, silhouette
antialiasing that gives vertices gradients from the outline), or nvdiffrast on CUDA
(render/mesh_nvdiffrast.py). Regularisers: uniform Laplacian smoothing of the deformed
vertices and normal consistency between faces sharing an edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..core.cameras import Cameras
from ..core.errors import UserError
from ..core.geometry import SurfaceMesh, TextureColour
from ..core.mesh_file import load_mesh_file
from ..core.schedule import Schedule
from ..core.types import RenderOutput
from ..render.mesh_nvdiffrast import render_textured_mesh_nvdiffrast, resolve_mesh_backend
from ..render.mesh_pbr import render_material_maps, render_pbr_mesh
from ..render.mesh_torch import edge_neighbours, mesh_normals, render_textured_mesh
from ..render.pbr import HELDOUT_LIGHT, TRAINING_LIGHTS
from .base import REPRESENTATIONS, Representation, RepresentationConfig
from .nerf import HashGrid, _linear


@dataclass
class MeshConfig(RepresentationConfig):
    """A triangle mesh refined by score distillation (Magic3D-style second stage)."""

    path: Optional[str] = None
    """A mesh file (.glb/.obj/.ply/.stl; normalised into the unit sphere, glTF turned z-up)
    whose face or vertex colours initialise the texture; None: `init`."""
    init: Literal["icosphere"] = "icosphere"
    """The starting shape when no mesh is given."""
    init_radius: float = 0.6
    init_subdivisions: int = 4
    """Icosphere subdivisions (4: 2562 vertices, 5120 faces)."""
    optimise: Literal["all", "geometry", "texture"] = "all"
    """Which parameters train: vertex offsets, the texture (field + vertex residual), or both."""
    material: Literal["albedo", "pbr"] = "albedo"
    """albedo: unlit colours; pbr: albedo, roughness and metallic shaded by GGX under environment lights
    (DreamMat; use with `optimise texture` on a given mesh)."""
    light_condition: bool = False
    """pbr: training renders also carry DreamMat's six light-condition renders (extras["light_condition"]);
    switched on for a ControlNet whose `--prior.controlnet-condition` reads `light`."""
    lr_offsets: float = 1e-3
    """Adam learning rate of the vertex offsets (world units)."""
    lr_encoding: float = 1e-2
    """Adam learning rate of the texture field's grid features."""
    lr_network: float = 1e-3
    """Adam learning rate of the texture MLP and the per-vertex colour residual."""
    bound: float = 1.0
    """The texture field covers [-bound, bound]^3."""
    levels: int = 4
    features_per_level: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 128
    """Finest texture-field level (levels whose corners exceed the table are hashed)."""
    hidden_dim: int = 32
    lambda_laplacian: Schedule = 1000.0
    """Weight of the uniform Laplacian loss, mean |L v|^2 over interior vertices (a constant or
    (step, value) points)."""
    lambda_normal_consistency: Schedule = 10.0
    """Weight of mean(1 - cos) between the normals of faces sharing an edge."""
    supersample: int = 1
    """Rasterise at this multiple of the resolution and average-pool."""
    antialias: bool = True
    """Analytic silhouette antialiasing (without it the outline gets no vertex gradients)."""

    def check(self) -> None:
        self.check_settings()
        if self.path:
            load_mesh_file(self.path, "mesh")  # readable, with faces

    def check_settings(self) -> None:
        """The settings without reading the mesh file."""
        super().check()
        if self.optimise not in ("all", "geometry", "texture"):
            raise UserError(f"unknown mesh optimise '{self.optimise}'; valid: all, geometry, texture")
        if self.material not in ("albedo", "pbr"):
            raise UserError(f"unknown mesh material '{self.material}'; valid: albedo, pbr")

    @property
    def channels(self) -> int:
        """Channels of the texture field: rgb, or albedo rgb + roughness + metallic."""
        return 5 if self.material == "pbr" else 3


# ---------------------------------------------------------------------- regularisers
def unique_edges(faces: Tensor) -> Tensor:
    """Undirected edges [E,2] (smaller index first) of a triangle mesh."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(1).values
    return torch.unique(e, dim=0)


def laplacian_loss(vertices: Tensor, edges: Tensor, interior: Tensor) -> Tensor:
    """mean over `interior` vertices of |mean(neighbours) - v|^2 (uniform weights)."""
    n = vertices.shape[0]
    i, j = edges.unbind(1)
    summed = torch.zeros_like(vertices).index_add(0, i, vertices[j]).index_add(0, j, vertices[i])
    degree = torch.zeros(n, dtype=vertices.dtype, device=vertices.device).index_add(0, torch.cat([i, j]), torch.ones(2 * len(i), dtype=vertices.dtype, device=vertices.device))
    lap = summed / degree.clamp(min=1)[:, None] - vertices
    return lap[interior].square().sum(-1).mean() if bool(interior.any()) else vertices.new_zeros(())


def normal_consistency_loss(vertices: Tensor, faces: Tensor, face_pairs: Tensor) -> Tensor:
    """mean over face pairs [P,2] sharing an edge of 1 - cos(angle between their normals)."""
    if face_pairs.numel() == 0:
        return vertices.new_zeros(())
    n = mesh_normals(vertices, faces)
    return (1.0 - (n[face_pairs[:, 0]] * n[face_pairs[:, 1]]).sum(-1)).mean()


def icosphere(subdivisions: int, radius: float) -> tuple[Tensor, Tensor]:
    """Vertices [V,3] float32 and outward faces [F,3] long of an icosphere."""
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions, radius)
    return torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces, dtype=torch.long)


def _vertex_colours_from_faces(n_vertices: int, faces: Tensor, face_colors: Tensor) -> Tensor:
    """[V,3]: the mean colour of the faces around each vertex."""
    total = torch.zeros(n_vertices, 3).index_add(0, faces.reshape(-1), face_colors.repeat_interleave(3, 0))
    count = torch.zeros(n_vertices).index_add(0, faces.reshape(-1), torch.ones(faces.numel()))
    return total / count.clamp(min=1)[:, None]


# ---------------------------------------------------------------------- the representation
@REPRESENTATIONS.register("mesh")
class Mesh(Representation):
    """Base mesh + learnable vertex offsets, coloured by a texture field and a vertex residual."""

    Config = MeshConfig
    config: MeshConfig
    base_vertices: Tensor
    faces: Tensor
    neighbours: Tensor  # [F,3] face across each edge (-1: boundary)
    face_pairs: Tensor  # [P,2] faces sharing an edge
    edges: Tensor  # [E,2]
    interior: Tensor  # [V] bool

    def __init__(self, config: MeshConfig, generator: torch.Generator, backend: str = "auto",
                 vertices: Optional[Tensor] = None, faces: Optional[Tensor] = None, vertex_colors: Optional[Tensor] = None) -> None:
        super().__init__()
        cfg = self.config = config
        cfg.check_settings()
        self.generator, self.backend = generator, backend
        self.encoding = HashGrid(cfg.levels, cfg.features_per_level, cfg.log2_table_size, cfg.base_resolution, cfg.max_resolution, cfg.bound, generator)
        self.trunk = nn.Sequential(_linear(self.encoding.out_dim, cfg.hidden_dim, generator), nn.ReLU(inplace=True))
        self.colour_head = _linear(cfg.hidden_dim, cfg.channels, generator)
        if vertices is None or faces is None:
            vertices, faces, vertex_colors = self._initial_mesh()
        self._set_topology(vertices, faces)
        if vertex_colors is not None:
            self.set_vertex_colours(vertex_colors)

    # ------------------------------------------------------------------ construction
    def _initial_mesh(self) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        cfg = self.config
        if cfg.path:
            v, f, c = load_mesh_file(cfg.path, "mesh").to_torch()
            return v, f, _vertex_colours_from_faces(len(v), f, c)
        if cfg.init != "icosphere":
            raise UserError(f"unknown mesh init '{cfg.init}'; valid: icosphere (or pass --representation.path FILE)")
        v, f = icosphere(cfg.init_subdivisions, cfg.init_radius)
        return v, f, None

    @classmethod
    def from_vertices_faces(cls, vertices: Tensor | np.ndarray, faces: Tensor | np.ndarray, config: MeshConfig, generator: torch.Generator,
                            backend: str = "auto", vertex_colors: Optional[Tensor | np.ndarray] = None) -> "Mesh":
        """A mesh stage started from an explicit mesh (e.g. the previous stage's extracted one).

        vertex_colors [V,3] in [0,1] set the per-vertex residual so the first render shows them.
        """
        def as_tensor(x: Any, dtype: torch.dtype) -> Tensor:
            return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x.detach().cpu()).to(dtype)

        colours = None if vertex_colors is None else as_tensor(vertex_colors, torch.float32)
        return cls(config, generator, backend, as_tensor(vertices, torch.float32), as_tensor(faces, torch.long), colours)

    def _set_topology(self, vertices: Tensor, faces: Tensor) -> None:
        """(Re)build buffers and per-vertex parameters for a mesh of any size."""
        device = self.colour_head.weight.device
        vertices, faces = vertices.detach().float().to(device), faces.detach().long().to(device)
        if faces.numel() == 0 or faces.min() < 0 or faces.max() >= len(vertices):
            raise UserError(f"mesh has {len(faces)} faces indexing {len(vertices)} vertices; need triangles with valid indices")
        self.register_buffer("base_vertices", vertices.clone())
        self.register_buffer("faces", faces.clone())
        self.offsets = nn.Parameter(torch.zeros_like(vertices))
        self.vertex_logits = nn.Parameter(vertices.new_zeros(len(vertices), self.config.channels))
        neighbours = edge_neighbours(faces)
        self.register_buffer("neighbours", neighbours, persistent=False)
        pairs = torch.stack([torch.arange(len(faces), device=device).repeat_interleave(3), neighbours.reshape(-1)], 1)
        self.register_buffer("face_pairs", pairs[pairs[:, 1] > pairs[:, 0]], persistent=False)
        edges = unique_edges(faces)
        self.register_buffer("edges", edges, persistent=False)
        boundary = neighbours < 0  # [F,3] edge opposite corner i
        on_boundary = torch.zeros(len(vertices), dtype=torch.bool, device=device)
        for i in range(3):
            on_boundary[faces[boundary[:, i]][:, [(i + 1) % 3, (i + 2) % 3]].reshape(-1)] = True
        self.register_buffer("interior", ~on_boundary, persistent=False)
        self._apply_optimise()

    def _apply_optimise(self) -> None:
        geometry = self.config.optimise in ("all", "geometry")
        self.offsets.requires_grad_(geometry)
        for p in self._texture_params():
            p.requires_grad_(self.config.optimise in ("all", "texture"))

    def _texture_params(self) -> list[nn.Parameter]:
        return [*self.encoding.parameters(), *self.trunk.parameters(), *self.colour_head.parameters(), self.vertex_logits]

    @torch.no_grad()
    def set_vertex_colours(self, colours: Tensor) -> None:
        """Set the residual so the colour at every vertex is `colours` [V,3] in [0,1]."""
        if colours.shape != self.base_vertices.shape:
            raise UserError(f"vertex colours have shape {tuple(colours.shape)}, the mesh has {len(self.base_vertices)} vertices")
        target = torch.logit(colours.to(self.base_vertices).clamp(1e-3, 1 - 1e-3))
        self.vertex_logits[:, :3].copy_(target - self._field_logits(self.vertices)[:, :3])

    # ------------------------------------------------------------------ field
    @property
    def vertices(self) -> Tensor:
        """Deformed vertices [V,3] = base + offsets."""
        return self.base_vertices + self.offsets

    def _field_logits(self, points: Tensor) -> Tensor:
        return self.colour_head(self.trunk(self.encoding(points)))

    def _colour(self, attrs: Tensor) -> Tensor:
        """rgb [N,3] (pbr: the material [N,5]) from interpolated [position, vertex logit residual] [N,3+C]."""
        if attrs.shape[0] == 0:
            return attrs[:, 3:] * 0
        return torch.sigmoid(self._field_logits(attrs[:, :3]) + attrs[:, 3:])

    def albedo(self, points: Tensor) -> Tensor:
        """The texture field's colour [M,3] at points [M,3] (without the vertex residual)."""
        return torch.sigmoid(self._field_logits(points)[:, :3])

    @torch.no_grad()
    def surface_material(self, points: Tensor, corners: Tensor, bary: Tensor) -> Tensor:
        """All channels [M,C] at surface points [M,3] given their face's vertex ids [M,3] and
        barycentrics [M,3] (field + interpolated residual; texture baking)."""
        residual = (bary.to(self.vertex_logits)[..., None] * self.vertex_logits[corners.long()]).sum(1)
        return torch.sigmoid(self._field_logits(points.to(self.vertex_logits)) + residual)

    @torch.no_grad()
    def surface_colour(self, points: Tensor, corners: Tensor, bary: Tensor) -> Tensor:
        """The colour (albedo) [M,3] at surface points (see `surface_material`)."""
        return self.surface_material(points, corners, bary)[:, :3]

    @torch.no_grad()
    def vertex_colours(self) -> Tensor:
        """Colour [V,3] at every deformed vertex (field + residual), as rendered there."""
        v = self.vertices
        return torch.sigmoid(self._field_logits(v) + self.vertex_logits)[:, :3]

    @torch.no_grad()
    def as_mesh(self) -> SurfaceMesh:
        """The deformed mesh with its vertex colours (it exports itself)."""
        return SurfaceMesh(
            vertices=self.vertices.float().cpu().numpy(),
            faces=self.faces.cpu().numpy().astype(np.int64),
            vertex_colors=self.vertex_colours().float().cpu().numpy(),
        )

    def texture_colour(self) -> TextureColour:
        """Its rendered colour per face (field + interpolated residual) for texture baking."""
        return TextureColour(at_points=self.albedo, at_surface=self.surface_colour)

    def pbr_material(self) -> Optional[TextureColour]:
        """[albedo rgb, roughness, metallic] per surface point for PBR texture baking (None unless pbr)."""
        if self.config.material != "pbr":
            return None
        return TextureColour(at_points=lambda p: torch.sigmoid(self._field_logits(p)), at_surface=self.surface_material)

    @torch.no_grad()
    def material_maps(self, cams: Cameras) -> Optional[tuple[Tensor, Tensor]]:
        """Unshaded [albedo, roughness, metallic] [B,5,H,W] (premultiplied) and alpha of the cameras (None unless pbr)."""
        if self.config.material != "pbr":
            return None
        vertices = self.vertices
        return render_material_maps(vertices, self.faces, cams, self._colour, torch.cat([vertices, self.vertex_logits], -1), self.config.supersample)

    # ------------------------------------------------------------------ interface
    @property
    def num_points(self) -> int:
        """Vertices of the mesh."""
        return int(self.base_vertices.shape[0])

    def param_groups(self) -> list[dict[str, Any]]:
        """Adam groups for the parameters `optimise` selects."""
        cfg = self.config
        groups = []
        if cfg.optimise in ("all", "geometry"):
            groups.append({"params": [self.offsets], "lr": cfg.lr_offsets, "name": "offsets"})
        if cfg.optimise in ("all", "texture"):
            groups.append({"params": list(self.encoding.parameters()), "lr": cfg.lr_encoding, "name": "encoding"})
            network = [*self.trunk.parameters(), *self.colour_head.parameters(), self.vertex_logits]
            groups.append({"params": network, "lr": cfg.lr_network, "name": "network"})
        return groups

    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        """Render the cameras on `background` [3] or [B,3] (rgb, alpha, depth; extras face_index)."""
        cfg = self.config
        vertices = self.vertices
        if cfg.material == "pbr":
            return self._render_pbr(cams, background)
        render = render_textured_mesh_nvdiffrast if resolve_mesh_backend(self.backend, vertices.device) == "cuda" else render_textured_mesh
        return render(
            vertices, self.faces, cams, colour_fn=self._colour, colour_attrs=torch.cat([vertices, self.vertex_logits], -1),
            background=background, supersample=cfg.supersample, antialias_edges=cfg.antialias, neighbours=self.neighbours,
        )

    def _render_pbr(self, cams: Cameras, background: Tensor) -> RenderOutput:
        """Shaded renders: training lights drawn per view with gradients on, the held-out light otherwise."""
        vertices = self.vertices
        if torch.is_grad_enabled():
            index = torch.randint(len(TRAINING_LIGHTS), (len(cams),), generator=self.generator)
            lights = [TRAINING_LIGHTS[int(i)] for i in index]
        else:
            index, lights = torch.full((len(cams),), -1, dtype=torch.long), [HELDOUT_LIGHT] * len(cams)
        out = render_pbr_mesh(vertices, self.faces, cams, lights, self._colour, torch.cat([vertices, self.vertex_logits], -1),
                              background=background, supersample=self.config.supersample, antialias_edges=self.config.antialias,
                              neighbours=self.neighbours, light_condition=self.config.light_condition and torch.is_grad_enabled())
        out.extras["light_index"] = index.to(vertices.device)
        return out

    def losses(self, out: RenderOutput, active: frozenset[str]) -> dict[str, Tensor]:
        """laplacian and normal_consistency of the deformed mesh, where asked for."""
        terms: dict[str, Tensor] = {}
        if "laplacian" in active:
            terms["laplacian"] = laplacian_loss(self.vertices, self.edges, self.interior)
        if "normal_consistency" in active:
            terms["normal_consistency"] = normal_consistency_loss(self.vertices, self.faces, self.face_pairs)
        return terms

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Any:  # type: ignore[override]
        """Load a mesh of any size (topology buffers and per-vertex parameters are resized)."""
        missing = [k for k in ("base_vertices", "faces", "offsets", "vertex_logits") if k not in state]
        if missing:
            raise UserError(f"checkpoint lacks mesh tensors {missing}; it was not written by a mesh run")
        self._set_topology(state["base_vertices"], state["faces"])
        return super().load_state_dict(state, strict=strict)
