"""Posing the frames of an avatar that cannot change as replays of CUDA graphs (conf `model.cuda_graphs`).

Rendering a frame for animation poses 100k Gaussians with a few hundred small kernels (the FLAME
kinematic chain, the skinning, the Gaussian network, the activations and the shading): the GPU does
that work in under half a millisecond, while launching the kernels one by one from Python took
longer than the work itself. A CUDA graph records the launches once and replays them with one call.

A graph is recorded for one canonical state (its tensors are read in place at every replay) and one
shape of the frames' inputs; the avatar keeps the graphs of its cached state in its
`CanonicalCache`, so that whatever makes the state stale (new points, a load, a move) also drops its
graphs. Only inference is replayed: with gradients enabled (training, fitting test-frame inputs)
the avatar poses as it always does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Callable

import torch

from .capture import collect_dropped_graphs, own_cublas_workspaces, warm_up
from .gaussians import Gaussians

log = logging.getLogger(__name__)


@dataclass
class _Recording:
    graph: torch.cuda.CUDAGraph
    expression: torch.Tensor  # the graph's input buffers: [B, E] and [B, 15]
    flame_pose: torch.Tensor
    output: Gaussians  # the graph's output buffers, overwritten by every replay


class PoseGraphs:
    """`pose(state, expression [B, E], flame_pose [B, 15]) -> Gaussians [B, N, ...]` replayed from CUDA
    graphs for one fixed `state`, one graph per input shape, dtype and device.

    The returned Gaussians are copies: the graph's own output buffers are overwritten by the next
    replay, and a caller may keep a frame's Gaussians while rendering the next.
    """

    def __init__(self, pose: Callable[..., Gaussians], state) -> None:
        self.pose, self.state = pose, state  # the state is held: its tensors are the graphs' inputs
        self._recordings: dict[tuple, _Recording] = {}

    def __call__(self, expression: torch.Tensor, flame_pose: torch.Tensor) -> Gaussians:
        key = (tuple(expression.shape), tuple(flame_pose.shape), expression.dtype, expression.device)
        recording = self._recordings.get(key)
        if recording is None:
            recording = self._record(expression, flame_pose)
            self._recordings[key] = recording
        recording.expression.copy_(expression)
        recording.flame_pose.copy_(flame_pose)
        recording.graph.replay()
        out = recording.output
        return Gaussians(*(getattr(out, f.name).clone() for f in fields(Gaussians)))

    def _record(self, expression: torch.Tensor, flame_pose: torch.Tensor) -> _Recording:
        collect_dropped_graphs()
        inputs = expression.clone(), flame_pose.clone()
        warm_up(lambda *x: self.pose(self.state, *x), inputs)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the viewer's other threads may use CUDA while its render thread records
        with own_cublas_workspaces(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = self.pose(self.state, *inputs)
        log.debug("recorded the posing of %d frame(s) as a CUDA graph", expression.shape[0])
        return _Recording(graph, *inputs, output)


def can_record(device: torch.device) -> bool:
    """Whether posing on `device` can be recorded as a CUDA graph."""
    return device.type == "cuda" and not torch.is_grad_enabled()
