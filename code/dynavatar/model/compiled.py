"""Compiling the per-point work of a step with `torch.compile` (conf `model.compile`).

At 100k points the networks' casts (with `model.network_precision = bfloat16`), activations and
the posing's elementwise work are many kernels each; compiled, they fuse, and a step with bfloat16
networks was 10-12% faster on an H200. Below that a step is bound by launching kernels from the
host, and compiled it was slower; compiling itself takes about 100 s (docs/PERFORMANCE.md). So
every recipe leaves it off. What is compiled, for training:
the three per-point networks (each in the avatar's precision), the posing of the frames
(`Avatar.pose`) and the SSIM loss, each once with dynamic sizes, so that pruning and growing the
points and a new number of frames a step do not compile again. Evaluation and animation run them
as they are (`Avatar.compiled` says why).

The point set is an `nn.Parameter`, and dynamo compiles a parameter's size in as a constant unless
`force_parameter_static_shapes` is off: with it on, every prune or grow compiled the networks again,
and a backward compiled for one point count was run on another (a stride assertion). It is turned
off, process-wide, when the first function is compiled, and so is duck sizing (see
`_configure_dynamo`).

`model.compile`: `off`; `on` (everywhere; on the CPU Inductor needs a C++ compiler); `auto` (on a
CUDA device with Triton, else off). The maths is that of the uncompiled functions; the sums may be
reordered (float rounding).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Callable

import torch

from ..config.schema import COMPILE_MODES

log = logging.getLogger(__name__)


def can_compile(device: torch.device) -> bool:
    """Whether `auto` compiles on `device`: a CUDA device, with Triton installed for Inductor's kernels."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def _configure_dynamo() -> None:
    import torch._dynamo
    import torch.fx.experimental._config as fx_config

    # Sizes of parameters (the points) dynamic like any input's: see the module's docstring.
    torch._dynamo.config.force_parameter_static_shapes = False
    # Sizes that happen to be equal are not one size: 3 frames a step beside 3 colour channels or
    # coordinates would otherwise fix the number of frames at 3 and compile again for any other.
    fx_config.use_duck_shape = False


class StepCompiler:
    """Compiled versions of a step's functions, made once per name on first use (`model.compile`).

    `backend` is torch.compile's (tests use "aot_eager": the same tracing and autograd, no code
    generation).
    """

    def __init__(self, mode: str, backend: str = "inductor") -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(f"model.compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
        self.mode, self.backend = mode, backend
        self._compiled: dict[str, Callable] = {}

    def enabled(self, device: torch.device) -> bool:
        if self.mode == "auto":
            return can_compile(device)
        return self.mode == "on"

    def __call__(self, name: str, fn: Callable, device: torch.device) -> Callable:
        """`fn`, compiled (and kept under `name`) when compiling is enabled on `device`, else `fn`.

        The compiled function is the one first given for `name`: callers pass the same function
        (it may close over modules, whose parameters dynamo reads at each call)."""
        if not self.enabled(device):
            return fn
        compiled = self._compiled.get(name)
        if compiled is None:
            if not self._compiled:
                _configure_dynamo()
                log.info("model.compile: compiling the networks, the posing and the SSIM loss (%s); the first "
                         "steps take longer", self.backend)
            compiled = torch.compile(fn, dynamic=True, backend=self.backend)
            self._compiled[name] = compiled
        return compiled
