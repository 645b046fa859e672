"""The pure-PyTorch rasterizer: the 3DGS CUDA rasterizer's maths, vectorised per bucket of tiles.

Work is organised as the CUDA kernel does it: each Gaussian is binned into the 16x16 px tiles its
3-sigma square touches, each tile's list is sorted front to back by camera depth, and each pixel
composites its tile's list with alpha = min(0.99, opacity * exp(power)), skipping alpha < 1/255 and
stopping before the transmittance falls under 1e-4.

Vectorisation: tiles with similar list lengths form a bucket; a bucket's lists are padded to one
length K and all its pixels are composited at once as [tiles, 256 pixels, K] tensors, the
transmittance by a cumulative product along K and the early stop emulated by masking. A bucket too
large for the memory budget is cut into fewer tiles, then into chunks along K whose transmittance
is carried from one chunk to the next, so memory never grows as pixels x Gaussians.

The Gaussian's exponent at the 256 pixels of a tile is one small matrix product: written around
the tile centre, power = -0.5 d^T conic d is a quadratic polynomial in the pixel's (x, y) whose six
coefficients are computed per (tile, Gaussian) pair. It is clamped to <= 0 (the CUDA kernel skips
power > 0, which only rounding can produce for a positive-definite conic).

The compositing is one autograd Function with a hand-written backward (the CUDA rasterizer's,
recomputing each chunk instead of storing it; like it, gradients pass the 0.99 cap unchanged);
everything per Gaussian (projection, gathering into tile lists) is ordinary autograd.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Camera
from .output import RasterOutput
from .projection import TILE_SIZE, ScreenGaussians, covariance_factor, project, tile_grid

ALPHA_MAX = 0.99  # cap on one Gaussian's alpha
ALPHA_MIN = 1.0 / 255.0  # contributions below this are skipped
TRANSMITTANCE_MIN = 1e-4  # a pixel stops before its transmittance would fall below this
PIXELS = TILE_SIZE * TILE_SIZE
# exp(power) is clamped below at exp(-20), far under 1/255 (so still skipped): denormal floats
# from exp of large negative powers slow CPU arithmetic tenfold.
POWER_FLOOR = -20.0

# Elements of one [tiles, 256, K] work tensor; about ten of them are alive at once.
DEFAULT_MAX_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 26}
# Padding (in pairs) worth one more bucket: a bucket costs a fixed launch overhead, padding costs work.
MERGE_PADDING = {"cpu": 256, "cuda": 16384}


@dataclass
class _Unit:
    """One bucket of tiles composited together: flat pairs [start, start + batch * length)."""

    tiles: Tensor  # [B] long tile ids
    start: int
    batch: int  # B
    length: int  # K, the padded list length
    chunk: int  # K is processed in chunks of this many Gaussians


@dataclass
class _Plan:
    units: list[_Unit]
    n_tiles: int
    pair_gaussian: Tensor  # [P] long Gaussian index per padded pair (N = padding)
    pair_tile: Tensor  # [P] long tile id per padded pair


def _below(value: float, dtype: torch.dtype) -> float:
    """The largest number of `dtype` below `value`: threshold(x, _below(v)) keeps x >= v."""
    v = torch.tensor(value, dtype=dtype)
    return float(torch.nextafter(v, torch.zeros_like(v)))


@functools.lru_cache(maxsize=None)
def _pixel_basis(dtype: torch.dtype, device: torch.device) -> Tensor:
    """[256, 6] monomials (1, x, y, x^2, y^2, xy) of each pixel centre relative to its tile centre."""
    local = torch.arange(TILE_SIZE, dtype=dtype, device=device) + 0.5 - TILE_SIZE / 2
    y, x = torch.meshgrid(local, local, indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    return torch.stack([torch.ones_like(x), x, y, x * x, y * y, x * y], dim=-1)


def _plan(screen: ScreenGaussians, camera: Camera, max_elements: int, merge_padding: int) -> _Plan:
    """Bin Gaussians into tiles, sort each tile front to back, bucket tiles by list length."""
    device = screen.depths.device
    n = screen.depths.shape[0]
    grid_x, grid_y = tile_grid(camera)
    n_tiles = grid_x * grid_y
    empty = torch.zeros(0, dtype=torch.long, device=device)
    with torch.no_grad():
        vis = (screen.radii > 0).nonzero().squeeze(1)  # [V]
        span = screen.tile_max[vis] - screen.tile_min[vis]  # [V, 2] tiles along x, y
        per = span[:, 0] * span[:, 1]  # [V] tiles per Gaussian
        total = int(per.sum()) if vis.numel() else 0
        if total == 0:
            return _Plan([], n_tiles, empty, empty)

        def spread(x: Tensor) -> Tensor:  # [V] -> [P], one entry per (tile, Gaussian) pair
            return x.repeat_interleave(per, output_size=total)

        gid = spread(vis)  # [P] Gaussian of each pair
        local = torch.arange(total, device=device) - spread(per.cumsum(0) - per)
        width = spread(span[:, 0])
        tx = spread(screen.tile_min[vis, 0]) + local % width
        ty = spread(screen.tile_min[vis, 1]) + local // width
        tile = ty * grid_x + tx  # [P]
        rank = torch.empty(n, dtype=torch.long, device=device)
        rank[torch.argsort(screen.depths.detach())] = torch.arange(n, device=device)
        gid = gid[torch.argsort(tile * n + rank[gid])]  # by tile, then front to back
        counts = torch.bincount(tile, minlength=n_tiles)  # [T]
        offsets = counts.cumsum(0) - counts
        sorted_counts, tile_order = torch.sort(counts, descending=True)

        # Greedy buckets over tiles in order of decreasing list length: open a new bucket once the
        # padding accumulated in the current one outweighs the overhead of one more bucket.
        host_counts = sorted_counts.tolist()
        groups: list[list[int]] = []  # [length, first, end) over tile_order
        padding = 0
        for i, c in enumerate(host_counts):
            if c == 0:
                break
            if groups and padding + groups[-1][0] - c <= merge_padding:
                groups[-1][2] = i + 1
                padding += groups[-1][0] - c
            else:
                groups.append([c, i, i + 1])
                padding = 0

        units: list[_Unit] = []
        pair_gaussian, pair_tile = [], []
        start = 0
        for length, first, end in groups:
            per_tile = length * PIXELS
            max_batch = max(1, max_elements // per_tile)
            chunk = length if per_tile <= max_elements else max(1, max_elements // PIXELS)
            n_parts = math.ceil((end - first) / max_batch)
            size = math.ceil((end - first) / n_parts)
            k = torch.arange(length, device=device)
            for lo in range(first, end, size):
                tiles_t = tile_order[lo:min(lo + size, end)]  # [B]
                idx = offsets[tiles_t, None] + k  # [B, K]
                valid = k < counts[tiles_t, None]
                pair_gaussian.append(torch.where(valid, gid[idx.clamp_max(total - 1)], n).reshape(-1))
                pair_tile.append(tiles_t[:, None].expand(-1, length).reshape(-1))
                units.append(_Unit(tiles_t, start, tiles_t.shape[0], length, chunk))
                start += tiles_t.shape[0] * length
    return _Plan(units, n_tiles, torch.cat(pair_gaussian), torch.cat(pair_tile))


def _chunk_alpha(basis: Tensor, coef: Tensor, opac: Tensor, trans0: Tensor, alpha_min: float
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per pixel and Gaussian of a chunk: (exp(power), alpha, 1 - alpha, transmittance after it).

    coef [B, K, 6] power polynomial, opac [B, K], trans0 [B, 256] transmittance before the chunk
    (0 where the pixel has stopped). Outputs are [B, 256, K]; alpha is 0 where skipped.
    """
    gauss = torch.matmul(basis, coef.transpose(1, 2)).clamp_(POWER_FLOOR, 0.0).exp_()
    alpha = (gauss * opac[:, None, :]).clamp_max_(ALPHA_MAX)
    F.threshold(alpha, alpha_min, 0.0, inplace=True)
    one_minus = 1.0 - alpha
    trans = torch.cumprod(one_minus, dim=-1).mul_(trans0[..., None])
    return gauss, alpha, one_minus, trans


