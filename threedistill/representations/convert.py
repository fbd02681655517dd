"""Start a stage's representation from the previous stage's result (threedistill/stages.py).

- the same representation: the new config's model loaded with the previous state (a mesh
  keeps its topology, offsets and texture field; only its training settings change);
- NeRF or Gaussians -> mesh: the previous stage's extracted mesh (the same calibrated
  marching-cubes surface the export writes), coloured by the field's albedo.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.errors import UserError
from .registry import REPRESENTATIONS


def representation_from_previous(previous: Any, name: str, config: Any, generator: torch.Generator, backend: str) -> Any:
    """A `name` representation built with `config`, initialised from `previous` (a Trainer)."""
    before = previous.names.representation
    if name == before:
        model = REPRESENTATIONS[name].build(config, generator, backend=backend)
        source = previous.representation
        source = source.static() if hasattr(source, "static") else source  # a 4D asset's undeformed base
        try:
            model.load_state_dict(source.state_dict())
        except (RuntimeError, KeyError, ValueError) as exc:
            raise UserError(f"this stage changes the {name}'s shape settings, so it cannot continue from the previous result "
                            f"({str(exc).splitlines()[0][:120]}); keep them equal") from None
        return model
    if name == "mesh":
        from .mesh import Mesh

        extracted = previous.mesh_of(0)
        if extracted is None:
            raise UserError(f"the {before} stage produced no surface to start the mesh stage from; train it longer or check its metrics")
        return Mesh.from_vertices_faces(
            torch.from_numpy(extracted.vertices), torch.from_numpy(extracted.faces), config, generator,
            backend=backend, vertex_colors=torch.from_numpy(extracted.vertex_colors),
        )
    raise UserError(f"a {name} stage cannot start from a {before} stage; chain stages of one representation, or nerf/gaussians -> mesh")
