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
import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

log = logging.getLogger(__name__)

UNUSED = -1  # the key of an entry beyond the count: sorts before every real key (which are >= 0)


@dataclass
class TileIntersections:
    offsets: Tensor  # [I, tile_height, tile_width] int32, each tile's first entry in flatten_ids
    flatten_ids: Tensor  # [capacity] int32, index into the I * N projected Gaussians, sorted by key
    count: Tensor  # 0-dim int64 on the device: the intersections there are (<= capacity: all kept)


def _bits(n: int) -> int:
    return int(math.floor(math.log2(n))) + 1  # gsplat's count of bits for ids in [0, n)


def tile_rectangles(means2d: Tensor, radii: Tensor, tile_size: int, tile_width: int, tile_height: int
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """The tiles each projected Gaussian touches: means2d [M, 2] pixels, radii [M, 2] int32 (per axis,
    0 = not drawn). Returns the first column and row [M] int64 and the rectangle's width and height
    [M] int64 (both 0 for a Gaussian not drawn). Exact for a power-of-two tile size, as gsplat's."""
    drawn = (radii > 0).all(dim=-1)  # [M]
    spans = []
    for axis, limit in ((0, tile_width), (1, tile_height)):
        centre = means2d[:, axis] / float(tile_size)
        reach = radii[:, axis].to(means2d.dtype) / float(tile_size)
        # gsplat converts to unsigned: negative and NaN become 0; the grid clamps the rest.
        low = torch.nan_to_num(torch.floor(centre - reach), nan=0.0).clamp(0.0, float(limit)).long()
        high = torch.nan_to_num(torch.ceil(centre + reach), nan=0.0).clamp(0.0, float(limit)).long()
        spans.append((low, torch.where(drawn, high - low, 0)))
    (column, width), (row, height) = spans
    return column, row, width, height


def intersect_tiles(means2d: Tensor, radii: Tensor, depths: Tensor, tile_size: int, tile_width: int,
                    tile_height: int, capacity: int | Callable[[Tensor], int]) -> TileIntersections:
    """Sorted tile intersections of I images' projected Gaussians, at most `capacity` of them:
    means2d [I, N, 2], radii [I, N, 2] int32, depths [I, N] (> 0 where drawn). `capacity` is a
    number, or a function of the count (a 0-dim device tensor) returning one. Nothing here waits for
    the device unless that function does; `count` tells whether the capacity sufficed."""
    n_images, n = depths.shape
    device = depths.device
    column, row, width, height = tile_rectangles(means2d.reshape(-1, 2), radii.reshape(-1, 2), tile_size,
                                                 tile_width, tile_height)
    per_gaussian = width * height  # [I * N]
    ends = torch.cumsum(per_gaussian, dim=0)  # [I * N] one past each Gaussian's last entry
    count = ends[-1]
    if callable(capacity):
        capacity = capacity(count)
    slots = torch.arange(capacity, device=device)
    owner = torch.searchsorted(ends, slots, right=True)  # the Gaussian of each entry: I * N beyond the count
    used = owner < ends.numel()
    owner = owner.clamp_max(ends.numel() - 1)
    local = slots - (ends[owner] - per_gaussian[owner])  # entry within its Gaussian's rectangle
    span = width[owner].clamp_min(1)
    tile = (row[owner] + local // span) * tile_width + column[owner] + local % span
    tile_bits = _bits(tile_width * tile_height)
    image = owner // n
    depth_bits = depths.reshape(-1).float().view(torch.int32).long() & 0xFFFFFFFF
    keys = (image << (32 + tile_bits)) | (tile << 32) | depth_bits[owner]
    keys = torch.where(used, keys, UNUSED)
    keys, order = torch.sort(keys, stable=True)
    flatten_ids = owner[order].to(torch.int32)
    # Each (image, tile)'s first entry: the first key at or above its smallest possible key.
    firsts = (torch.arange(n_images, device=device)[:, None] << (32 + tile_bits)) | (
        torch.arange(tile_width * tile_height, device=device)[None, :] << 32)
    offsets = torch.searchsorted(keys, firsts.reshape(-1)).to(torch.int32)
    return TileIntersections(offsets.reshape(n_images, tile_height, tile_width), flatten_ids, count)


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
    def use(self) -> Iterator["IntersectionBudget"]:
        """Renderings inside draw without waiting for their intersection count."""
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
