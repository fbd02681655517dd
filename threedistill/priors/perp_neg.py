"""Perp-Neg's per-view prompts (GUIDANCE.md 13.3; threestudio's `get_text_embeddings_perp_neg`).

Each camera gets a positive embedding interpolated between the view phrases and two negative
view embeddings with weights from shifted exponential falloffs f(r) = a e^(-b r) + c:

- |azimuth| < 90 (front-side): r = 1 - |az| / 90; positive r front + (1 - r) side;
  negatives [front, side] with weights [-f_fs(r), -f_sf(1 - r)];
- otherwise (side-back): r = 2 - |az| / 90; positive r side + (1 - r) back;
  negatives [side, front] with weights [-f_sb(r), -f_fsb(r)];
- overhead (elevation above the overhead threshold): the overhead embedding, no negatives
  (two placeholder rows of weight 0).

Priors whose embeddings are ids (toyworld) cannot blend embeddings: their positive is the
camera's hard view label; the negatives and weights are the same.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.cameras import VIEW_LABELS, Cameras, ViewLabelConfig, wrapped_abs_azimuth

Falloff = tuple[float, float, float]
FRONT, SIDE, BACK, OVERHEAD = (VIEW_LABELS.index(v) for v in ("front", "side", "back", "overhead"))


def falloff(f: Falloff, r: Tensor) -> Tensor:
    """threestudio's shifted exponential decay a e^(-b r) + c."""
    a, b, c = f
    return a * torch.exp(-b * r) + c


def perp_neg_weights(cams: Cameras, labels: ViewLabelConfig, f_fs: Falloff, f_sf: Falloff, f_sb: Falloff,
                     f_fsb: Falloff) -> tuple[Tensor, Tensor, Tensor]:
    """(positive weights [B, len(VIEW_LABELS)], negative view indices [B,2], negative weights [B,2]), float64 on the CPU."""
    az = wrapped_abs_azimuth(cams).cpu()
    B = len(az)
    pos = torch.zeros(B, len(VIEW_LABELS), dtype=torch.float64)
    neg_idx = torch.zeros(B, 2, dtype=torch.long)
    neg_w = torch.zeros(B, 2, dtype=torch.float64)
    near = az < 90.0
    r_fs = 1.0 - az / 90.0
    r_sb = 2.0 - az / 90.0
    pos[:, FRONT] = torch.where(near, r_fs, 0.0)
    pos[:, SIDE] = torch.where(near, 1.0 - r_fs, r_sb)
    pos[:, BACK] = torch.where(near, 0.0, 1.0 - r_sb)
    neg_idx[:, 0] = torch.where(near, FRONT, SIDE)
    neg_idx[:, 1] = torch.where(near, SIDE, FRONT)
    neg_w[:, 0] = torch.where(near, -falloff(f_fs, r_fs), -falloff(f_sb, r_sb))
    neg_w[:, 1] = torch.where(near, -falloff(f_sf, 1.0 - r_fs), -falloff(f_fsb, r_sb))
    up = cams.elevation.double().cpu() > labels.overhead_threshold
    pos[up] = 0.0
    pos[up, OVERHEAD] = 1.0
    neg_w[up] = 0.0
    return pos, neg_idx, neg_w
