"""The references of a toyworld posterior, and the posterior weights over them computed with
work only where it can matter.

The exact posterior of toyworld (prior.py) is a softmax over N references of

    logit_i = (2 a x_t . x_i - a^2 |x_i|^2) / (2 var) + kappa c . c_i        (then / T)

and a dense pass costs two [B,D] x [D,N] float64 products per call. `sparse_posterior` gives
the same weights up to a total mass `tol` (1e-9 by default) it proves negligible:

1. Columns (pixels) where every reference has the same value add the same amount to every
   logit, so they are dropped from the products (exact: a softmax ignores per-row constants);
   on a catalogue object about 40 % of the pixels are background in every reference.
2. A float32 pass over those columns gives every logit with a rigorous error bound: for any
   summation order, |fl(x . y) - x . y| <= gamma_n sum_k |x_k y_k|, gamma_n = n u / (1 - n u),
   u = 2^-24, plus one rounding of x_t to float32 (references are exact in float32: they are
   stored as float16).
3. A reference whose upper bound lies more than T ln(N / tol) below the largest lower bound has
   weight below tol / N whatever its exact logit, so all of them together carry less than tol.
   The others (the candidates; for most noise levels a small fraction) get exact float64
   logits, the softmax is taken over them, and the posterior mean is the weighted sum of only
   the references whose weight is at least tol / N (the rest again carry less than tol).
   References are stored sorted by camera direction (elevation band, then azimuth), so the
   candidates of a view fall into a few runs of consecutive blocks of rows, which the float64
   products read in place: gathering rows costs more than the products themselves.

The posterior mean then differs from the dense one by at most ~2 tol per pixel (pixel values lie
in [-1, 1]). Rows with non-finite inputs fall back to the dense computation.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

SKIP_MASS = 1e-9
"""Largest total posterior weight the sparse path may leave out (per query row)."""
_U32 = 2.0**-24  # unit roundoff of float32
BLOCK = 32
"""References per block: the sparse path works on whole blocks of references with nearby cameras,
which are contiguous rows (views, never copies)."""
_BAND_DEGREES = 15.0  # elevation bands of the direction order


class ReferenceSet:
    """Rendered references of one prompt: images in [-1,1] and camera directions.

    Built from x [N,D] (flattened images) and dirs [N,3]. Internally the references are sorted by
    camera direction (`order`: stored row -> input index) and kept as float64 values of the
    columns where they differ (`xc`), a float32 copy of those (`x32`), the values of the columns
    where all agree, squared norms and directions. `x`, `dirs` and `sq_norm` are in input order.
    """

    def __init__(self, x: Tensor, dirs: Tensor, sq_norm: Optional[Tensor] = None) -> None:
        x = x.double()
        n = x.shape[0]
        self.dim = x.shape[1]
        self.dirs = dirs
        self.sq_norm = (x * x).sum(1) if sq_norm is None else sq_norm
        self.order = direction_order(dirs) if n > 0 else torch.zeros(0, dtype=torch.long, device=x.device)
        self.sorted_dirs = dirs[self.order]
        self.sorted_sq_norm = self.sq_norm[self.order]
        varying = (x != x[:1]).any(0) if n > 0 else torch.ones(self.dim, dtype=torch.bool, device=x.device)
        self.cols = varying.nonzero().squeeze(1)
        self.fixed_cols = (~varying).nonzero().squeeze(1)
        self.fixed_values = x[0, self.fixed_cols] if n > 0 else x.new_zeros(0)
        self.xc = x[self.order][:, self.cols].contiguous()
        self.x32 = self.xc.float()
        self.exact32 = bool((self.x32.double() == self.xc).all())  # float16/float32 values: exact
        self.abs_max = float(self.x32.abs().max()) if self.x32.numel() else 0.0

    def __len__(self) -> int:
        return self.xc.shape[0]

    @property
    def x(self) -> Tensor:
        """The references [N,D] float64, in input order."""
        full = self.xc.new_empty(len(self), self.dim)
        full[:, self.cols] = self.xc
        full[:, self.fixed_cols] = self.fixed_values
        return full[torch.argsort(self.order)]


def direction_order(dirs: Tensor) -> Tensor:
    """A permutation of N directions [N,3] (z up) by elevation band, then azimuth."""
    d = dirs.double()
    elevation = torch.rad2deg(torch.asin(d[:, 2].clamp(-1.0, 1.0)))
    azimuth = torch.rad2deg(torch.atan2(d[:, 1], d[:, 0]))  # [-180, 180]
    key = torch.floor(elevation / _BAND_DEGREES) * 1000.0 + azimuth
    return torch.argsort(key, stable=True)


def _float32_exact() -> bool:
    """float32 products are computed in float32 (no TF32/bfloat16 shortcut the bound would not cover)."""
    return torch.get_float32_matmul_precision() == "highest"


def sparse_posterior(x_t: Tensor, a: Tensor, var: Tensor, refs: ReferenceSet, cam_dirs: Optional[Tensor], kappa: float,
                     temperature: float, tol: float = SKIP_MASS) -> tuple[Tensor, Tensor]:
    """Posterior weights over the references that matter: (ids [K] into the input order, weights [B,K]).

    x_t [B,D] float64; a, var [B,1] float64 (x_t | i ~ N(a x_i, var I)). Every row's weights
    sum to 1; the references left out carry at most `tol` of each row's mass (module
    docstring). With tol = 0 every reference is kept: the dense posterior.
    """
    runs, w = _sparse_weights(x_t, a, var, refs, cam_dirs, kappa, temperature, tol)
    stored = torch.cat([torch.arange(lo, hi, device=x_t.device) for lo, hi in runs])
    return refs.order[stored], w


def posterior_mean(x_t: Tensor, a: Tensor, var: Tensor, refs: ReferenceSet, cam_dirs: Optional[Tensor], kappa: float,
                   temperature: float, tol: float = SKIP_MASS) -> Tensor:
    """sum_i w_i x_i [B,D] with the weights of `sparse_posterior` (the same bound on what it leaves out)."""
    runs, w = _sparse_weights(x_t, a, var, refs, cam_dirs, kappa, temperature, tol)
    out = w.new_empty(w.shape[0], refs.dim)
    acc, start = None, 0
    for lo, hi in runs:
        part = w[:, start : start + hi - lo] @ refs.xc[lo:hi]
        acc = part if acc is None else acc.add_(part)
        start += hi - lo
    assert acc is not None
    out[:, refs.cols] = acc
    out[:, refs.fixed_cols] = w.sum(1, keepdim=True) * refs.fixed_values[None]
    return out


def _sparse_weights(x_t: Tensor, a: Tensor, var: Tensor, refs: ReferenceSet, cam_dirs: Optional[Tensor], kappa: float,
                    temperature: float, tol: float) -> tuple[list[tuple[int, int]], Tensor]:
    """(runs of stored rows [lo, hi), weights [B, sum of run lengths]) of the references kept."""
    N = len(refs)
    kernel = None if cam_dirs is None or kappa == 0.0 else kappa * (cam_dirs @ refs.sorted_dirs.T)
    xv = x_t[:, refs.cols]
    if tol <= 0.0 or N <= 2 * BLOCK or not refs.exact32 or not _float32_exact() or not bool(torch.isfinite(xv).all()):
        runs = [(0, N)]
    else:
        approx = _logits(xv.float(), refs, [(0, N)], a, var, kernel)
        n = refs.cols.numel()
        gamma = (n + 2) * _U32 / (1.0 - (n + 2) * _U32)
        err = (a.abs() / var) * (gamma * refs.abs_max * xv.abs().sum(1, keepdim=True))  # [B,1] bound on |approx - exact|
        floor = (approx - err).amax(dim=1, keepdim=True) - temperature * math.log(N / tol)
        runs = _block_runs(((approx + err) >= floor).any(0), N)  # candidates of any row
    w = torch.softmax(_logits(xv, refs, runs, a, var, kernel) / temperature, dim=-1)
    if runs != [(0, N)] or tol > 0.0:
        kept = _block_runs(_scatter(runs, (w >= tol / N).any(0), N), N)
        if kept != runs:
            w = w[:, _positions(runs, kept, w.device)]
            runs = kept
    return runs, w / w.sum(1, keepdim=True)


def _logits(xv: Tensor, refs: ReferenceSet, runs: list[tuple[int, int]], a: Tensor, var: Tensor, kernel: Optional[Tensor]) -> Tensor:
    """Logits [B, rows of the runs] (before the temperature) from the varying columns xv of x_t
    (float32: the bound pass; float64: exact up to a per-row constant)."""
    table = refs.x32 if xv.dtype == torch.float32 else refs.xc
    dot = torch.cat([xv @ table[lo:hi].T for lo, hi in runs], dim=1).double()
    sq = torch.cat([refs.sorted_sq_norm[lo:hi] for lo, hi in runs])
    logits = (2.0 * a * dot - a * a * sq[None]) / (2.0 * var)
    if kernel is None:
        return logits
    return logits + torch.cat([kernel[:, lo:hi] for lo, hi in runs], dim=1)


def _block_runs(mask: Tensor, n: int) -> list[tuple[int, int]]:
    """Runs [lo, hi) of consecutive BLOCK-row blocks holding any True of mask [n]."""
    blocks = -(-n // BLOCK)
    padded = torch.zeros(blocks * BLOCK, dtype=torch.bool, device=mask.device)
    padded[:n] = mask
    active = padded.view(blocks, BLOCK).any(1).tolist()
    runs: list[tuple[int, int]] = []
    for b, on in enumerate(active):
        if not on:
            continue
        lo, hi = b * BLOCK, min((b + 1) * BLOCK, n)
        if runs and runs[-1][1] == lo:
            runs[-1] = (runs[-1][0], hi)
        else:
            runs.append((lo, hi))
    return runs


def _scatter(runs: list[tuple[int, int]], values: Tensor, n: int) -> Tensor:
    """A mask [n] holding `values` (one per row of the runs) at the runs' rows."""
    mask = torch.zeros(n, dtype=torch.bool, device=values.device)
    start = 0
    for lo, hi in runs:
        mask[lo:hi] = values[start : start + hi - lo]
        start += hi - lo
    return mask


def _positions(runs: list[tuple[int, int]], sub: list[tuple[int, int]], device: torch.device) -> Tensor:
    """Column positions, within the concatenated `runs`, of the rows of `sub` (a subset of them)."""
    offset, start = [], 0
    for lo, hi in runs:
        offset.append((lo, hi, start))
        start += hi - lo
    cols = []
    for lo, hi in sub:
        base = next(s - rlo for rlo, rhi, s in offset if rlo <= lo and hi <= rhi)
        cols.append(torch.arange(lo + base, hi + base, device=device))
    return torch.cat(cols)
