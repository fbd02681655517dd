"""Tile compositing of projected Gaussians for the torch splat backend (render/splats_torch.py).

1. **Binning** (`bin_gaussians`): each visible Gaussian goes to the tiles its opacity-aware box
   overlaps, in depth order, and then only to those where its alpha can reach 1/255 at some
   pixel centre: the minimum of its quadratic form over the tile's rectangle of pixel centres
   (`min_sigma_over_rect`) must be below ln(255 opacity). A pair that fails contributes exactly
   nothing (alpha is cut to 0 below 1/255), so dropping it changes no pixel; on trained assets
   it drops about a quarter of the pairs the boxes give.
2. **Chunks** (`tile_chunks`): tiles sorted by list length are batched, each chunk padded to
   its longest list, as large as the element budget allows while padding stays small.
3. **Compositing** (`_RasterizeTiles`), per chunk [T tiles, K Gaussians, P pixels]:
   - the exponent is separable over the tile's rows and columns, so
     log alpha = log o - (0.5 a dx^2 + b dx dy + 0.5 c dy^2) costs two passes over [T,K,P] from
     per-(Gaussian, row) and per-(Gaussian, column) terms [T,K,side];
   - then alpha (clamped at 0.999, cut below 1/255), the transmittance T_incl after each
     Gaussian (gsplat's early stop), the blend weights w and the accumulated features;
   - for the backward pass it keeps w, T_incl and r = alpha / (1 - alpha) (0 where clamped),
     only up to the last depth slot any pixel of the chunk still sees (later slots carry no
     gradient), while the kept terms fit in the memory budget; otherwise it recomputes them.
     With g_w = f . g_acc - g_trans and suffix_k = sum_{j>k} w_j g_w_j, the gradient of the
     exponent log alpha is r (T_incl g_w - suffix), and one [T*K,P] x [P,6] product gives every
     parameter's gradient from its pixel moments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .splats_torch import Projected

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
_LOG_ALPHA_FLOOR = -30.0  # far below log(1/255) = -5.5
_CULL_MARGIN = 1e-3  # extra exponent kept when culling pairs (far above float32 rounding)
_SLACK_ELEMS = 1 << 14  # padding a chunk may always carry (small lists are merged freely)


@dataclass
class TileBins:
    """Gaussian lists per tile, front to back: tile t holds
    `gauss_ids[offsets[t] : offsets[t] + counts[t]]` (flat indices b * N + n)."""

    gauss_ids: Tensor  # [n_pairs] long
    offsets: Tensor  # [B * tiles_y * tiles_x] long
    counts: Tensor  # [B * tiles_y * tiles_x] long
    tiles_x: int
    tiles_y: int


def min_sigma_over_rect(conic: Tensor, x0: Tensor, x1: Tensor, y0: Tensor, y1: Tensor) -> Tensor:
    """min of 0.5 a dx^2 + b dx dy + 0.5 c dy^2 over dx in [x0, x1], dy in [y0, y1] (all [M]).

    conic [M,3] positive definite. 0 when the rectangle holds the origin; otherwise the convex
    form is smallest on an edge, where it is a parabola minimised at a clamped point.
    """
    a, b, c = conic.unbind(-1)

    def edge(u: Tensor, lo: Tensor, hi: Tensor, a_u: Tensor, a_v: Tensor) -> Tensor:
        v = torch.minimum(torch.maximum(-b * u / a_v, lo), hi)
        return 0.5 * a_u * u * u + b * u * v + 0.5 * a_v * v * v

    best = torch.minimum(torch.minimum(edge(x0, y0, y1, a, c), edge(x1, y0, y1, a, c)),
                         torch.minimum(edge(y0, x0, x1, c, a), edge(y1, x0, x1, c, a)))
    inside = (x0 <= 0) & (x1 >= 0) & (y0 <= 0) & (y1 >= 0)
    return torch.where(inside, torch.zeros_like(best), best)


def bin_gaussians(proj: "Projected", width: int, height: int, tile_size: int, opacities: Optional[Tensor] = None) -> TileBins:
    """Assign visible Gaussians to the tiles they can touch, in depth order.

    With `opacities` [N], pairs whose alpha stays below 1/255 on the tile's pixel centres are
    dropped (module docstring); without, every tile the box overlaps is kept.
    """
    means2d, conics, depths, radii = proj.means2d, proj.conics, proj.depths, proj.radii
    B, N = depths.shape
    dev = depths.device
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    order = torch.argsort(depths.detach(), dim=1, stable=True)  # [B,N]
    flat = (order + torch.arange(B, device=dev)[:, None] * N).reshape(-1)
    flat = flat[(radii.amax(-1) > 0).reshape(-1)[flat]]  # visible Gaussians, view-major, front to back
    view = torch.div(flat, N, rounding_mode="floor")
    mean = means2d.detach().reshape(-1, 2)[flat]
    rad = radii.reshape(-1, 2)[flat].to(mean.dtype)
    lim = torch.tensor([tiles_x, tiles_y], device=dev)
    lo = torch.minimum(torch.floor((mean - rad) / tile_size).long().clamp_min(0), lim)
    hi = torch.minimum(torch.ceil((mean + rad) / tile_size).long().clamp_min(0), lim)
    span = (hi - lo).clamp_min(0)
    counts = span[:, 0] * span[:, 1]
    src = torch.repeat_interleave(counts)  # pair -> index into `flat`
    local = torch.arange(src.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[src]
    span_x = span[src, 0]
    tx = lo[src, 0] + local % span_x
    ty = lo[src, 1] + torch.div(local, span_x, rounding_mode="floor")
    if opacities is not None and src.numel():
        m = mean[src]
        x0 = tx.to(m.dtype) * tile_size + 0.5 - m[:, 0]
        y0 = ty.to(m.dtype) * tile_size + 0.5 - m[:, 1]
        sigma = min_sigma_over_rect(conics.detach().reshape(-1, 3)[flat][src], x0, x0 + (tile_size - 1), y0, y0 + (tile_size - 1))
        reach = torch.log(opacities.detach().clamp_min(ALPHA_MIN) / ALPHA_MIN)[flat % N][src]
        touch = sigma <= reach + _CULL_MARGIN
        src, tx, ty = src[touch], tx[touch], ty[touch]
    tile, perm = torch.sort((view[src] * tiles_y + ty) * tiles_x + tx, stable=True)  # keeps depth order
    tile_counts = torch.bincount(tile, minlength=B * tiles_y * tiles_x)
    return TileBins(
        gauss_ids=flat[src[perm]],
        offsets=torch.cumsum(tile_counts, 0) - tile_counts,
        counts=tile_counts,
        tiles_x=tiles_x,
        tiles_y=tiles_y,
    )


def tile_chunks(counts: Tensor, pixels_per_tile: int, max_elems: int, pad_ratio: float = 0.75) -> list[tuple[Tensor, int]]:
    """Group non-empty tiles into chunks of (tile ids, padded list length).

    Tiles are sorted by list length; a chunk holds at most `max_elems` tile x Gaussian x
    pixel entries, and its padding stays under 1 - pad_ratio of them (or under a small fixed
    amount, so short lists share a chunk). A single tile longer than the budget forms its own.
    """
    sorted_counts, tiles = torch.sort(counts, descending=True)
    sizes = sorted_counts.tolist()
    n = sum(1 for c in sizes if c > 0)
    chunks, i = [], 0
    while i < n:
        k = sizes[i]
        limit = min(n, i + max(1, max_elems // (k * pixels_per_tile)))
        j, waste = i + 1, 0
        while j < limit:
            extra = (k - sizes[j]) * pixels_per_tile
            if waste + extra > max((1.0 - pad_ratio) * (j + 1 - i) * k * pixels_per_tile, _SLACK_ELEMS):
                break
            waste += extra
            j += 1
        chunks.append((tiles[i:j], k))
        i = j
    return chunks


def _log_alpha(params: Tensor, local: Tensor) -> Tensor:
    """log o - sigma [T,K,side*side] (pixel rows major) from params [T,K,>=6] (tile-local means)."""
    mx, my, a, b, c, opac = params[..., :6].unbind(-1)
    dx = local - mx[..., None]  # [T,K,side] per column
    dy = local - my[..., None]  # per row
    col = (-0.5 * a[..., None]) * dx * dx
    row = torch.log(opac.clamp_min(0.0))[..., None] - (0.5 * c[..., None]) * dy * dy  # log 0 = -inf: alpha 0
    q = row[..., :, None] + col[..., None, :]  # [T,K,side,side]
    q.addcmul_((-b[..., None] * dx)[..., None, :], dy[..., :, None])
    return q.flatten(-2)


def _blend(params: Tensor, local: Tensor, grad_terms: bool) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Weights w, transmittance after each Gaussian T_incl and (with grad_terms) r, all [T,K,P]."""
    # exponents below _LOG_ALPHA_FLOOR give alpha < 1/255, cut to 0 below anyway; flooring them first
    # keeps exp from producing denormal floats, whose arithmetic is ~30x slower on x86 CPUs
    alpha = _log_alpha(params, local).clamp_min_(_LOG_ALPHA_FLOOR).exp_().clamp_max_(ALPHA_MAX)
    alpha = F.threshold(alpha, ALPHA_MIN, 0.0, inplace=True)
    # alpha reaches the 0.999 clamp (and has no gradient there) only where opacity does
    clamped = alpha >= ALPHA_MAX if grad_terms and bool((params[..., 5] >= ALPHA_MAX).any()) else None
    one_minus = torch.sub(1.0, alpha)
    # T never grows, so the kept Gaussians (T after them > T_MIN) are a prefix: gsplat stops
    # before the Gaussian that would bring T to <= 1e-4.
    t_incl = F.threshold(torch.cumprod(one_minus, dim=-2), T_MIN, 0.0, inplace=True)
    r = alpha.div_(one_minus)  # alpha / (1 - alpha); w = r T_incl = alpha T_before
    w = r * t_incl
    if not grad_terms:
        return w, t_incl, None
    return w, t_incl, r if clamped is None else r.masked_fill_(clamped, 0.0)


