"""Which screen tiles each projected Gaussian touches, sorted for a tile rasterizer, without waiting.

A tile rasterizer (gsplat's) draws a tile from the Gaussians that touch it, nearest first: one
list of (image, tile, depth) keys, sorted, and each tile's first entry in it. gsplat sizes that
list by the number of intersections, which it reads from the device: the host waits for every
kernel queued before it, once per rendering, and in training the GPU then idles while the host
launches the rest of the step. Here the list has a capacity chosen on the host instead, from an
earlier step's count (`IntersectionBudget`), and the count is compared with it on the device: a
step whose intersections did not fit says so in a flag (`IntersectionBudget.complete`) that the
training guard reads on the device, and skips that step. Unused entries carry the key -1 and sort
before every real one, so no tile's range reaches them.

The entries, their order and the offsets are gsplat's: the same tile rectangle per Gaussian
(centre +- radius in tiles, floored and ceiled, clamped to the grid), the same keys
(image << (32 + tile bits) | tile << 32 | the depth's float bits), and a stable sort of them in
the order gsplat writes them (Gaussian by Gaussian, tile rows then columns).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: PyTorch's form
    triton = None


UNUSED = -1  # the key of an entry beyond the count: sorts before every real key (which are >= 0)


@dataclass
class TileIntersections:
    offsets: Tensor  # [I, tile_height, tile_width] int32, each tile's first entry in flatten_ids
    flatten_ids: Tensor  # [capacity] int32, index into the I * N projected Gaussians, sorted by key
    count: Tensor  # 0-dim int64 on the device: the intersections there are (<= capacity: all kept)


def _bits(n: int) -> int:
    return int(math.floor(math.log2(n))) + 1  # gsplat's count of bits for ids in [0, n)


def fused_available(device: torch.device) -> bool:
    """Whether the Triton kernels can run on `device`: a CUDA device with Triton installed."""
    return device.type == "cuda" and triton is not None


def tile_rectangles(means2d: Tensor, radii: Tensor, tile_size: int, tile_width: int, tile_height: int
                    ) -> tuple[Tensor, Tensor]:
    """The tiles each projected Gaussian touches: means2d [M, 2] pixels, radii [M, 2] int32 (per axis,
    0 = not drawn). Returns the rectangle's first (column, row) [M, 2] int64 and its (width, height)
    [M, 2] int64, (0, 0) for a Gaussian not drawn. Exact, as gsplat's, for a power-of-two tile size."""
    size = float(tile_size)
    # gsplat converts to unsigned: negative and NaN become 0; the grid clamps the rest.
    low = torch.nan_to_num(torch.floor(means2d / size - radii / size), nan=0.0).clamp_min(0.0)
    high = torch.nan_to_num(torch.ceil(means2d / size + radii / size), nan=0.0).clamp_min(0.0)
    low = torch.stack((low[:, 0].clamp_max(tile_width), low[:, 1].clamp_max(tile_height)), dim=1).long()
    high = torch.stack((high[:, 0].clamp_max(tile_width), high[:, 1].clamp_max(tile_height)), dim=1).long()
    drawn = (radii > 0).all(dim=-1, keepdim=True)
    return low, torch.where(drawn, high - low, 0)


