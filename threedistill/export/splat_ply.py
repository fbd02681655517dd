"""Read and write Gaussian splats in the 3D Gaussian Splatting .ply layout.

The layout is the one of Kerbl et al.'s reference implementation, which the INRIA viewer,
SuperSplat and most splat tools read: one `vertex` element with float32 properties
x, y, z, nx, ny, nz, f_dc_0..2, f_rest_0..f_rest_{3(K-1)-1}, opacity, scale_0..2, rot_0..3.
`f_rest` is channel-major (all red rest coefficients, then green, then blue); opacity is a
logit, scales are logs and rotations are wxyz quaternions.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from ..core.atomic import atomic_path
from ..core.types import SplatTensors
from ..core.errors import UserError

_EXPECTED = "expected a 3D Gaussian Splatting .ply (x,y,z,f_dc_*,opacity,scale_*,rot_*)"
_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


def splat_property_names(num_sh: int) -> list[str]:
    """The 3DGS vertex property names, in file order, for `num_sh` SH coefficients per channel."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * (num_sh - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _check_shapes(means: np.ndarray, sh: np.ndarray, opacity: np.ndarray,
                  scales: np.ndarray, quats: np.ndarray) -> None:
    n = means.shape[0]
    expected = {"means": (means, (n, 3)), "opacity_logits": (opacity, (n,)),
                "log_scales": (scales, (n, 3)), "quats": (quats, (n, 4))}
    for name, (arr, shape) in expected.items():
        if arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
    if sh.ndim != 3 or sh.shape[0] != n or sh.shape[2] != 3 or math.isqrt(sh.shape[1]) ** 2 != sh.shape[1]:
        raise ValueError(f"sh has shape {sh.shape}, expected ({n}, K, 3) with K a perfect square")


def write_splat_ply(path: str | os.PathLike, means: Any, sh: Any, opacity_logits: Any,
                    log_scales: Any, quats: Any) -> Path:
    """Write splats atomically as a binary little-endian 3DGS .ply and return its path.

    means [N,3], sh [N,K,3] (K=(degree+1)^2, sh[:,0] is DC), opacity_logits [N],
    log_scales [N,3], quats [N,4] wxyz; torch tensors or numpy arrays.
    """
    means, sh, opacity = _to_numpy(means), _to_numpy(sh), _to_numpy(opacity_logits).reshape(-1)
    scales, quats = _to_numpy(log_scales), _to_numpy(quats)
    _check_shapes(means, sh, opacity, scales, quats)
    n, k = sh.shape[:2]
    f_rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, -1)
    columns = [means, np.zeros((n, 3), np.float32), sh[:, 0, :], f_rest,
               opacity[:, None], scales, quats]
    data = np.concatenate(columns, axis=1)
    names = splat_property_names(k)
    vertices = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertices[name] = data[:, i]
    ply = PlyData([PlyElement.describe(vertices, "vertex")], text=False, byte_order="<")
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        ply.write(f)
    return target


def _load_vertices(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"splat file '{path}' does not exist; pass the path of a 3D Gaussian Splatting .ply")
    try:
        ply = PlyData.read(str(path))
    except Exception as exc:  # plyfile raises several types for malformed input
        raise UserError(f"{path.name} is not a readable PLY file ({type(exc).__name__}); {_EXPECTED}") from exc
    if "vertex" not in ply:
        raise UserError(f"{path.name} has no 'vertex' element; {_EXPECTED}")
    vertices = ply["vertex"].data
    present = set(vertices.dtype.names or ())
    for name in _REQUIRED:
        if name not in present:
            raise UserError(f"{path.name} lacks property '{name}'; {_EXPECTED}")
    return vertices


def _num_sh(path: Path, vertices: np.ndarray) -> int:
    rest = [n for n in vertices.dtype.names or () if n.startswith("f_rest_")]
    k = len(rest) // 3 + 1
    if len(rest) % 3 or k not in (1, 4, 9, 16) or set(rest) != {f"f_rest_{i}" for i in range(len(rest))}:
        raise UserError(f"{path.name} has {len(rest)} f_rest_* properties; expected 0, 9, 24 or 45 "
                        f"(f_rest_0..f_rest_{{3(K-1)-1}}, SH degree 0-3)")
    return k


def _stack(vertices: np.ndarray, names: list[str]) -> torch.Tensor:
    cols = [np.asarray(vertices[name], dtype=np.float32) for name in names]
    return torch.from_numpy(np.stack(cols, axis=1) if cols else np.zeros((len(vertices), 0), np.float32))


def read_splat_ply(path: str | os.PathLike) -> SplatTensors:
    """Read a 3DGS .ply into float32 tensors: means, sh [N,K,3], opacity_logits, log_scales, quats."""
    path = Path(path)
    vertices = _load_vertices(path)
    k = _num_sh(path, vertices)
    n = len(vertices)
    dc = _stack(vertices, ["f_dc_0", "f_dc_1", "f_dc_2"])
    rest = _stack(vertices, [f"f_rest_{i}" for i in range(3 * (k - 1))])
    sh = torch.cat([dc[:, None, :], rest.reshape(n, 3, k - 1).transpose(1, 2)], dim=1).contiguous()
    return SplatTensors(**{
        "means": _stack(vertices, ["x", "y", "z"]),
        "sh": sh,
        "opacity_logits": _stack(vertices, ["opacity"]).reshape(n),
        "log_scales": _stack(vertices, ["scale_0", "scale_1", "scale_2"]),
        "quats": _stack(vertices, ["rot_0", "rot_1", "rot_2", "rot_3"]),
    })
