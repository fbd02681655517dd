"""Tile compositing of projected Gaussians for the torch splat backend (render/splats_torch.py).

1. **Binning** (`bin_gaussians`): each visible Gaussian goes to the tiles its opacity-aware box
   overlaps, in depth order, and then only to those where its alpha can reach 1/255 at some
   pixel centre: the minimum of its quadratic form over the tile's rectangle of pixel centres
   (`min_sigma_over_rect`) must be below ln(255 opacity). A pair that fails contributes exactly
   nothing (alpha is cut to 0 below 1/255), so dropping it changes no pixel; on trained assets
   it drops about a quarter of the pairs the boxes give.
2. **Chunks** (`tile_chunks`): tiles sorted by list length are batched, each chunk padded to
   its longest list, as large as the element budget allows while padding stays small.
3. **Compositing** (`chunk_forward`, `chunk_backward`), per chunk [T tiles, K Gaussians, P pixels],
   all chunks of a render in one autograd node (`_CompositeTiles`):
   - log alpha = log o - sigma is a quadratic in the pixel centre: one [T*K,6] x [6,P] float64
     product of per-pair coefficients (computed once per render) gives it at every pixel with
     the direct formula's precision, where the float32 terms would cancel;
   - then alpha (clamped at 0.999, cut below 1/255), the transmittance T_incl after each
     Gaussian (gsplat's early stop), the blend weights w and the accumulated features;
   - for the backward pass it keeps w, T_incl and r = alpha / (1 - alpha) (0 where clamped),
     only up to the last depth slot any pixel of the chunk still sees (later slots carry no
     gradient), while the kept terms fit in the memory budget; otherwise it recomputes them.
     With g_w = f . g_acc - g_trans and suffix_k = sum_{j>k} w_j g_w_j, the gradient of the
     exponent log alpha is r (T_incl g_w - suffix), and one [T*K,P] x [P,6] product gives every
     parameter's gradient from its pixel moments; each chunk's gradient is added into the
     table rows of its Gaussians.
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

    conic [M,3] positive definite. The form is convex with its minimum at the origin, so over
    the rectangle it is smallest on one of the two edges nearest the origin (on a far edge or
    at the far corner the gradient would point back inside, which positive definiteness
    rules out): the edges dx = clamp(0, x0, x1) and dy = clamp(0, y0, y1), each a parabola
    minimised at a clamped point. Inside the rectangle both give 0.
    """
    a, b, c = conic.unbind(-1)

    def edge(u: Tensor, lo: Tensor, hi: Tensor, a_u: Tensor, a_v: Tensor) -> Tensor:
        v = torch.minimum(torch.maximum(-b * u / a_v, lo), hi)
        return 0.5 * a_u * u * u + b * u * v + 0.5 * a_v * v * v

    zero = torch.zeros_like(x0)
    near_x = torch.minimum(torch.maximum(zero, x0), x1)
    near_y = torch.minimum(torch.maximum(zero, y0), y1)
    return torch.minimum(edge(near_x, y0, y1, a, c), edge(near_y, x0, x1, c, a))


