"""The per-point networks of a training step replayed from CUDA graphs (conf `model.training_graphs`).

A training step at a few thousand points is bound by launching kernels from the host, and at 100k
points the host's launches still stretch the step beyond the GPU's work: the three per-point
networks' forward and backward passes alone are several hundred launches a step (weight
normalisation, matrix products, activations and all their gradients). `torch.cuda.make_graphed_callables`
records a network's forward and its backward once and replays each with one launch; autograd sees
one node per network, through which the gradients reach the parameters and the input as before.

A recording is made for one input: its shape, dtype, device and whether it takes a gradient, and
for the parameters' storage. A network is recorded again when any of these change (the points
change in number at every prune/grow step, the last batch of an epoch may have fewer frames), and
only the newest recording of each network is kept: its activations live in the recording's own
memory pool for as long as it is kept, where a launched step would have allocated them anyway.

Where it does not apply the networks are launched as before: on a CPU, with activation
recomputation (a loop of chunks of its own), with `model.compile`, and without gradients.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

WARMUP_CALLS = 2  # forward and backward passes on a side stream before recording (lazy initialisation stays out)


class _FlatNetwork(nn.Module):
    """A network's call in a precision as a function of one tensor returning a tuple of tensors
    (what `make_graphed_callables` records). Its parameters are the network's."""

    def __init__(self, net: nn.Module, call: Callable[[nn.Module, torch.Tensor], object]) -> None:
        super().__init__()
        self.net, self.call = net, call
        self.output_type: type | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.call(self.net, x)
        self.output_type = type(out)
        return tuple(getattr(out, f.name) for f in fields(out))


@dataclass
class _Recording:
    key: tuple
    replay: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    output_type: type


def _key(net: nn.Module, x: torch.Tensor) -> tuple:
    params = tuple((p.data_ptr(), p.requires_grad) for p in net.parameters())
    return tuple(x.shape), x.dtype, x.device, x.requires_grad, params


class NetworkGraphs:
    """`graphs(name, net, x)`: `call(net, x)` (a dataclass of tensors) from the newest recording of
    network `name`, recorded first when `x` or the network's parameters differ from it.

    `call` is the avatar's precision (`NetworkPrecision.__call__`); `recordings` counts the
    recordings made (for the logs and the tests)."""

    def __init__(self, call: Callable[[nn.Module, torch.Tensor], object]) -> None:
        self.call = call
        self._recordings: dict[str, _Recording] = {}
        self.recordings = 0

    @staticmethod
    def applies(device: torch.device) -> bool:
        """Whether networks on `device` are replayed now: on a GPU, with gradients."""
        return can_record_training(device)

    def __call__(self, name: str, net: nn.Module, x: torch.Tensor):
        key = _key(net, x)
        recording = self._recordings.get(name)
        if recording is None or recording.key != key:
            self._recordings.pop(name, None)  # the old pool goes before the new one is taken
            recording = self._record(net, x, key)
            self._recordings[name] = recording
        return recording.output_type(*recording.replay(x))

    def _record(self, net: nn.Module, x: torch.Tensor, key: tuple) -> _Recording:
        flat = _FlatNetwork(net, self.call)
        sample = x.detach().clone().requires_grad_(x.requires_grad)
        replay = torch.cuda.make_graphed_callables(flat, (sample,), num_warmup_iters=WARMUP_CALLS,
                                                   allow_unused_input=True)
        self.recordings += 1
        log.debug("recorded %s's forward and backward on %s rows as CUDA graphs", type(net).__name__,
                  tuple(x.shape[:-1]))
        return _Recording(key, replay, flat.output_type)


def can_record_training(device: torch.device) -> bool:
    """Whether a training step's networks on `device` can be replayed from CUDA graphs."""
    return device.type == "cuda" and torch.is_grad_enabled()
