"""What the viewer draws: an asset's members as splats or meshes, side by side, and cameras as frustums.

Pure conversions from threedistill's types to viser scene nodes; the live viewer (live.py) and
`threedistill view` (static.py) both draw through `AssetScene`. World axes are threedistill's
(z up, as viser's default); a 3D Gaussian becomes viser's splat (centre, covariance
R S S R^T, the SH degree-0 colour, opacity); a particle i > 0 is shifted along y so particles
stand side by side, as in the turntable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..core.cameras import Cameras
from ..core.geometry import SurfaceMesh
from ..core.types import SplatTensors
from ..render.splats_torch import quat_to_rotmat
from ..representations.sh import sh_to_rgb

PARTICLE_SPACING = 2.2
"""World units between particles drawn side by side (objects fit the unit sphere)."""


@dataclass
class SplatArrays:
    """3D Gaussians as viser draws them (numpy, float32)."""

    centers: np.ndarray  # [N,3]
    covariances: np.ndarray  # [N,3,3]
    rgbs: np.ndarray  # [N,3] in [0,1]
    opacities: np.ndarray  # [N,1] in [0,1]

    def __len__(self) -> int:
        return len(self.centers)


def splat_arrays(splats: SplatTensors) -> SplatArrays:
    """The 3DGS parameters (log-scales, wxyz quaternions, opacity logits, SH) as centres,
    covariances, colours (degree 0, the view-independent part) and opacities."""
    with torch.no_grad():
        rot = quat_to_rotmat(splats["quats"].float())
        scale = splats["log_scales"].float().exp()
        m = rot * scale[:, None, :]
        cov = m @ m.transpose(1, 2)
        rgb = sh_to_rgb(splats["sh"].float(), None, 0)
        opacity = torch.sigmoid(splats["opacity_logits"].float())[:, None]
        return SplatArrays(*(t.detach().cpu().numpy().astype(np.float32) for t in (splats["means"].float(), cov, rgb, opacity)))


def member_offset(index: int, count: int) -> tuple[float, float, float]:
    """Where particle `index` of `count` stands (the row is centred on the origin)."""
    return (0.0, (index - (count - 1) / 2.0) * PARTICLE_SPACING, 0.0)


def c2w_pose(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(wxyz, position) of an OpenCV-axes camera-to-world matrix (viser's frustum convention)."""
    r = c2w[:3, :3].astype(np.float64)
    w = math.sqrt(max(0.0, 1.0 + r[0, 0] + r[1, 1] + r[2, 2])) / 2.0
    x = math.copysign(math.sqrt(max(0.0, 1.0 + r[0, 0] - r[1, 1] - r[2, 2])) / 2.0, r[2, 1] - r[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1.0 - r[0, 0] + r[1, 1] - r[2, 2])) / 2.0, r[0, 2] - r[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1.0 - r[0, 0] - r[1, 1] + r[2, 2])) / 2.0, r[1, 0] - r[0, 1])
    return np.array([w, x, y, z]), c2w[:3, 3].astype(np.float64)


class AssetScene:
    """The asset's nodes in one viser scene: `show_splats` / `show_mesh` per member, `show_cameras`.
    Drawing a member again replaces its node (viser nodes are keyed by name)."""

    def __init__(self, scene: Any, root: str = "/asset") -> None:
        self.scene = scene
        self.root = root
        self._kinds: dict[int, str] = {}

    @property
    def kinds(self) -> dict[int, str]:
        """What each member is drawn as now: "splats" or "mesh"."""
        return dict(self._kinds)

    def _name(self, index: int, kind: str) -> str:
        previous = self._kinds.get(index)
        if previous is not None and previous != kind:  # a member changed from splats to a mesh (a mesh stage)
            self.scene.remove_by_name(f"{self.root}/{index}-{previous}")
        self._kinds[index] = kind
        return f"{self.root}/{index}-{kind}"

    def show_splats(self, index: int, count: int, splats: SplatArrays) -> None:
        self.scene.add_gaussian_splats(self._name(index, "splats"), splats.centers, splats.covariances, splats.rgbs,
                                       splats.opacities, position=member_offset(index, count))

    def show_mesh(self, index: int, count: int, vertices: np.ndarray, faces: np.ndarray, face_colours: np.ndarray) -> None:
        """A triangle mesh (world axes) with per-face colours in [0, 1]."""
        import trimesh

        colours = (np.clip(face_colours, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        shown = trimesh.Trimesh(vertices, faces, face_colors=colours, process=False)
        self.scene.add_mesh_trimesh(self._name(index, "mesh"), shown, position=member_offset(index, count))

    def show_surface(self, index: int, count: int, mesh: SurfaceMesh) -> None:
        self.show_mesh(index, count, mesh.vertices, mesh.faces, mesh.face_colors())

    def show_cameras(self, cams: Cameras, images: Optional[Sequence[np.ndarray]] = None, name: str = "/cameras",
                     colour: tuple[int, int, int] = (220, 120, 40)) -> None:
        """One frustum per camera (its render inside it when `images` are given); replaces the previous set."""
        self.hide_cameras(name)
        c2w = cams.c2w.detach().cpu().numpy()
        fov = cams.fov_y.detach().cpu().numpy()
        for i in range(len(cams)):
            wxyz, position = c2w_pose(c2w[i])
            self.scene.add_camera_frustum(f"{name}/{i}", fov=float(fov[i]), aspect=cams.width / cams.height, scale=0.15,
                                          color=colour, wxyz=wxyz, position=position,
                                          image=None if images is None else images[i])

    def hide_cameras(self, name: str = "/cameras") -> None:
        self.scene.remove_by_name(name)
