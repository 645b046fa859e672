"""The arithmetic of the per-point networks (conf `model.network_precision`).

`float32` runs them as declared. `bfloat16` runs them under autocast: their matrix products in
bfloat16 (weights and activations rounded to 8 bits of mantissa, sums kept in float32), and on a
GPU the activations between layers stored in bfloat16 as well (`linear.linear`, `linear.Softplus`);
their outputs are handed back in float32, so that skinning, posing, rasterization and the losses
stay in float32. At 100k points the networks are the largest part of a training step, and most of
their time is memory traffic; the parameters, their gradients and Adam's moments stay float32.

A CUDA card older than Ampere (compute capability below 8.0: a T4, a V100) has no bfloat16
arithmetic of its own, nor has a CPU without AVX-512 or AMX (x86) or BF16 instructions (Arm), where
PyTorch would convert every operand at a cost larger than the gain; on these the networks run in
float32, with one warning.
"""

from __future__ import annotations

import logging
from dataclasses import fields, is_dataclass
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}
BFLOAT16_CAPABILITY = (8, 0)  # Ampere: the first CUDA cards with bfloat16 tensor cores


# (device type, index) -> has_bfloat16; a dict rather than functools.cache, whose wrapper dynamo
# would trace through instead of taking the answer as a constant.
_has_bfloat16: dict[tuple[str, int | None], bool] = {}


@torch.compiler.assume_constant_result  # a compiled posing reads it as the constant it is
def has_bfloat16(device_type: str, index: int | None) -> bool:
    """Whether a device computes in bfloat16 itself: a CUDA card of compute capability 8.0 or later,
    a CPU where oneDNN supports bfloat16 products. Warns once per device that does not."""
    key = (device_type, None if device_type == "cpu" else index)  # one answer (and warning) for all of a CPU
    if key not in _has_bfloat16:
        if device_type == "cuda":
            _has_bfloat16[key] = _cuda_has_bfloat16(index)
        elif device_type == "cpu":
            _has_bfloat16[key] = _cpu_has_bfloat16()
        else:
            _has_bfloat16[key] = True
    return _has_bfloat16[key]


def cpu_bfloat16_instructions() -> bool:
    """oneDNN's own test for bfloat16 products it supports (x86 with AVX-512 or AMX, Arm with BF16);
    False where PyTorch has no oneDNN."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _cpu_has_bfloat16() -> bool:
    if cpu_bfloat16_instructions():
        return True
    log.warning("model.network_precision = bfloat16: this CPU has no bfloat16 instructions (AVX-512 or AMX; BF16 "
                "on Arm); the networks run in float32 (model.network_precision=float32 says so without this warning)")
    return False


def _cuda_has_bfloat16(index: int | None) -> bool:
    capability = tuple(torch.cuda.get_device_capability(index))
    if capability >= BFLOAT16_CAPABILITY:
        return True
    log.warning("model.network_precision = bfloat16: %s (compute capability %d.%d) has no bfloat16 arithmetic "
                "of its own; the networks run in float32 (model.network_precision=float32 says so without this "
                "warning)", torch.cuda.get_device_name(index), *capability)
    return False


def as_float32(out):
    """A network's output (a dataclass of tensors) with every field in float32."""
    if not is_dataclass(out):
        return out.float()
    return type(out)(*(getattr(out, f.name).float() for f in fields(out)))


class NetworkPrecision:
    """Calls a per-point network in the precision named by `model.network_precision`."""

    def __init__(self, name: str) -> None:
        if name not in PRECISIONS:
            raise ValueError(f"model.network_precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
        self.name, self.dtype = name, PRECISIONS[name]

    def dtype_on(self, device: torch.device) -> torch.dtype | None:
        """The type the networks compute in on `device`: None (float32) for `float32`, and for
        `bfloat16` where the device has no bfloat16 arithmetic."""
        if self.dtype is None or not has_bfloat16(device.type, device.index):
            return None
        return self.dtype

    def __call__(self, net: nn.Module, x: torch.Tensor):
        """net(x), its matrix products in this precision, its outputs in float32."""
        dtype = self.dtype_on(x.device)
        if dtype is None:
            return net(x)
        with torch.autocast(x.device.type, dtype=dtype):
            out = net(x)
        return as_float32(out)

    def bind(self, net: nn.Module) -> Callable[[torch.Tensor], object]:
        """net as a function of its input alone, in this precision (for activation recomputation)."""
        return lambda x: self(net, x)
