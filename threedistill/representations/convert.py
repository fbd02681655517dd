"""Start a stage's representation from the previous stage's result (engine/plan.py).

- the same representation: the new config's model loaded with the previous state (a mesh
  keeps its topology, offsets and texture field; only its training settings change);
- NeRF or Gaussians -> mesh: the previous stage's mesh (the same calibrated marching-cubes
  surface the export writes), coloured by the field's albedo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..core.errors import UserError
from ..core.geometry import SurfaceMesh
from .base import REPRESENTATIONS, Representation, RepresentationConfig
from .mesh import Mesh

TO_MESH = ("nerf", "gaussians")
"""Representations whose result a mesh stage can start from."""


@dataclass
class PreviousAsset:
    """The result a stage starts from: the previous stage's (or another run's) representation."""

    representation: Representation
    name: str
    """Its registered name (of the undeformed asset)."""
    mesh: Callable[[], Optional[SurfaceMesh]]
    """Its (first particle's) mesh, extracted on demand."""


def transition_error(before: str, after: str) -> Optional[str]:
    """Why a `after` stage cannot start from a `before` result (None: it can)."""
    if before == after or (after == "mesh" and before in TO_MESH):
        return None
    return f"a {after} stage cannot start from a {before} stage; chain stages of one representation, or nerf/gaussians -> mesh"


def representation_from(previous: PreviousAsset, name: str, config: RepresentationConfig, generator: torch.Generator,
                        backend: str) -> Representation:
    """A `name` representation built with `config`, initialised from `previous`."""
    problem = transition_error(previous.name, name)
    if problem is not None:
        raise UserError(problem)
    if name == previous.name:
        model = REPRESENTATIONS[name].build(config, generator, backend)
        try:
            model.continue_from(previous.representation)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise UserError(f"this stage changes the {name}'s shape settings, so it cannot continue from the previous result "
                            f"({str(exc).splitlines()[0][:120]}); keep them equal") from None
        return model
    extracted = previous.mesh()
    if extracted is None:
        raise UserError(f"the {previous.name} stage produced no surface to start the mesh stage from; train it longer or check its metrics")
    assert isinstance(config, Mesh.Config)
    return Mesh.from_vertices_faces(torch.from_numpy(extracted.vertices), torch.from_numpy(extracted.faces), config, generator,
                                    backend=backend, vertex_colors=torch.from_numpy(extracted.vertex_colors))
