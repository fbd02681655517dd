"""Real spherical harmonics up to degree 3 (the 3D Gaussian Splatting convention)."""

from __future__ import annotations

import torch
from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """(degree + 1)^2 coefficients per colour channel."""
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Basis values [..., (degree+1)^2] for unit directions [..., 3]."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [C2[0] * xy, C2[1] * yz, C2[2] * (2 * zz - xx - yy), C2[3] * xz, C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            C3[0] * y * (3 * xx - yy),
            C3[1] * xy * z,
            C3[2] * y * (4 * zz - xx - yy),
            C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            C3[4] * x * (4 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def sh_to_rgb(sh: Tensor, dirs: Tensor | None, degree: int) -> Tensor:
    """Colours from SH coefficients sh [N,K,3] seen along dirs [B,N,3] -> [B,N,3] (or [N,3] for degree 0).

    rgb = clamp(sum_k basis_k * sh_k + 0.5, 0, 1), as in 3DGS (plus an upper clamp).
    """
    if degree == 0 or dirs is None:
        return (C0 * sh[:, 0] + 0.5).clamp(0.0, 1.0)
    basis = sh_basis(degree, dirs)  # [B,N,K]
    k = num_sh_bases(degree)
    return (torch.einsum("bnk,nkc->bnc", basis, sh[:, :k]) + 0.5).clamp(0.0, 1.0)


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """The DC coefficient that renders `rgb` when the other coefficients are zero."""
    return (rgb - 0.5) / C0
