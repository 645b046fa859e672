"""What every CUDA-graph recording of the model needs around it: the dropped recordings collected
first, a warm-up on a side stream, and cuBLAS workspaces of the recording's own.

PyTorch keeps one cuBLAS workspace per (cuBLAS handle, stream), and every recording is captured on
one shared stream (`torch.cuda.graph`'s default capture stream). A workspace that exists when a
capture begins is written into the recording where it lies: in an earlier recording's memory pool,
or in memory the caching allocator owns when the warm-up's side stream was the capture stream itself
(PyTorch hands out its 32 streams in turn, so every 32nd new stream is). Once that memory is freed
(by `release_cublas_workspaces`, or with the earlier recording's pool), the recording's matrix
products write where other tensors now live or where nothing is mapped any more: wrong values, or
`CUDA error: unspecified launch failure` some steps later. (PyTorch's issue 193402 reports the same
failure for a training graph and an evaluation graph captured on one stream: destroying the second
freed the workspace the first still used.) `own_cublas_workspaces` clears them before a capture, so
that the capture allocates its workspace in its own pool, which lives as long as the recording, and
after it, so that no later capture finds it and nothing else frees it.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Callable, Iterator, Sequence

import torch

WARMUP_CALLS = 2  # calls on a side stream before recording (lazy initialisation stays out of the graph)


def collect_dropped_graphs() -> None:
    """Free the CUDA graphs that were dropped but are still held by reference cycles; call before a
    capture.

    A recording of `torch.cuda.make_graphed_callables` (`StepGraphs`) is a reference cycle (its
    autograd Function class; a module whose forward it replaced), so dropping it frees nothing until
    Python's cycle collector runs, and torch collects before a capture only when
    `torch.compiler.config.force_cudagraph_gc` is set. Left to chance, the dropped recordings' memory
    pools pile up with each new recording (training ran out of memory that way), and a collection
    that happens to run in the middle of a later capture destroys their graphs there, which
    invalidates that capture (`cudaErrorStreamCaptureInvalidated`)."""
    gc.collect()


def release_cublas_workspaces() -> None:
    """Free the cuBLAS workspaces PyTorch keeps for every CUDA stream that ran a matrix product.

    Each stream keeps its workspaces (about 65 MiB on an H100 or H200) until it runs again: a warm-up
    on a new side stream for every recording held 2 GiB after 32 recordings. The streams in use make
    theirs again at their next product; a recording made inside `own_cublas_workspaces` keeps the
    memory it captured with (its own pool). A no-op where the build has no CUDA."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()


@contextlib.contextmanager
def own_cublas_workspaces() -> Iterator[None]:
    """Around a capture (and after its warm-up): the recording's cuBLAS workspace in its own pool,
    none left behind (see the module's text). Training and the viewer record from one thread."""
    release_cublas_workspaces()
    try:
        yield
    finally:
        release_cublas_workspaces()


def warm_up(fn: Callable[..., object], inputs: Sequence[torch.Tensor], parameters: Sequence[torch.Tensor] = (),
            backward: bool = False) -> None:
    """Call `fn(*inputs)` WARMUP_CALLS times on a side stream (on a GPU). With `backward`, `fn` returns
    a sequence of tensors, and the gradients of those that need one are taken with respect to the
    inputs and `parameters` that take one, as `make_graphed_callables` warms up: lazy initialisation
    (cuBLAS handles, Triton's compilation) happens here, outside the recording."""
    device = inputs[0].device
    side = torch.cuda.Stream(device) if device.type == "cuda" else None
    if side is not None:
        side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
        surface = tuple(t for t in (*inputs, *parameters) if t.requires_grad)
        for _ in range(WARMUP_CALLS):
            outputs = fn(*inputs)
            outputs = tuple(o for o in outputs if o.requires_grad) if backward else ()
            if outputs and surface:
                torch.autograd.grad(outputs, surface, grad_outputs=tuple(torch.ones_like(o) for o in outputs),
                                    allow_unused=True)
    if side is not None:
        torch.cuda.current_stream(device).wait_stream(side)
