"""The per-point networks' linear layer: `nn.Linear` whose bias gradient is a matrix-vector product.

Autograd forms a linear layer's bias gradient as a column sum of the output's gradient, a reduction
kernel over every row. At 100k points (800k rows in the Gaussian network with 8 frames a step) these
sums were 2.3-3.1 ms of a training step's GPU work on an H200, a few times what reading the
gradients costs; `ones @ grad` does the same sum as one matrix-vector product (cuBLAS), which reads
them at the memory's speed. On a CPU (where it was no faster) and under autocast
(`model.network_precision = bfloat16`, so that autocast's casts and what it keeps for the backward
pass stay as they are) the layer is PyTorch's own.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _LinearFunction(torch.autograd.Function):
    """y = x W^T + b for x [..., in], W [out, in], b [out]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])  # [M, out]
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = rows.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_bias = rows.new_ones(rows.shape[0]) @ rows if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, weight, bias)` whose bias gradient is `ones @ grad`."""
    return _LinearFunction.apply(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (the same parameters, initialisation and state dict) with the bias gradient above
    on a GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None or x.device.type != "cuda" or torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        return linear(x, self.weight, self.bias)
