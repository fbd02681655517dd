"""The Janus measure of eval/metrics.py: an asset whose back shows the object's front is caught."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from threedistill.core.cameras import Cameras
from threedistill.core.mesh_file import ColouredMesh
from threedistill.core.types import RenderOutput
from threedistill.eval.metrics import evaluate_toyworld
from threedistill.priors.toyworld.prior import catalogue_modes, render_ground_truth


class Truth:
    """The ground-truth side of a toyworld prior (modes and their renders)."""

    resolution = 32

    def modes(self, prompt: str) -> list[ColouredMesh]:
        return catalogue_modes(prompt)

    def render_ground_truth(self, mesh: ColouredMesh, cams: Cameras) -> RenderOutput:
        return render_ground_truth(mesh, cams, torch.device("cpu"))


class MeshAsset:
    """A 'representation' that renders a fixed mesh."""

    def __init__(self, mesh: ColouredMesh) -> None:
        self.mesh = mesh

    def render(self, cams: Cameras, background: torch.Tensor) -> RenderOutput:
        return render_ground_truth(self.mesh, cams, torch.device("cpu"))


def turned_around(mesh: ColouredMesh) -> ColouredMesh:
    """The mesh rotated 180 degrees about the up axis: its front where its back was."""
    return replace(mesh, vertices=(mesh.vertices * np.array([-1.0, -1.0, 1.0], dtype=np.float32)).astype(np.float32))


def test_the_true_duck_is_not_janus_and_a_turned_duck_is() -> None:
    duck = catalogue_modes("a yellow duck")[0]
    white = torch.ones(3)
    true = evaluate_toyworld(MeshAsset(duck), Truth(), "a yellow duck", 16, white)
    turned = evaluate_toyworld(MeshAsset(turned_around(duck)), Truth(), "a yellow duck", 16, white)
    assert true["back_psnr"] > 40 and true["back_front_psnr"] < true["back_psnr"]
    # the light is fixed in the world, so the turned duck is shaded differently: no exact match
    assert turned["back_front_psnr"] > turned["back_psnr"] + 3, turned
