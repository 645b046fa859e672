"""A training step's per-point work replayed from CUDA graphs (conf `model.training_graphs`).

A training step at a few thousand points is bound by launching kernels from the host, and at 100k
points the host's launches still stretch the step beyond the GPU's work. The step's per-point work
is recorded: the canonical and deformer networks (weight normalisation, matrix products,
activations), the canonical state (x', x0, the nearest FLAME vertices) and the posing of the frames
(FLAME's joint transforms, blendshapes, correctives and skinning, the Gaussian network, the
activations and the shading), forward and backward: several hundred launches a step.
`torch.cuda.make_graphed_callables` records a call's forward and backward once and replays each
with one launch; autograd sees one node per call, through which the gradients reach the parameters
and the inputs as before.

A recording is made for one set of inputs: their shapes, dtypes, devices and whether they take a
gradient, and for the parameters' storage (and whatever else the caller names that the graph reads
in place). A call is recorded again when any of these change (the points change in number at every
prune/grow step, the last batch of an epoch may have fewer frames), and only the newest recording
of each is kept: its activations live in the recording's own memory pool for as long as it is
kept, where a launched step would have allocated them anyway.

A recording's outputs are its own buffers, overwritten by its next replay: a step replays each once
before its backward pass, as training does.

Where it does not apply the work is launched as before: on a CPU, with `model.compile`, and without
gradients. Where the networks' activations are recomputed (a loop of chunks of their own) they are
launched and the posing alone is replayed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .capture import collect_dropped_graphs, own_cublas_workspaces, warm_up

log = logging.getLogger(__name__)


class _FlatCall(nn.Module):
    """`fn(*tensors)`, a function of tensors returning a tuple of tensors, as a module whose parameters
    are `holder`'s (the parameters `fn` reads): what `make_graphed_callables` records."""

    def __init__(self, holder: nn.Module, fn: Callable[..., tuple[torch.Tensor, ...]]) -> None:
        super().__init__()
        self.holder, self.fn = holder, fn

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.fn(*inputs))


@dataclass
class _Recording:
    key: tuple
    replay: Callable[..., tuple[torch.Tensor, ...]]


def _key(holder: nn.Module, inputs: Sequence[torch.Tensor], read_in_place: tuple) -> tuple:
    params = tuple((p.data_ptr(), p.requires_grad) for p in holder.parameters())
    return tuple((tuple(x.shape), x.dtype, x.device, x.requires_grad) for x in inputs), params, read_in_place


class StepGraphs:
    """Replays of the training step's work from CUDA graphs, one recording per name:
    `graphs.replay(name, holder, fn, inputs)` is `fn(*inputs)` (a tuple of tensors) for any call
    whose parameters are `holder`'s. `recordings` counts the recordings made (for the logs and the
    tests)."""

    def __init__(self) -> None:
        self._recordings: dict[str, _Recording] = {}
        self.recordings = 0
        quiet_accumulator_streams()

    @staticmethod
    def applies(device: torch.device) -> bool:
        """Whether the step's work on `device` is replayed now: on a GPU, with gradients."""
        return can_record_training(device)

    def discard(self, name: str) -> None:
        """Drop the recording of `name`, and the memory its pool holds, if there is one."""
        if self._recordings.pop(name, None) is not None:
            collect_dropped_graphs()

    def replay(self, name: str, holder: nn.Module, fn: Callable[..., tuple[torch.Tensor, ...]],
               inputs: Sequence[torch.Tensor], read_in_place: tuple = ()) -> tuple[torch.Tensor, ...]:
        """`fn(*inputs)` from the newest recording of `name`, recorded first when the inputs, `holder`'s
        parameters or `read_in_place` (identities of other tensors the graph reads where they lie, and
        anything else the recorded work depends on) differ from it."""
        key = _key(holder, inputs, read_in_place)
        recording = self._recordings.get(name)
        if recording is None or recording.key != key:
            recording = None  # no reference to the recording replaced is left, so `_record` frees it
            self._recordings.pop(name, None)
            recording = self._record(name, holder, fn, inputs, key)
            self._recordings[name] = recording
        return recording.replay(*inputs)

    def _record(self, name: str, holder: nn.Module, fn: Callable[..., tuple[torch.Tensor, ...]],
                inputs: Sequence[torch.Tensor], key: tuple) -> _Recording:
        collect_dropped_graphs()  # the recording replaced, before its successor takes a pool
        flat = _FlatCall(holder, fn)
        samples = tuple(x.detach().clone().requires_grad_(x.requires_grad) for x in inputs)
        # Warmed up here rather than by make_graphed_callables, so that the workspaces are cleared
        # between the warm-up and the capture (`capture`'s text says why).
        warm_up(flat, samples, tuple(holder.parameters()), backward=True)
        with own_cublas_workspaces():
            replay = torch.cuda.make_graphed_callables(flat, samples, num_warmup_iters=0, allow_unused_input=True)
        self.recordings += 1
        log.debug("recorded %s's forward and backward on inputs %s as CUDA graphs", name,
                  [tuple(x.shape) for x in inputs])
        return _Recording(key, replay)


def quiet_accumulator_streams() -> None:
    """Turn off PyTorch's warning that a parameter's gradient accumulator was made on another stream
    than the gradient that reaches it. The recordings' backward passes are captured on their own
    stream, so every replayed step would raise it once a process; the wait it stands for measured as
    no cost (docs/PERFORMANCE.md), and making the accumulators on the training stream instead breaks
    the capture. A no-op on a PyTorch without the setting."""
    quiet = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
    if quiet is not None:
        quiet(False)


def can_record_training(device: torch.device) -> bool:
    """Whether a training step's work on `device` can be replayed from CUDA graphs."""
    return device.type == "cuda" and torch.is_grad_enabled()