def _weights(alpha: Tensor, one_minus: Tensor, trans: Tensor, trans_min: float) -> tuple[Tensor, Tensor]:
    """(w, kept transmittance) [B, 256, K]: w = alpha * (transmittance before) on composited
    entries, 0 elsewhere; `trans` is zeroed in place where the pixel has stopped."""
    kept = F.threshold(trans, trans_min, 0.0, inplace=True)
    return kept.div(one_minus).mul_(alpha), kept


class _TileComposite(torch.autograd.Function):
    """Front-to-back compositing of the padded per-tile lists -> [tiles, 256, F] features."""

    @staticmethod
    def forward(ctx, coef: Tensor, opac: Tensor, feat: Tensor, bg_feat: Tensor, plan: _Plan) -> Tensor:
        # coef [P, 6], opac [P], feat [P, F], bg_feat [F]
        dtype, device = coef.dtype, coef.device
        basis = _pixel_basis(dtype, device)
        alpha_min, trans_min = _below(ALPHA_MIN, dtype), _below(TRANSMITTANCE_MIN, dtype)
        out = bg_feat.expand(plan.n_tiles, PIXELS, -1).clone()  # [T, 256, F]
        trans_final = torch.ones(plan.n_tiles, PIXELS, dtype=dtype, device=device)
        starts: list[list[Tensor]] = []  # per unit, the transmittance entering each processed chunk
        for u in plan.units:
            sl = slice(u.start, u.start + u.batch * u.length)
            c = coef[sl].view(u.batch, u.length, 6)
            o = opac[sl].view(u.batch, u.length)
            f = feat[sl].view(u.batch, u.length, -1)
            acc = torch.zeros(u.batch, PIXELS, feat.shape[1], dtype=dtype, device=device)
            t_run = torch.ones(u.batch, PIXELS, dtype=dtype, device=device)  # transmittance so far
            t_in = t_run  # the same, 0 where the pixel has stopped
            unit_starts = []
            for k0 in range(0, u.length, u.chunk):
                if k0 > 0 and not bool((t_in > 0).any()):
                    break  # every pixel of the bucket has stopped
                k1 = min(k0 + u.chunk, u.length)
                unit_starts.append(t_in)
                _, alpha, one_minus, trans = _chunk_alpha(basis, c[:, k0:k1], o[:, k0:k1], t_in, alpha_min)
                stopped = trans[..., -1] < TRANSMITTANCE_MIN
                w, _ = _weights(alpha, one_minus, trans, trans_min)
                acc.baddbmm_(w, f[:, k0:k1])
                t_run = t_run - w.sum(-1)
                t_in = torch.where(stopped, torch.zeros_like(t_run), t_run)
            out[u.tiles] = acc + t_run[..., None] * bg_feat
            trans_final[u.tiles] = t_run
            starts.append(unit_starts)
        ctx.save_for_backward(coef, opac, feat, bg_feat, trans_final)
        ctx.plan, ctx.starts = plan, starts
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        coef, opac, feat, bg_feat, trans_final = ctx.saved_tensors
        plan: _Plan = ctx.plan
        dtype, device = coef.dtype, coef.device
        basis = _pixel_basis(dtype, device)
        alpha_min, trans_min = _below(ALPHA_MIN, dtype), _below(TRANSMITTANCE_MIN, dtype)
        grad_coef, grad_opac, grad_feat = torch.zeros_like(coef), torch.zeros_like(opac), torch.zeros_like(feat)
        grad_out = grad_out.contiguous()  # [T, 256, F]
        for u, unit_starts in zip(plan.units, ctx.starts):
            sl = slice(u.start, u.start + u.batch * u.length)
            c = coef[sl].view(u.batch, u.length, 6)
            o = opac[sl].view(u.batch, u.length)
            f = feat[sl].view(u.batch, u.length, -1)
            gc = grad_coef[sl].view(u.batch, u.length, 6)
            go = grad_opac[sl].view(u.batch, u.length)
            gf = grad_feat[sl].view(u.batch, u.length, -1)
            g_pix = grad_out[u.tiles]  # [B, 256, F]
            # Running sum of what lies behind the current Gaussian: starts with the background.
            behind = trans_final[u.tiles] * (g_pix @ bg_feat)  # [B, 256]
            for i in reversed(range(len(unit_starts))):
                k0 = i * u.chunk
                k1 = min(k0 + u.chunk, u.length)
                ck, ok, fk = c[:, k0:k1], o[:, k0:k1], f[:, k0:k1]
                gauss, alpha, one_minus, trans = _chunk_alpha(basis, ck, ok, unit_starts[i], alpha_min)
                w, trans = _weights(alpha, one_minus, trans, trans_min)  # [B, 256, K]
                g = torch.bmm(g_pix, fk.transpose(1, 2))  # [B, 256, K] feature . dL/dpixel
                gf[:, k0:k1] = torch.bmm(w.transpose(1, 2), g_pix)
                after = torch.cumsum(w * g, dim=-1)
                total = after[..., -1:]
                # dL/dalpha_k = (T_k g_k - behind_k) / (1 - alpha_k), behind_k = sum_{j>k} w_j g_j + T_final bg.g
                d_alpha = trans.mul_(g).add_(after).sub_(behind[..., None] + total).div_(one_minus)
                d_alpha.masked_fill_(w <= 0, 0.0)  # not mul_(w > 0): that converts the mask to floats first
                behind = behind + total[..., 0]
                d_alpha.mul_(gauss)  # dL/dopacity per pixel; the 0.99 cap passes gradients, as in 3DGS
                go[:, k0:k1] = d_alpha.sum(1)
                d_power = d_alpha.mul_(ok[:, None, :])
                gc[:, k0:k1] = torch.matmul(basis.T, d_power).transpose(1, 2)
        grad_bg = (trans_final[..., None] * grad_out).sum((0, 1)) if ctx.needs_input_grad[3] else None
        return grad_coef, grad_opac, grad_feat, grad_bg, None


