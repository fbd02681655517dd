"""The references of a toyworld posterior: flattened images in [-1,1] and their camera directions."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class ReferenceSet:
    """Rendered references of one prompt: images in [-1,1] and camera directions."""

    x: Tensor  # [N, D] float64
    sq_norm: Tensor  # [N] float64
    dirs: Tensor  # [N, 3] float64
