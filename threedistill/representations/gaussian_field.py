"""3D Gaussians as a field for mesh extraction: composited opacity and opacity-weighted colour.

See extract.py for the field protocol and for why the surface is a calibrated level of
F(x) = 1 - prod_i (1 - o_i exp(-0.5 (x - m_i)^T Sigma_i^-1 (x - m_i))).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from ..core.types import SplatTensors

from ..render.splats_torch import quat_to_rotmat
from .sh import sh_to_rgb

ALPHA_MIN = 1.0 / 255.0
"""Per-Gaussian alphas below this contribute nothing (as in the splat renderer)."""
_EXPONENT_CAP = 30.0  # exp(-30) * opacity < ALPHA_MIN


class GaussianField:
    """The composited opacity field of 3D Gaussians and their opacity-weighted colour.

    Computed on the device of the Gaussians' tensors; `density`/`albedo` return CPU tensors.
    Evaluation is exact up to the ALPHA_MIN cutoff: each Gaussian is binned into the cells of a
    uniform grid that its cutoff ellipsoid's bounding box touches, and every query point is
    evaluated against the Gaussians of its cell only, in chunks of at most `pair_budget`
    (point, Gaussian) pairs, so memory stays bounded for any number of points.
    """

    surface_level = 0.5

    def __init__(self, means: Tensor, quats: Tensor, log_scales: Tensor, opacity_logits: Tensor, sh_dc: Tensor,
                 pair_budget: Optional[int] = None) -> None:
        self.device = means.device
        means, quats, log_scales = means.detach().float(), quats.detach().float(), log_scales.detach().float()
        opacity = torch.sigmoid(opacity_logits.detach().float()).reshape(-1)
        keep = opacity > ALPHA_MIN
        scales = log_scales[keep].exp()
        self.means, self.quats, self.scales = means[keep], quats[keep], scales
        self.opacity = opacity[keep]
        self.rgb = sh_to_rgb(sh_dc.detach().float().reshape(-1, 1, 3)[keep], None, 0)
        # q = |M d|^2 with M = S^-1 R^T, i.e. d^T Sigma^-1 d for Sigma = R S S R^T.
        self.whiten = quat_to_rotmat(quats[keep]).transpose(-1, -2) / scales[:, :, None]
        # a_i >= ALPHA_MIN only inside q <= 2 ln(o_i / ALPHA_MIN): a ball of this radius holds it.
        self.radius = scales.amax(-1) * torch.sqrt(2.0 * torch.log(self.opacity / ALPHA_MIN))
        # per Gaussian, gathered once per (point, Gaussian) pair: mean, the six entries of
        # Sigma^-1 = M^T M (off-diagonals doubled), log opacity, colour
        A = self.whiten.transpose(-1, -2) @ self.whiten
        conic = torch.stack([A[:, 0, 0], A[:, 1, 1], A[:, 2, 2], 2 * A[:, 0, 1], 2 * A[:, 0, 2], 2 * A[:, 1, 2]], -1)
        self._table = torch.cat([self.means, conic, torch.log(self.opacity)[:, None], self.rgb], 1)
        self.pair_budget = int(pair_budget or (1 << 23 if self.device.type == "cuda" else 1 << 20))
        self._build_cells()

    @classmethod
    def from_splat_tensors(cls, tensors: SplatTensors, **kwargs: Any) -> "GaussianField":
        """From `Gaussians.as_splats()` (or `read_splat_ply`): means, sh, opacity_logits, log_scales, quats."""
        return cls(tensors["means"], tensors["quats"], tensors["log_scales"], tensors["opacity_logits"], tensors["sh"][:, :1], **kwargs)

    def _build_cells(self) -> None:
        n = self.means.shape[0]
        if n == 0:
            dev = self.device
            self.lo, self.cell, self.dims = torch.zeros(3, device=dev), 1.0, torch.ones(3, dtype=torch.long, device=dev)
            self.cell_start, self.cell_gauss = torch.zeros(2, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.long, device=dev)
            return
        box_lo, box_hi = self.means - self.radius[:, None], self.means + self.radius[:, None]
        self.lo = box_lo.amin(0)
        extent = float((box_hi.amax(0) - self.lo).max())
        # cells of a third of the median cutoff radius (measured fastest), at most 96 per axis,
        # coarser while the (Gaussian, cell) table would exceed 16M entries
        self.cell = max(float(self.radius.median()) / 3.0, extent / 96.0, 1e-6)
        while True:
            self.dims = ((box_hi.amax(0) - self.lo) / self.cell).floor().long() + 1
            c_lo = ((box_lo - self.lo) / self.cell).floor().long()
            c_hi = torch.minimum(((box_hi - self.lo) / self.cell).floor().long(), self.dims - 1)
            span = c_hi - c_lo + 1  # [N,3]
            counts = span.prod(-1)
            if int(counts.sum()) <= 1 << 24:
                break
            self.cell *= 1.5
        g = torch.repeat_interleave(torch.arange(n, device=self.device), counts)
        offset = torch.arange(int(counts.sum()), device=self.device) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        sx, sy = span[g, 0], span[g, 1]
        cx = c_lo[g, 0] + offset % sx
        cy = c_lo[g, 1] + (offset // sx) % sy
        cz = c_lo[g, 2] + offset // (sx * sy)
        cell_id = (cx * self.dims[1] + cy) * self.dims[2] + cz
        order = torch.argsort(cell_id, stable=True)
        self.cell_gauss = g[order]
        n_cells = int(self.dims.prod())
        self.cell_start = torch.zeros(n_cells + 1, dtype=torch.long, device=self.device)
        self.cell_start[1:] = torch.bincount(cell_id, minlength=n_cells).cumsum(0)

    @torch.no_grad()
    def _accumulate(self, points: Tensor, colour: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Per point: sum log(1 - a_i), sum a_i and sum a_i rgb_i over the Gaussians (on the CPU);
        without `colour` the last two stay 0 (the density needs only the first)."""
        dev = self.device
        points = points.detach().float().to(dev).reshape(-1, 3)
        P = points.shape[0]
        log_t, wsum, wrgb = torch.zeros(P, device=dev), torch.zeros(P, device=dev), torch.zeros(P, 3, device=dev)
        if self.cell_gauss.numel() == 0 or P == 0:
            return log_t, wsum, wrgb
        c = ((points - self.lo) / self.cell).floor().long()
        inside = ((c >= 0) & (c < self.dims)).all(-1)
        idx = inside.nonzero().squeeze(1)
        c = c[idx]
        cell_id = (c[:, 0] * self.dims[1] + c[:, 1]) * self.dims[2] + c[:, 2]
        start = self.cell_start[cell_id]
        counts = self.cell_start[cell_id + 1] - start
        for a, b in _runs(counts, self.pair_budget):
            cnt = counts[a:b]
            local = torch.repeat_interleave(torch.arange(b - a, device=dev), cnt)
            offset = torch.arange(local.numel(), device=dev) - torch.repeat_interleave(cnt.cumsum(0) - cnt, cnt)
            gid = self.cell_gauss.index_select(0, start[a:b].index_select(0, local) + offset)
            pid = idx[a:b].index_select(0, local)
            g = self._table.index_select(0, gid)  # [pairs, 13]
            dx, dy, dz = (points.index_select(0, pid) - g[:, :3]).unbind(-1)
            k = g[:, 3:9].unbind(-1)
            q = k[0] * dx * dx + k[1] * dy * dy + k[2] * dz * dz + k[3] * dx * dy + k[4] * dx * dz + k[5] * dy * dz
            # 0.5 q above _EXPONENT_CAP gives alpha < 1/255 (cut to 0 below) and would underflow
            # exp into denormal floats, whose arithmetic is far slower
            alpha = torch.exp(g[:, 9] - (0.5 * q).clamp_max_(_EXPONENT_CAP)).clamp_max_(0.999)
            alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
            log_t.index_add_(0, pid, torch.log1p(-alpha))
            if colour:
                wsum.index_add_(0, pid, alpha)
                wrgb.index_add_(0, pid, alpha[:, None] * g[:, 10:13])
        return log_t.cpu(), wsum.cpu(), wrgb.cpu()

    @torch.no_grad()
    def render_alpha(self, cams: Any) -> Tensor:
        """The splat renderer's alpha [B,1,H,W] (returned on the CPU) for calibration."""
        from ..render.splats import render_splats

        background = torch.ones(3, device=self.device)
        return render_splats(self.means, self.quats, self.scales, self.opacity, self.rgb, cams.to(self.device), background).alpha.cpu()

    def density(self, points: Tensor) -> Tensor:
        """Composited opacity 1 - prod(1 - a_i(x)) in [0, 1) at points [N,3] -> [N]."""
        return -torch.expm1(self._accumulate(points, colour=False)[0])

    def albedo(self, points: Tensor) -> Tensor:
        """Opacity-weighted mean colour (SH degree 0) at points [N,3] -> [N,3] (grey where empty)."""
        _, wsum, wrgb = self._accumulate(points)
        eps = 1e-6
        return ((wrgb + eps * 0.5) / (wsum[:, None] + eps)).clamp(0.0, 1.0)


def _runs(counts: Tensor, budget: int) -> list[tuple[int, int]]:
    """Consecutive index runs whose counts sum to at most `budget` (or a single item)."""
    cum = counts.cumsum(0)
    runs, start, n = [], 0, counts.numel()
    while start < n:
        base = int(cum[start - 1]) if start else 0
        end = max(int(torch.searchsorted(cum, torch.tensor(base + budget, device=cum.device), right=True)), start + 1)
        runs.append((start, end))
        start = end
    return runs
