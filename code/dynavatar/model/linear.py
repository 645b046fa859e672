"""The per-point networks' linear layer: `nn.Linear` whose bias gradient is a matrix-vector product,
and which can apply its ReLU in the same kernel as its matrix product.

Autograd forms a linear layer's bias gradient as a column sum of the output's gradient, a reduction
kernel over every row. At 100k points (800k rows in the Gaussian network with 8 frames a step) these
sums were 2.3-3.1 ms of a training step's GPU work on an H200, a few times what reading the
gradients costs; `ones @ grad` does the same sum as one matrix-vector product (cuBLAS), which reads
them at the memory's speed. A ReLU after the layer is cuBLASLt's epilogue of the product
(`torch._addmm_activation`) rather than a kernel of its own that reads and writes every activation
once more. On a CPU (where neither was faster) the layer is PyTorch's own, followed by `torch.relu`.

Under autocast on a GPU (`model.network_precision = bfloat16`) the layer casts its operands to
autocast's type itself and hands its output on in that type, and `Softplus` keeps it there: the
activations between layers are read and written at half the width. Autocast alone would compute
every softplus in float32 (it is on its list of float32 operations) and cast its output back before
the next product, three passes over each activation where one does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _LinearFunction(torch.autograd.Function):
    """y = x W^T + b, or relu(x W^T + b), for x [..., in], W [out, in], b [out]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> torch.Tensor:
        if relu:
            rows = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t())  # [M, out]
            y = rows.reshape(*x.shape[:-1], weight.shape[0])
            ctx.save_for_backward(x, weight, y)  # the ReLU's gradient is read from its output
        else:
            y = F.linear(x, weight, bias)
            ctx.save_for_backward(x, weight)
        ctx.relu = relu
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors[:2]
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, ctx.saved_tensors[2], 0)  # relu's own gradient
        rows = grad.reshape(-1, grad.shape[-1])  # [M, out]
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = rows.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_bias = rows.new_ones(rows.shape[0]) @ rows if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None


def fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, then `torch.relu` when `relu`, as one autograd node whose bias
    gradient is `ones @ grad` (any device; `linear` chooses it where it is faster)."""
    return _LinearFunction.apply(x, weight, bias, relu)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, then `torch.relu` when `relu`: on a GPU by `fused_linear` (under
    autocast in autocast's type, its output in that type), elsewhere by PyTorch's own operations."""
    device = x.device.type
    if device != "cuda":
        y = F.linear(x, weight, bias)
        return torch.relu(y) if relu else y
    if not torch.is_autocast_enabled(device):
        return fused_linear(x, weight, bias, relu)
    dtype = torch.get_autocast_dtype(device)
    with torch.autocast(device, enabled=False):
        return fused_linear(x.to(dtype), weight.to(dtype), bias.to(dtype), relu)


class Softplus(nn.Softplus):
    """`nn.Softplus` computed in its input's type even under autocast (which would compute it in float32
    and write a float32 output): between two of the layers above its input is already autocast's
    type. Outside autocast it is `nn.Softplus`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x)


class Linear(nn.Linear):
    """`nn.Linear` (the same parameters, initialisation and state dict) with the bias gradient above
    on a GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return super().forward(x)
        return linear(x, self.weight, self.bias)
