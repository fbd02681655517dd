"""Keep Adam's moments when a parameter tensor changes size (densify / prune)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def replace_rows(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter, source: Tensor, fresh: Tensor) -> None:
    """Swap `old` for `new` in the optimiser; row i of the moments comes from row source[i] of the
    old moments, and rows where `fresh` is True start from zero (new Gaussians)."""
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
    state = optimizer.state.pop(old, None)
    if not state:
        return
    moved = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.shape[:1] == old.shape[:1] and value.dim() > 0:
            value = value[source].clone()
            value[fresh] = 0.0
        moved[key] = value
    optimizer.state[new] = moved
