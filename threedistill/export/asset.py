"""A run's asset and its exports, with each particle's mesh extracted once.

Formats (`threedistill export --format`, `log.export_formats`):

- splat: splats.ply (particle i > 0: splats_particle{i}.ply; 4D: the first frame), Gaussians only;
- video: turntable.mp4 + .gif (particles side by side; 4D: animated, plus clips.mp4, four
  views over time);
- glb, obj, ply: the mesh of every particle (mesh.*, mesh_particle{i}.*): an explicit mesh's
  own, else marching cubes of its field (4D: the first frame);
- sequence (4D): splats_tNNN.ply (Gaussians) and mesh_tNNN.glb per frame.

The same meshes serve scoring (chamfer) and the next stage of a run (a mesh stage starts from
them), so they are extracted once (`mesh`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..core.errors import UserError
from ..core.geometry import Field, SurfaceMesh, TextureColour
from ..representations.base import Representation
from .extract import MeshExportConfig, extract_mesh
from .images import write_video
from .mesh import MESH_FORMATS, write_mesh_files
from .sequence import view_grid_frames, write_sequence
from .splat_ply import write_splat_ply
from .turntable import render_turntable

EXPORT_FORMATS = ("splat", "video", *MESH_FORMATS, "sequence")


@dataclass
class ExportSettings:
    """What the exports of one asset look like."""

    mesh: MeshExportConfig
    turntable_frames: int = 60
    turntable_resolution: int = 256
    clip_frames: int = 1
    """Frames per clip of a 4D asset (its exports show at least 2)."""


@dataclass
class Exported:
    """Files written by one `AssetExports.export` call; `objs` lists (particle, OBJ path)."""

    files: list[Path] = field(default_factory=list)
    objs: list[tuple[int, Path]] = field(default_factory=list)


class AssetExports:
    """The exports of one representation into one folder (see the module docstring)."""

    def __init__(self, representation: Representation, out_dir: Path, settings: ExportSettings, background: Tensor,
                 note: Callable[[str], None] = lambda message: None) -> None:
        self.representation = representation
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.background = background
        self.note = note
        self.members = representation.members()
        self._meshes: dict[int, Optional[SurfaceMesh]] = {}
        self._fields: dict[int, Optional[Field]] = {}

    # ------------------------------------------------------------------ meshes
    def field(self, index: int) -> Optional[Field]:
        """Particle `index`'s density/albedo field at time 0 (cached; None for an explicit mesh)."""
        if index not in self._fields:
            self._fields[index] = self.members[index].as_field(0.0)
        return self._fields[index]

    def mesh(self, index: int) -> Optional[SurfaceMesh]:
        """Particle `index`'s mesh (cached; None, noted, when its field has no surface)."""
        if index not in self._meshes:
            member = self.members[index]
            own = member.as_mesh()
            if own is not None:
                self._meshes[index] = own
            else:
                source = self.field(index)
                if source is None:
                    raise UserError(f"{type(member.static()).__name__} has neither a mesh nor a field to extract one from")
                try:
                    self._meshes[index] = extract_mesh(source, self.settings.mesh)
                except UserError as exc:
                    self.note(f"no mesh for particle {index}: {exc}")
                    self._meshes[index] = None
        return self._meshes[index]

    def texture_colour(self, index: int) -> TextureColour:
        """Where particle `index`'s baked texture takes its colours: its own surface colour, else its field's albedo."""
        own = self.members[index].texture_colour()
        if own is not None:
            return own
        source = self.field(index)
        if source is None:
            raise UserError(f"{type(self.members[index]).__name__} has no colour to bake a texture from")
        return TextureColour(source.albedo)

    # ------------------------------------------------------------------ files
    def supported(self, formats: Sequence[str]) -> list[str]:
        """The formats this asset can be written in (splat needs Gaussians, sequence a 4D asset)."""
        has_splats = all(m.as_splats(0.0) is not None for m in self.members)
        return [f for f in formats if (f != "splat" or has_splats) and (f != "sequence" or self.representation.is_dynamic)]

    def export(self, formats: Sequence[str]) -> Exported:
        """Write `formats` into the folder (atomically); an unsupported one is a UserError."""
        done = Exported()
        for fmt in formats:
            if fmt == "splat":
                done.files += self._splats()
            elif fmt == "video":
                done.files += self._videos()
            elif fmt == "sequence":
                if not self.representation.is_dynamic:
                    raise UserError("--format sequence needs a dynamic (4D) run; use glb/ply/splat for a static one")
                done.files += write_sequence(self.members[0], self.out_dir, max(self.settings.clip_frames, 2), self.settings.mesh)
            elif fmt not in MESH_FORMATS:
                raise UserError(f"unknown export format '{fmt}'; valid formats: {', '.join(EXPORT_FORMATS)}")
        mesh_formats = [f for f in formats if f in MESH_FORMATS]
        for i in range(len(self.members) if mesh_formats else 0):
            mesh = self.mesh(i)
            if mesh is None:
                continue
            stem = "mesh" if i == 0 else f"mesh_particle{i}"
            files = write_mesh_files(mesh, self.out_dir, mesh_formats, self.texture_colour(i), self.settings.mesh, stem,
                                     self.members[i].pbr_material())
            done.files += files
            done.objs += [(i, f) for f in files if f.suffix == ".obj"]
        return done

    def _splats(self) -> list[Path]:
        written = []
        for i, member in enumerate(self.members):
            splats = member.as_splats(0.0)
            if splats is None:
                raise UserError(f"--format splat needs a Gaussian run; this representation is {type(member.static()).__name__}")
            written.append(write_splat_ply(self.out_dir / ("splats.ply" if i == 0 else f"splats_particle{i}.ply"), **splats))
        return written

    def _videos(self) -> list[Path]:
        s, dynamic = self.settings, self.representation.is_dynamic
        frames = torch.cat([render_turntable(m, s.turntable_frames, s.turntable_resolution, self.background,
                                             animation_cycles=2 if dynamic else 0) for m in self.members], dim=-1)
        written = [write_video(self.out_dir / "turntable.mp4", frames, fps=24), write_video(self.out_dir / "turntable.gif", frames, fps=24)]
        if dynamic:
            grid = view_grid_frames(self.members[0], 4, max(s.clip_frames, 2) * 3, s.turntable_resolution, self.background)
            written.append(write_video(self.out_dir / "clips.mp4", grid, fps=12))
        return written