def _pad(x: Tensor) -> Tensor:
    """Append one zero row: index N is the padding entry of the tile lists."""
    return torch.cat([x, x.new_zeros((1,) + x.shape[1:])])


def rasterize_torch(means_cam: Tensor, quats_cam: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                    camera: Camera, background: Tensor, depth: bool = True, max_elements: int | None = None
                    ) -> RasterOutput:
    """Rasterize camera-space Gaussians (means [N, 3], unit quaternions [N, 4], scales [N, 3]) in PyTorch.

    `max_elements` bounds each [tiles, 256, K] work tensor (default by device type). Without `depth`
    four features are composited instead of five.
    """
    device = means_cam.device
    kind = "cuda" if device.type == "cuda" else "cpu"
    max_elements = max_elements or DEFAULT_MAX_ELEMENTS[kind]
    screen = project(means_cam, covariance_factor(quats_cam, scales), camera)
    plan = _plan(screen, camera, max_elements, MERGE_PADDING[kind])
    means2d = screen.means2d
    if means2d.requires_grad:
        means2d.retain_grad()

    dtype = means_cam.dtype
    ones = torch.ones_like(screen.depths)[:, None]
    extra = [screen.depths[:, None], ones] if depth else [ones]
    feat = torch.cat([colors.to(dtype), *extra], dim=-1)  # [N, F]: rgb, (z,) 1
    bg_feat = torch.cat([background.to(device=device, dtype=dtype), background.new_zeros(len(extra)).to(device, dtype)])

    grid_x, grid_y = tile_grid(camera)
    pg, pt = plan.pair_gaussian, plan.pair_tile
    centre = torch.stack([pt % grid_x, pt // grid_x], dim=-1).to(dtype) * TILE_SIZE + TILE_SIZE / 2  # [P, 2]
    # index_select, not x[idx]: its backward is a scatter-add, where advanced indexing's sorts (slow on CUDA).
    mx, my = (_pad(means2d).index_select(0, pg) - centre).unbind(-1)  # mean relative to its tile's centre
    a, b, c = _pad(screen.conics).index_select(0, pg).unbind(-1)
    # power(x, y) = -0.5 (a dx^2 + 2 b dx dy + c dy^2), dx = mx - x, as a polynomial in the pixel's (x, y)
    coef = torch.stack([-0.5 * (a * mx * mx + c * my * my) - b * mx * my,
                        a * mx + b * my, c * my + b * mx, -0.5 * a, -0.5 * c, -b], dim=-1)  # [P, 6]
    tiles = _TileComposite.apply(coef, _pad(opacities.to(dtype)).index_select(0, pg), _pad(feat).index_select(0, pg),
                                 bg_feat, plan)

    canvas = tiles.view(grid_y, grid_x, TILE_SIZE, TILE_SIZE, -1).permute(0, 2, 1, 3, 4)
    canvas = canvas.reshape(grid_y * TILE_SIZE, grid_x * TILE_SIZE, -1)[:camera.height, :camera.width]
    radii = screen.radii
    return RasterOutput(image=canvas[..., :3], alpha=canvas[..., -1], depth=canvas[..., 3] if depth else None,
                        radii=radii, visible=radii > 0, means2d=means2d)
