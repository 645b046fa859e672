"""Activation recomputation of the per-point networks, decided by memory (conf `model.recompute`).

A training step keeps every network activation for the backward pass; at 100k points the
canonical and deformer networks' alone hold about 3 GB. Recomputing them in the backward pass, a
chunk of `model.recompute_chunk` points at a time, keeps only the networks' inputs (the same maths,
about a third more network compute; with one chunk, at most `recompute_chunk` points, the very
same operations, so on the CPU the same numbers). `model.recompute`:

- `off`: never; `on`: always when training;
- `auto`: only when the step's estimated activation memory would not fit in the device's free
  memory (`activation_bytes`, `free_memory`).

The estimate, per point: autograd keeps each Linear layer's input and its output (the input of
the activation after it), so a network holds sum(in + out) floats over its Linear layers per row
it is run on. A step runs the canonical network on every point, the deformer on every point (twice
with the FLAME priors: once more on the detached points) and the gaussian network on every point
of every frame:

    bytes = points x element size x SAFETY x (canonical + deformer x rows + gaussian x frames)

SAFETY (2) covers what the estimate leaves out: the posing of each frame, the rasterizer's work,
the gradients and the allocator's slack. The per-point sum itself errs high: 4.1 GB for the
canonical network and the deformer (twice) at 100k points, where the CPU measured 2.8 GiB between
kept and recomputed activations (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import fields
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
SAFETY = 2.0
MEMINFO = Path("/proc/meminfo")

# A network's layer widths are fixed when it is built: its per-row estimate is computed once.
_floats_per_row: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


def activation_floats(net: nn.Module) -> int:
    """Floats autograd keeps per input row of a per-point network: sum(in + out) over its Linear layers."""
    floats = _floats_per_row.get(net)
    if floats is None:
        floats = sum(m.in_features + m.out_features for m in net.modules() if isinstance(m, nn.Linear))
        _floats_per_row[net] = floats
    return floats


def activation_bytes(n_points: int, frames: int, with_prior: bool, canonical: nn.Module, deformer: nn.Module,
                     gaussian: nn.Module, element_size: int) -> int:
    """The estimated activation memory of a training step (see the module's docstring)."""
    rows = 2 if with_prior else 1
    per_point = (activation_floats(canonical) + activation_floats(deformer) * rows
                 + activation_floats(gaussian) * frames)
    return int(n_points * element_size * SAFETY * per_point)


def free_memory(device: torch.device) -> int | None:
    """Bytes the step can still allocate on `device`, or None where it cannot be read.

    CUDA: the driver's free memory plus what PyTorch's allocator holds unused. CPU: MemAvailable of
    /proc/meminfo, else the available physical pages (os.sysconf).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class RecomputePolicy:
    """When the per-point networks' activations are recomputed (conf `model.recompute`,
    `model.recompute_chunk`). `probe(device)` gives the free memory in bytes (None: unknown);
    tests inject a figure through it."""

    def __init__(self, mode: str, chunk: int,
                 probe: Callable[[torch.device], int | None] = free_memory) -> None:
        if mode not in MODES:
            raise ValueError(f"model.recompute must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.chunk, self.probe = mode, int(chunk), probe
        self._unknown_logged = False
        self._last: tuple[tuple[int, torch.device, int], bool] | None = None  # (estimate, device, points), decision

    def decide(self, estimate: int, device: torch.device, n_points: int) -> bool:
        """Whether a training step whose activations take about `estimate` bytes recomputes them.
        The free memory is read again only when the step's size changes (points, frames, priors):
        steps of one size take the same memory, and reading the allocator's figures every step cost
        the host about as much as launching a dozen kernels."""
        if self.mode != "auto":
            return self.mode == "on"
        key = (estimate, device, n_points)
        if self._last is None or self._last[0] != key:
            self._last = (key, self._decide_now(estimate, device, n_points))
        return self._last[1]

    def _decide_now(self, estimate: int, device: torch.device, n_points: int) -> bool:
        free = self.probe(device)
        if free is None:  # unreadable: recompute once the points exceed one chunk
            if not self._unknown_logged:
                self._unknown_logged = True
                log.info("free memory of %s cannot be read: activations are recomputed above %d points",
                         device, self.chunk)
            return n_points > self.chunk
        return estimate > free

    def run(self, net: nn.Module, x: torch.Tensor, recompute: bool):
        """net(x) for a per-point network; with `recompute`, only x is kept for the backward pass,
        which recomputes the activations `chunk` rows at a time (at most one chunk's exist at once)."""
        if not recompute:
            return net(x)
        outputs = [checkpoint(net, part, use_reentrant=False) for part in x.split(self.chunk)]
        if len(outputs) == 1:
            return outputs[0]
        return type(outputs[0])(*(torch.cat([getattr(o, f.name) for o in outputs]) for f in fields(outputs[0])))
