"""How well an exported textured OBJ reproduces the asset it came from.

The OBJ (y-up, xatlas UVs, baked PNG) is read back with trimesh, turned z-up, rendered with
our rasteriser through its UVs and texture at held-out cameras, and compared with the
representation's own renders at the same cameras: PSNR in dB (`obj_psnr` in metrics.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.cameras import heldout_cameras
from ..core.errors import UserError
from ..render.mesh_torch import render_textured_mesh
from .metrics import psnr

Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def read_textured_obj(path: str | Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """vertices [V,3] (z-up), faces [F,3], uvs [V,2] and texture [3,H,W] in [0,1] of an exported OBJ."""
    import trimesh

    try:
        mesh: Any = trimesh.load(str(path), force="mesh", process=False, maintain_order=True)
        image = mesh.visual.material.image
        uv = mesh.visual.uv
    except (AttributeError, ValueError, OSError) as exc:
        raise UserError(f"'{path}' is not a textured OBJ ({exc}); export it with `threedistill export RUN --format obj`") from None
    if image is None or uv is None:
        raise UserError(f"'{path}' has no UVs or texture image; export it with `threedistill export RUN --format obj`")
    vertices = torch.tensor(np.asarray(mesh.vertices) @ Y_UP_TO_Z_UP.T, dtype=torch.float32)
    faces = torch.tensor(np.asarray(mesh.faces), dtype=torch.long)
    texture = torch.tensor(np.asarray(image.convert("RGB")), dtype=torch.float32).permute(2, 0, 1) / 255.0
    return vertices, faces, torch.tensor(np.asarray(uv), dtype=torch.float32), texture


@torch.no_grad()
def obj_psnr(path: str | Path, representation: Any, background: Tensor, views: int = 16, resolution: int = 128) -> float:
    """PSNR of the textured OBJ's renders against the representation's at `views` held-out cameras."""
    vertices, faces, uvs, texture = read_textured_obj(path)
    cams = heldout_cameras(views, resolution, resolution).to(background.device)
    reference = representation.render(cams, background).rgb
    exported = render_textured_mesh(vertices.to(background.device), faces.to(background.device), cams, uvs=uvs.to(background.device),
                                    face_uvs=faces.to(background.device), texture=texture.to(background.device),
                                    background=background, supersample=2, antialias_edges=False)
    return psnr(exported.rgb, reference)