def _entries(ends: Tensor, low: Tensor, extent: Tensor, depths: Tensor, n: int, tile_width: int,
             image_shift: int, capacity: int) -> tuple[Tensor, Tensor]:
    """The unsorted keys [capacity] int64 and Gaussians [capacity] int32 of the entries, in gsplat's
    order: entry p belongs to the first Gaussian whose `ends` (cumulative counts [M]) exceeds p."""
    slots = torch.arange(capacity, device=ends.device)
    owner = torch.searchsorted(ends, slots, right=True)  # M beyond the count
    used = owner < ends.numel()
    owner = owner.clamp_max(ends.numel() - 1)
    width, height = extent[owner].unbind(-1)
    local = slots - (ends[owner] - width * height)  # the entry within its Gaussian's rectangle
    span = width.clamp_min(1)
    column, row = low[owner].unbind(-1)
    tile = (row + local // span) * tile_width + column + local % span
    depth_bits = depths.view(torch.int32).long()[owner] & 0xFFFFFFFF
    keys = ((owner // n) << image_shift) | (tile << 32) | depth_bits
    return torch.where(used, keys, UNUSED), torch.where(used, owner, 0).to(torch.int32)


def intersect_tiles(means2d: Tensor, radii: Tensor, depths: Tensor, tile_size: int, tile_width: int,
                    tile_height: int, capacity: int | Callable[[Tensor], int], fused: bool | None = None
                    ) -> TileIntersections:
    """Sorted tile intersections of I images' projected Gaussians, at most `capacity` of them:
    means2d [I, N, 2], radii [I, N, 2] int32, depths [I, N] float32 (> 0 where drawn). `capacity` is
    a number, or a function of the count (a 0-dim device tensor) returning one. Nothing here waits
    for the device unless that function does; `count` tells whether the capacity sufficed.

    `fused` (default: where available) makes the rectangles and the entries with two Triton
    kernels instead of about sixty PyTorch operations; the result is the same."""
    n_images, n = depths.shape
    device = depths.device
    fused = fused_available(device) if fused is None else fused
    flat_means, flat_radii, flat_depths = means2d.reshape(-1, 2), radii.reshape(-1, 2), depths.reshape(-1)
    if fused:
        low, extent = _fused_rectangles(flat_means, flat_radii, tile_size, tile_width, tile_height)
    else:
        low, extent = tile_rectangles(flat_means, flat_radii, tile_size, tile_width, tile_height)
    ends = torch.cumsum(extent.prod(dim=-1), dim=0)  # [I * N] one past each Gaussian's last entry
    count = ends[-1]
    if callable(capacity):
        capacity = capacity(count)
    image_shift = 32 + _bits(tile_width * tile_height)
    make = _fused_entries if fused else _entries
    keys, owners = make(ends, low, extent, flat_depths, n, tile_width, image_shift, capacity)
    keys, order = torch.sort(keys, stable=True)
    flatten_ids = owners[order]
    offsets = torch.searchsorted(keys, _tile_firsts(n_images, tile_width * tile_height, image_shift, device))
    return TileIntersections(offsets.to(torch.int32).reshape(n_images, tile_height, tile_width), flatten_ids, count)


@functools.lru_cache(maxsize=16)
def _tile_firsts(n_images: int, n_tiles: int, image_shift: int, device: torch.device) -> Tensor:
    """The smallest key of each (image, tile) [I * n_tiles]: where its entries start among sorted keys."""
    images = torch.arange(n_images, device=device)[:, None] << image_shift
    return (images | (torch.arange(n_tiles, device=device)[None, :] << 32)).reshape(-1)


def _fused_rectangles(means2d: Tensor, radii: Tensor, tile_size: int, tile_width: int, tile_height: int
                      ) -> tuple[Tensor, Tensor]:
    """`tile_rectangles` in one Triton kernel."""
    m = radii.shape[0]
    low = torch.empty(m, 2, dtype=torch.int64, device=radii.device)
    extent = torch.empty_like(low)
    block = 256
    _rectangles_kernel[(triton.cdiv(m, block),)](means2d.contiguous(), radii.contiguous(), low, extent, m,
                                                 1.0 / tile_size, tile_width, tile_height, BLOCK=block)
    return low, extent


def _fused_entries(ends: Tensor, low: Tensor, extent: Tensor, depths: Tensor, n: int, tile_width: int,
                   image_shift: int, capacity: int) -> tuple[Tensor, Tensor]:
    """`_entries` in one Triton kernel: a binary search in `ends` per entry."""
    keys = torch.empty(capacity, dtype=torch.int64, device=ends.device)
    owners = torch.empty(capacity, dtype=torch.int32, device=ends.device)
    block = 256
    _entries_kernel[(triton.cdiv(capacity, block),)](ends, low, extent, depths.contiguous().view(torch.int32), keys,
                                                     owners, ends.numel(), n, capacity, tile_width, image_shift,
                                                     STEPS=ends.numel().bit_length() + 1, BLOCK=block)
    return keys, owners


if triton is not None:

    @triton.jit
    def _span(centre, radius, inv, limit):
        """One axis of a rectangle: its first tile and its number of tiles (int64)."""
        reach = radius.to(tl.float32) * inv
        first = tl.floor(centre * inv - reach)
        last = tl.ceil(centre * inv + reach)
        # gsplat converts to unsigned: negative and NaN become 0; the grid clamps the rest.
        first = tl.minimum(tl.maximum(tl.where(first != first, 0.0, first), 0.0), limit).to(tl.int64)
        last = tl.minimum(tl.maximum(tl.where(last != last, 0.0, last), 0.0), limit).to(tl.int64)
        return first, last - first

    @triton.jit
    def _rectangles_kernel(means_ptr, radii_ptr, low_ptr, extent_ptr, m, inv_size, tile_width, tile_height,
                           BLOCK: tl.constexpr):
        idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = idx < m
        inv = tl.cast(inv_size, tl.float32)  # 1 / tile size: exact for a power of two, as gsplat's division
        radius_x = tl.load(radii_ptr + 2 * idx, mask=inside, other=0)
        radius_y = tl.load(radii_ptr + 2 * idx + 1, mask=inside, other=0)
        column, width = _span(tl.load(means_ptr + 2 * idx, mask=inside, other=0.0), radius_x, inv,
                              tl.cast(tile_width, tl.float32))
        row, height = _span(tl.load(means_ptr + 2 * idx + 1, mask=inside, other=0.0), radius_y, inv,
                            tl.cast(tile_height, tl.float32))
        drawn = (radius_x > 0) & (radius_y > 0)
        tl.store(low_ptr + 2 * idx, column, mask=inside)
        tl.store(low_ptr + 2 * idx + 1, row, mask=inside)
        tl.store(extent_ptr + 2 * idx, tl.where(drawn, width, 0), mask=inside)
        tl.store(extent_ptr + 2 * idx + 1, tl.where(drawn, height, 0), mask=inside)

    @triton.jit
    def _entries_kernel(ends_ptr, low_ptr, extent_ptr, depth_bits_ptr, keys_ptr, owners_ptr, m, n, capacity,
                        tile_width, image_shift, STEPS: tl.constexpr, BLOCK: tl.constexpr):
        slot = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        inside = slot < capacity
        lo = slot * 0
        hi = lo + tl.cast(m, tl.int64)
        for _ in tl.static_range(STEPS):  # the first Gaussian whose end exceeds the slot
            searching = lo < hi
            mid = (lo + hi) // 2
            end = tl.load(ends_ptr + mid, mask=searching, other=0)
            right = searching & (end <= slot)
            lo = tl.where(right, mid + 1, lo)
            hi = tl.where(searching & (end > slot), mid, hi)
        used = inside & (lo < m)
        owner = tl.minimum(lo, tl.cast(m, tl.int64) - 1)
        width = tl.load(extent_ptr + 2 * owner, mask=used, other=1)
        height = tl.load(extent_ptr + 2 * owner + 1, mask=used, other=1)
        local = slot - (tl.load(ends_ptr + owner, mask=used, other=0) - width * height)
        span = tl.maximum(width, 1)
        column = tl.load(low_ptr + 2 * owner, mask=used, other=0)
        row = tl.load(low_ptr + 2 * owner + 1, mask=used, other=0)
        tile = (row + local // span) * tile_width + column + local % span
        depth = tl.load(depth_bits_ptr + owner, mask=used, other=0).to(tl.uint32, bitcast=True).to(tl.int64)
        key = ((owner // n) << image_shift) | (tile << 32) | depth
        tl.store(keys_ptr + slot, tl.where(used, key, -1), mask=inside)
        tl.store(owners_ptr + slot, tl.where(used, owner, 0).to(tl.int32), mask=inside)


_active: contextvars.ContextVar["IntersectionBudget | None"] = contextvars.ContextVar("intersection_budget",
                                                                                      default=None)


def active_budget() -> "IntersectionBudget | None":
    """The budget of the enclosing `IntersectionBudget.use()`, if any: rasterizers that can, draw without waiting."""
    return _active.get()


class IntersectionBudget:
    """The capacity of tile intersections for renderings that must not wait for the device (training
    steps), chosen from the latest count the host has received without waiting, times `margin`.

    The first rendering waits once for its count. Afterwards each rendering's count is copied to the
    host behind an event and read when the event has passed, a step or so later, so the capacity
    follows the counts as the Gaussians grow in number and shrink in size. A rendering whose count
    exceeded its capacity is incomplete: `complete` (device, 0-dim bool) is False until `reset`, and
    `incomplete` counts such renderings on the device.
    """

    def __init__(self, margin: float = 1.5, smallest: int = 4096) -> None:
        self.margin = margin
        self.smallest = smallest
        self.per_gaussian: float | None = None  # intersections per projected Gaussian, latest known
        self._pending: list[tuple[Tensor, int, torch.cuda.Event | None]] = []
        self.complete: Tensor | None = None
        self.incomplete: Tensor | None = None

    @contextlib.contextmanager
    def use(self, enabled: bool = True) -> Iterator["IntersectionBudget"]:
        """Renderings inside draw without waiting for their intersection count (with `enabled`)."""
        if not enabled:
            yield self
            return
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)

    def reset(self) -> None:
        """Start a new step: `complete` covers the renderings from here on."""
        self.complete = None

    def capacity(self, count: Tensor, n_projected: int) -> int:
        """The capacity for a rendering of `n_projected` projected Gaussians whose count is the device
        tensor `count` (waited for only on the first call)."""
        self._harvest()
        if self.per_gaussian is None:
            self.per_gaussian = int(count) / max(1, n_projected)
        wanted = max(self.smallest, math.ceil(self.margin * self.per_gaussian * n_projected))
        step = 1 << max(0, wanted.bit_length() - 4)  # 8-16 sizes an octave: the allocator reuses blocks
        return -(-wanted // step) * step

    def record(self, count: Tensor, n_projected: int, capacity: int) -> None:
        """Note a rendering's count (a device tensor): copied to the host without waiting."""
        fits = count <= capacity
        self.complete = fits if self.complete is None else self.complete & fits
        missed = (~fits).long()
        self.incomplete = missed if self.incomplete is None else self.incomplete + missed
        if count.device.type == "cuda":
            host = torch.empty((), dtype=count.dtype, pin_memory=True)
            host.copy_(count, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending.append((host, n_projected, event))
        else:
            self._pending.append((count, n_projected, None))

    def _harvest(self) -> None:
        """Read the counts that have reached the host; keep the latest."""
        while self._pending and (self._pending[0][2] is None or self._pending[0][2].query()):
            host, n_projected, _ = self._pending.pop(0)
            self.per_gaussian = int(host) / max(1, n_projected)

    def take_incomplete(self) -> int:
        """How many renderings did not fit since the last call (reads the device)."""
        if self.incomplete is None:
            return 0
        missed, self.incomplete = int(self.incomplete), None
        return missed