def bin_gaussians(proj: "Projected", width: int, height: int, tile_size: int, opacities: Optional[Tensor] = None) -> TileBins:
    """Assign visible Gaussians to the tiles they can touch, in depth order.

    With `opacities` [N], pairs whose alpha stays below 1/255 on the tile's pixel centres are
    dropped (module docstring); without, every tile the box overlaps is kept.
    """
    B, N = proj.depths.shape
    dev = proj.depths.device
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    order = torch.argsort(proj.depths.detach(), dim=1, stable=True)  # [B,N]
    flat = (order + torch.arange(B, device=dev)[:, None] * N).reshape(-1)
    flat = flat[(proj.radii.amax(-1) > 0).reshape(-1)[flat]]  # visible Gaussians, view-major, front to back
    mean = proj.means2d.detach().reshape(-1, 2).index_select(0, flat)
    rad = proj.radii.reshape(-1, 2).index_select(0, flat).to(mean.dtype)
    lim = torch.tensor([tiles_x, tiles_y], device=dev)
    lo = torch.minimum(torch.floor((mean - rad) / tile_size).long().clamp_min(0), lim)
    span = (torch.minimum(torch.ceil((mean + rad) / tile_size).long().clamp_min(0), lim) - lo).clamp_min(0)
    counts = span[:, 0] * span[:, 1]
    src = torch.repeat_interleave(counts)  # pair -> index into `flat`
    local = torch.arange(src.numel(), device=dev) - (torch.cumsum(counts, 0) - counts).index_select(0, src)
    per = torch.cat([lo, span[:, :1], torch.div(flat, N, rounding_mode="floor")[:, None]], 1).index_select(0, src)  # [pairs,4]
    tx = per[:, 0] + local % per[:, 2]
    ty = per[:, 1] + torch.div(local, per[:, 2], rounding_mode="floor")
    if opacities is not None and src.numel():
        reach = torch.log(opacities.detach().clamp_min(ALPHA_MIN) / ALPHA_MIN).index_select(0, flat % N)
        gauss = torch.cat([mean, proj.conics.detach().reshape(-1, 3).index_select(0, flat), reach[:, None]], 1).index_select(0, src)
        x0 = tx.to(gauss.dtype) * tile_size + 0.5 - gauss[:, 0]
        y0 = ty.to(gauss.dtype) * tile_size + 0.5 - gauss[:, 1]
        sigma = min_sigma_over_rect(gauss[:, 2:5], x0, x0 + (tile_size - 1), y0, y0 + (tile_size - 1))
        touch = (sigma <= gauss[:, 5] + _CULL_MARGIN).nonzero().squeeze(1)
        src, tx, ty, per = src.index_select(0, touch), tx.index_select(0, touch), ty.index_select(0, touch), per.index_select(0, touch)
    tile, perm = torch.sort((per[:, 3] * tiles_y + ty) * tiles_x + tx, stable=True)  # keeps depth order
    tile_counts = torch.bincount(tile, minlength=B * tiles_y * tiles_x)
    return TileBins(
        gauss_ids=flat.index_select(0, src.index_select(0, perm)),
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


def _phi(local: Tensor) -> Tensor:
    """[P,6] float64 monomials (1, px, py, px^2, px py, py^2) of the tile-local pixel centres (rows major)."""
    side = local.numel()
    local = local.double()
    px, py = local.repeat(side), local.repeat_interleave(side)
    return torch.stack([torch.ones_like(px), px, py, px * px, px * py, py * py], dim=-1)


def exponent_coefficients(params: Tensor) -> Tensor:
    """[...,6] float64 coefficients of log alpha = log o - sigma as a quadratic in the pixel centre
    (against `_phi`), from params [...,>=6] with tile-local means. In float64 the products keep
    the precision of the direct formula: the terms cancel when the mean is far from the tile."""
    mx, my, a, b, c, opac = params[..., :6].detach().double().unbind(-1)
    u, v = a * mx + b * my, b * mx + c * my  # conic @ mean
    const = torch.log(opac.clamp_min(0.0)) - 0.5 * (mx * u + my * v)  # log 0 = -inf: alpha 0
    return torch.stack([const, u, v, -0.5 * a, -b, -0.5 * c], dim=-1)


def _blend(coef: Tensor, phi: Tensor, params: Tensor, grad_terms: bool) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Weights w, transmittance after each Gaussian T_incl and (with grad_terms) r, all [T,K,P],
    from the exponent coefficients coef [T,K,6] of params [T,K,6+F]."""
    T, K, _ = coef.shape
    log_alpha = (coef.view(T * K, 6) @ phi.T).to(params.dtype).view(T, K, -1)
    # exponents below _LOG_ALPHA_FLOOR give alpha < 1/255, cut to 0 below anyway; flooring them first
    # keeps exp from producing denormal floats, whose arithmetic is ~30x slower on x86 CPUs
    alpha = log_alpha.clamp_min_(_LOG_ALPHA_FLOOR).exp_().clamp_max_(ALPHA_MAX)
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


Terms = tuple[Tensor, Tensor, Tensor]


def chunk_forward(params: Tensor, phi: Tensor, keep: bool, coef: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Optional[Terms]]:
    """Composite a chunk (module docstring, step 3): acc [T,P,F], transmittance [T,P] and, with
    `keep`, the terms its backward pass needs, cut after the last depth slot any pixel sees.

    params [T,K,6+F]: mean x, mean y (tile-local pixels), conic a, b, c, opacity, features;
    coef: their `exponent_coefficients` when already known.
    """
    coef = exponent_coefficients(params) if coef is None else coef
    w, t_incl, r = _blend(coef, phi, params, grad_terms=keep)
    acc = torch.bmm(w.transpose(1, 2), params[..., 6:])
    trans = 1.0 - w.sum(dim=1)
    if not keep:
        return acc, trans, None
    assert r is not None
    live = int((t_incl.amax(dim=(0, 2)) > 0).sum())  # later slots have w = 0 and no gradient
    return acc, trans, (w[:, :live], t_incl[:, :live], r[:, :live])


def chunk_backward(params: Tensor, phi: Tensor, terms: Optional[Terms], g_acc: Tensor, g_trans: Tensor,
                   coef: Optional[Tensor] = None) -> Tensor:
    """Gradient [T,K,6+F] of a chunk's params from those of acc and trans (terms recomputed when None)."""
    if terms is None:
        coef = exponent_coefficients(params) if coef is None else coef
        w, t_incl, r_opt = _blend(coef, phi, params, grad_terms=True)
        assert r_opt is not None
        r = r_opt
    else:
        w, t_incl, r = terms
    T, K, C = params.shape
    live = w.shape[1]
    p = params[:, :live]
    g_params = params.new_zeros(T, K, C)
    g_params[:, :live, 6:] = torch.bmm(w, g_acc)  # features
    g_w = torch.bmm(p[..., 6:], g_acc.transpose(1, 2)).sub_(g_trans[:, None, :])  # dL/dw
    contrib = w * g_w
    suffix = contrib.sum(dim=1, keepdim=True) - contrib.cumsum_(dim=1)  # sum_{j>k} w_j g_w_j
    g_q = torch.mul(t_incl, g_w).sub_(suffix).mul_(r)  # dL/d(log alpha) = alpha dL/dalpha (0 where clamped or cut)
    m0, mx_, my_, mxx, mxy, myy = (g_q.reshape(T * live, -1) @ phi.to(g_q.dtype)).reshape(T, live, 6).unbind(-1)
    x, y, a, b, c, opac = p[..., :6].unbind(-1)
    s_x, s_y = mx_ - x * m0, my_ - y * m0  # sum g (px - x), sum g (py - y)
    s_xx = mxx - 2 * x * mx_ + x * x * m0
    s_xy = mxy - x * my_ - y * mx_ + x * y * m0
    s_yy = myy - 2 * y * my_ + y * y * m0
    # log alpha = log o - sigma: d/d mean = conic d, d/d conic = -(0.5 dx^2, dx dy, 0.5 dy^2)
    g_opac = m0 / torch.where(opac > 0, opac, torch.ones_like(opac))
    grads = [a * s_x + b * s_y, b * s_x + c * s_y, -0.5 * s_xx, -s_xy, -0.5 * s_yy, g_opac]
    g_params[:, :live, :6] = torch.stack(grads, dim=-1)
    return g_params


class _Chunk:
    """One chunk of tiles: their ids, each slot's pair (index into the bins' pairs, or the padding
    pair) and table row, the tile centres and the terms kept for the backward pass."""

    def __init__(self, bins: TileBins, tiles: Tensor, k: int, tile_size: int, rows_of_pairs: Tensor) -> None:
        slot = torch.arange(k, device=tiles.device)
        valid = slot < bins.counts[tiles, None]  # [T,K]
        self.tiles = tiles
        self.pairs = torch.where(valid, bins.offsets[tiles, None] + slot, rows_of_pairs.numel() - 1).reshape(-1)
        self.rows = rows_of_pairs.index_select(0, self.pairs)
        self.centre = tile_centres(bins, tiles, tile_size)
        self.shape = (len(tiles), k)
        self.terms: Optional[Terms] = None

    def params(self, table: Tensor) -> Tensor:
        """[T,K,C] rows of `table` for each tile's list (padded), means tile-local."""
        p = table.index_select(0, self.rows).view(*self.shape, table.shape[1])
        p[..., :2] -= self.centre.to(table.dtype)[:, None, :]
        return p

    def coef(self, pair_coef: Tensor) -> Tensor:
        """[T,K,6] exponent coefficients of the slots."""
        return pair_coef.index_select(0, self.pairs).view(*self.shape, 6)


def tile_centres(bins: TileBins, tiles: Tensor, tile_size: int) -> Tensor:
    """Pixel coordinates [T,2] of the centres of `tiles` (ids over all views)."""
    t_in_view = tiles % (bins.tiles_x * bins.tiles_y)
    return (torch.stack([t_in_view % bins.tiles_x, t_in_view // bins.tiles_x], -1) + 0.5) * tile_size


def _pair_coefficients(table: Tensor, bins: TileBins, tile_size: int) -> tuple[Tensor, Tensor]:
    """(table row of every pair plus the padding row last [n_pairs+1], exponent coefficients of
    every pair in its tile's local frame plus the padding pair's (alpha 0) [n_pairs+1,6])."""
    pair_tile = torch.repeat_interleave(torch.arange(bins.counts.numel(), device=table.device), bins.counts)
    rows = torch.cat([bins.gauss_ids, bins.gauss_ids.new_full((1,), table.shape[0] - 1)])
    params = table.detach()[:, :6].index_select(0, bins.gauss_ids)
    params[:, :2] -= tile_centres(bins, pair_tile, tile_size).to(table.dtype)
    coef = exponent_coefficients(params)
    padding = coef.new_zeros(1, 6)
    padding[0, 0] = -math.inf
    return rows, torch.cat([coef, padding])


def _composite(table: Tensor, bins: TileBins, tile_size: int, max_elems: int, keep_bytes: float) -> tuple[Tensor, Tensor, list[_Chunk], Tensor, Tensor]:
    """acc [tiles,P,F], trans [tiles,P], the chunks (with the terms kept within `keep_bytes`), phi
    and the pairs' exponent coefficients."""
    local = torch.arange(tile_size, device=table.device, dtype=table.dtype) + 0.5 - 0.5 * tile_size
    phi = _phi(local)
    P, n_tiles = tile_size * tile_size, bins.counts.numel()
    acc_all = table.new_zeros(n_tiles, P, table.shape[1] - 6)
    trans_all = table.new_ones(n_tiles, P)
    rows, pair_coef = _pair_coefficients(table, bins, tile_size)
    chunks, budget = [], keep_bytes
    for tiles, k in tile_chunks(bins.counts, P, max_elems):
        chunk = _Chunk(bins, tiles, k, tile_size, rows)
        need = 3 * table.element_size() * len(tiles) * k * P
        keep = need <= budget
        budget -= need if keep else 0
        acc, trans, chunk.terms = chunk_forward(chunk.params(table), phi, keep, chunk.coef(pair_coef))
        acc_all.index_copy_(0, tiles, acc)
        trans_all.index_copy_(0, tiles, trans)
        chunks.append(chunk)
    return acc_all, trans_all, chunks, phi, pair_coef


class _CompositeTiles(torch.autograd.Function):
    """Every chunk of a render in one autograd node: the forward pass writes each chunk's tiles
    into the image tensors, the backward pass adds each chunk's gradient into the table's rows."""

    @staticmethod
    def forward(ctx, table: Tensor, bins: TileBins, tile_size: int, max_elems: int, keep_bytes: float) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        acc_all, trans_all, ctx.chunks, ctx.phi, ctx.pair_coef = _composite(table, bins, tile_size, max_elems, keep_bytes)
        ctx.save_for_backward(table)
        return acc_all, trans_all

    @staticmethod
    def backward(ctx, g_acc_all: Tensor, g_trans_all: Tensor) -> tuple[Optional[Tensor], None, None, None, None]:  # type: ignore[override]
        (table,) = ctx.saved_tensors
        g_table = torch.zeros_like(table)
        for chunk in ctx.chunks:
            g = chunk_backward(chunk.params(table), ctx.phi, chunk.terms, g_acc_all.index_select(0, chunk.tiles),
                               g_trans_all.index_select(0, chunk.tiles), None if chunk.terms is not None else chunk.coef(ctx.pair_coef))
            chunk.terms = None
            g_table.index_add_(0, chunk.rows, g.view(-1, table.shape[1]))
        ctx.chunks, ctx.pair_coef = [], None
        return g_table, None, None, None, None


def composite_tiles(table: Tensor, bins: TileBins, tile_size: int, max_elems: int, keep_bytes: float) -> tuple[Tensor, Tensor]:
    """Accumulated features [tiles, P, F] and transmittance [tiles, P] of every tile.

    table [B*N + 1, 6 + F]: per (view, Gaussian) mean, conic, opacity, features; the last row
    is the zero-opacity padding entry. With gradients, per-pixel terms are kept for the backward
    pass while they fit in `keep_bytes` (3 tensors per chunk entry), and recomputed beyond.
    """
    if torch.is_grad_enabled() and table.requires_grad:
        return _CompositeTiles.apply(table, bins, tile_size, max_elems, keep_bytes)
    with torch.no_grad():
        acc, trans, _, _, _ = _composite(table, bins, tile_size, max_elems, 0.0)
    return acc, trans


def untile(x: Tensor, bins: TileBins, B: int, H: int, W: int) -> Tensor:
    """[B * tiles, ts*ts, C] tile-major values -> [B,H,W,C] image."""
    ts = int(round(math.sqrt(x.shape[1])))
    x = x.view(B, bins.tiles_y, bins.tiles_x, ts, ts, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, bins.tiles_y * ts, bins.tiles_x * ts, -1)[:, :H, :W]