class _RasterizeTiles(torch.autograd.Function):
    """Composite a chunk of tiles (module docstring, step 3).

    params [T,K,6+F]: mean x, mean y (tile-local pixels), conic a, b, c, opacity, features.
    local [side]: tile-local pixel-centre coordinates. keep: whether the backward pass may keep
    the per-pixel terms (else it recomputes them). Returns acc [T,P,F] and transmittance [T,P].
    """

    @staticmethod
    def forward(ctx, params: Tensor, local: Tensor, keep: bool) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        w, t_incl, r = _blend(params, local, grad_terms=keep)
        acc = torch.bmm(w.transpose(1, 2), params[..., 6:])
        trans = 1.0 - w.sum(dim=1)
        if keep:
            assert r is not None
            live = int((t_incl.amax(dim=(0, 2)) > 0).sum())  # depth slots any pixel still sees
            ctx.terms = (w[:, :live], t_incl[:, :live], r[:, :live])
        else:
            ctx.terms = None
        ctx.save_for_backward(params, local)
        return acc, trans

    @staticmethod
    def backward(ctx, g_acc: Tensor, g_trans: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        params, local = ctx.saved_tensors
        if ctx.terms is None:
            w, t_incl, r = _blend(params, local, grad_terms=True)
        else:
            w, t_incl, r = ctx.terms
        ctx.terms = None
        assert r is not None
        T, K, C = params.shape
        live = w.shape[1]
        p = params[:, :live]
        g_params = params.new_zeros(T, K, C)
        g_params[:, :live, 6:] = torch.bmm(w, g_acc)  # features
        g_w = torch.bmm(p[..., 6:], g_acc.transpose(1, 2)).sub_(g_trans[:, None, :])  # dL/dw
        contrib = w * g_w
        suffix = contrib.sum(dim=1, keepdim=True) - contrib.cumsum_(dim=1)  # sum_{j>k} w_j g_w_j
        g_q = torch.mul(t_incl, g_w).sub_(suffix).mul_(r)  # dL/d(log alpha) = alpha dL/dalpha (0 where clamped or cut)
        side = local.numel()
        px, py = local.repeat(side), local.repeat_interleave(side)
        phi = torch.stack([torch.ones_like(px), px, py, px * px, px * py, py * py], dim=-1)  # [P,6]
        m0, mx_, my_, mxx, mxy, myy = (g_q.reshape(T * live, -1) @ phi).reshape(T, live, 6).unbind(-1)
        x, y, a, b, c, opac = p[..., :6].unbind(-1)
        s_x, s_y = mx_ - x * m0, my_ - y * m0  # sum g (px - x), sum g (py - y)
        s_xx = mxx - 2 * x * mx_ + x * x * m0
        s_xy = mxy - x * my_ - y * mx_ + x * y * m0
        s_yy = myy - 2 * y * my_ + y * y * m0
        # log alpha = log o - sigma: d/d mean = conic d, d/d conic = -(0.5 dx^2, dx dy, 0.5 dy^2)
        g_opac = m0 / torch.where(opac > 0, opac, torch.ones_like(opac))
        grads = [a * s_x + b * s_y, b * s_x + c * s_y, -0.5 * s_xx, -s_xy, -0.5 * s_yy, g_opac]
        g_params[:, :live, :6] = torch.stack(grads, dim=-1)
        return g_params, None, None


def composite_tiles(table: Tensor, bins: TileBins, tile_size: int, max_elems: int, keep_bytes: float) -> tuple[Tensor, Tensor]:
    """Accumulated features [tiles, P, F] and transmittance [tiles, P] of every tile.

    table [B*N + 1, 6 + F]: per (view, Gaussian) mean, conic, opacity, features; the last row
    is the zero-opacity padding entry. Per-pixel terms are kept for the backward pass while
    they fit in `keep_bytes` (3 float32 tensors per chunk entry).
    """
    local = torch.arange(tile_size, device=table.device, dtype=table.dtype) + 0.5 - 0.5 * tile_size
    grad = torch.is_grad_enabled() and table.requires_grad
    done, accs, transes = [], [], []
    budget = keep_bytes if grad else 0.0
    for tiles, k in tile_chunks(bins.counts, tile_size * tile_size, max_elems):
        need = 3 * 4 * len(tiles) * k * tile_size * tile_size
        keep = grad and need <= budget
        budget -= need if keep else 0
        acc, trans = _RasterizeTiles.apply(_chunk_params(table, bins, tiles, k, tile_size), local, keep)
        done.append(tiles)
        accs.append(acc)
        transes.append(trans)
    acc_all = table.new_zeros(bins.counts.numel(), tile_size * tile_size, table.shape[1] - 6)
    trans_all = table.new_ones(bins.counts.numel(), tile_size * tile_size)
    if done:
        order = torch.cat(done)
        acc_all = acc_all.index_copy(0, order, torch.cat(accs))
        trans_all = trans_all.index_copy(0, order, torch.cat(transes))
    return acc_all, trans_all


def _chunk_params(table: Tensor, bins: TileBins, tiles: Tensor, k: int, tile_size: int) -> Tensor:
    """[T,K,C] rows of `table` for each tile's list (padded to k), means tile-local."""
    slot = torch.arange(k, device=table.device)
    valid = slot < bins.counts[tiles, None]  # [T,K]
    ids = bins.gauss_ids[torch.where(valid, bins.offsets[tiles, None] + slot, 0)]
    ids = torch.where(valid, ids, table.shape[0] - 1)
    t_in_view = tiles % (bins.tiles_x * bins.tiles_y)
    centre = (torch.stack([t_in_view % bins.tiles_x, t_in_view // bins.tiles_x], -1) + 0.5) * tile_size
    return table[ids] - F.pad(centre.to(table.dtype), (0, table.shape[1] - 2))[:, None, :]


def untile(x: Tensor, bins: TileBins, B: int, H: int, W: int) -> Tensor:
    """[B * tiles, ts*ts, C] tile-major values -> [B,H,W,C] image."""
    ts = int(round(math.sqrt(x.shape[1])))
    x = x.view(B, bins.tiles_y, bins.tiles_x, ts, ts, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, bins.tiles_y * ts, bins.tiles_x * ts, -1)[:, :H, :W]
