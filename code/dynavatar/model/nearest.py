"""The nearest canonical FLAME vertex of each point, which the FLAME priors and the shading read.

Ranked by the squared distance without its |p|^2 term, |v|^2 - 2 p.v. On a CPU (or without Triton)
one matrix product and one argmin per chunk of points: the chunk's [chunk, V] matrix is written and
read again. On a GPU with Triton one kernel keeps, for each point, a running minimum per lane of a
block of vertices in registers (lane j sees vertices j, j + BLOCK_V, ...), so the loop over the
vertices only compares and selects; the lanes are reduced to one index once, at the end, the
smallest index among equal minima (as torch's argmin). At 100k points and a few thousand vertices
the chunked search was 25 products and 25 argmin reductions a step (0.8 ms of the reductions alone
on an H200); a kernel that reduced the lanes at every block of vertices took 1.5 ms.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: the chunked search everywhere
    triton = None

BLOCK_POINTS = 128
BLOCK_VERTICES = 32


def fused_available(device: torch.device) -> bool:
    """Whether the fused kernel runs on `device`: a CUDA device with Triton installed."""
    return device.type == "cuda" and triton is not None


if triton is not None:

    @triton.jit
    def _nearest_kernel(points_ptr, vertices_ptr, out_ptr, n_points, n_vertices, BLOCK_P: tl.constexpr,
                        BLOCK_V: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        inside = rows < n_points
        px = tl.load(points_ptr + rows * 3, mask=inside, other=0.0)[:, None]  # [BLOCK_P, 1]
        py = tl.load(points_ptr + rows * 3 + 1, mask=inside, other=0.0)[:, None]
        pz = tl.load(points_ptr + rows * 3 + 2, mask=inside, other=0.0)[:, None]
        lanes = tl.arange(0, BLOCK_V)
        best = tl.full([BLOCK_P, BLOCK_V], float("inf"), tl.float32)  # each lane's minimum so far
        best_index = tl.zeros([BLOCK_P, BLOCK_V], dtype=tl.int32)
        for start in range(0, n_vertices, BLOCK_V):
            cols = start + lanes
            present = cols < n_vertices
            vx = tl.load(vertices_ptr + cols * 3, mask=present, other=0.0)[None, :]  # [1, BLOCK_V]
            vy = tl.load(vertices_ptr + cols * 3 + 1, mask=present, other=0.0)[None, :]
            vz = tl.load(vertices_ptr + cols * 3 + 2, mask=present, other=0.0)[None, :]
            norm = vx * vx + vy * vy + vz * vz
            score = norm - 2.0 * (px * vx + py * vy + pz * vz)  # [BLOCK_P, BLOCK_V]
            # Strictly smaller: a lane keeps its earlier (smaller) index on a tie; absent vertices never win.
            better = (score < best) & present[None, :]
            best = tl.where(better, score, best)
            best_index = tl.where(better, cols[None, :], best_index)
        smallest = tl.min(best, axis=1)  # [BLOCK_P]
        tied = best == smallest[:, None]
        first = tl.min(tl.where(tied, best_index, n_vertices), axis=1)  # the smallest index among equal minima
        tl.store(out_ptr + rows, first.to(tl.int64), mask=inside)


def nearest_vertex(points: torch.Tensor, vertices: torch.Tensor, chunk: int) -> torch.Tensor:
    """Index [N] of the nearest of vertices [V, 3] for each of points [N, 3]: the fused kernel on a GPU
    with Triton, else one chunk of `chunk` points at a time (memory chunk x V)."""
    with torch.no_grad():
        if fused_available(points.device) and points.shape[0] > 0:
            return _fused(points, vertices)
        return _chunked(points, vertices, chunk)


def _fused(points: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    p = points.detach().float().contiguous()
    v = vertices.detach().float().contiguous()
    out = torch.empty(p.shape[0], dtype=torch.long, device=p.device)
    _nearest_kernel[(triton.cdiv(p.shape[0], BLOCK_POINTS),)](p, v, out, p.shape[0], v.shape[0],
                                                             BLOCK_P=BLOCK_POINTS, BLOCK_V=BLOCK_VERTICES)
    return out


def _chunked(points: torch.Tensor, vertices: torch.Tensor, chunk: int) -> torch.Tensor:
    out = []
    norms = (vertices * vertices).sum(dim=1)  # [V]
    for start in range(0, points.shape[0], chunk):
        ranking = torch.addmm(norms, points[start:start + chunk], vertices.T, alpha=-2.0)  # [chunk, V]
        out.append(ranking.argmin(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=points.device)
