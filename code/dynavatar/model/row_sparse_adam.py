"""SparseAdam's update for embedding tables whose gradients name a few rows (the per-frame inputs).

`RowSparseAdam` computes torch.optim.SparseAdam's arithmetic, with its state layout (`step`,
`exp_avg`, `exp_avg_sq`) so that checkpoints load either way, without coalescing the gradient
(coalescing waits for the device every step). Two forms:

- PyTorch's, over all of a table's rows (the rows the gradient names are updated, the others kept):
  about 33 small operations a table, and in training three tables a step, about a third of a small
  step's kernel launches;
- one Triton kernel a table (a CUDA device with Triton, and the `found_inf` flag the training's
  non-finite guard sets): one program per gradient entry, the first entry of each row summing the
  row's entries and updating it, so nothing but the named rows is read or written.

Triton's interpreter (TRITON_INTERPRET=1, set before this module is imported) runs the kernel on
the CPU; the tests use it to check the kernel against PyTorch's form.
"""

from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: PyTorch's form
    triton = None


def fused_available(device: torch.device) -> bool:
    """Whether the kernel can run on `device`: a CUDA device with Triton installed."""
    return device.type == "cuda" and triton is not None


def _hi_lo(value: float) -> tuple[float, float]:
    """A double as two floats whose sum in double precision restores it to about 48 bits: a Triton
    kernel takes Python floats as float32, and the bias corrections are computed in float64."""
    hi = float(torch.tensor(value, dtype=torch.float32))
    return hi, value - hi


if triton is not None:

    @triton.jit
    def _row_adam_kernel(param_ptr, exp_avg_ptr, exp_avg_sq_ptr, rows_ptr, values_ptr, step_ptr, new_step_ptr,
                         found_inf_ptr, entries, width, lr_hi, lr_lo, beta1_hi, beta1_lo, beta2_hi, beta2_lo,
                         one_minus_beta1, one_minus_beta2, eps, sign, BLOCK: tl.constexpr):
        """Program i: gradient entry i ([entries] rows, [entries, width] values). The row's first entry
        sums the values of all its entries and updates the row's moments and weights; the step count
        (float64, one value) goes from step_ptr to new_step_ptr, plus one where found_inf is 0."""
        i = tl.program_id(0)
        row = tl.load(rows_ptr + i)
        cols = tl.arange(0, BLOCK)
        inside = cols < width
        grad = tl.zeros([BLOCK], dtype=tl.float32)
        earlier = 0  # entries of this row before i: not 0, another program updates the row
        for j in range(0, entries):
            same = tl.load(rows_ptr + j) == row
            values = tl.load(values_ptr + j * width + cols, mask=inside, other=0.0)
            grad += tl.where(same, values, 0.0)
            earlier += (same & (j < i)).to(tl.int32)
        grad = grad * sign
        applied = tl.load(found_inf_ptr + 0 * cols) == 0  # [BLOCK], all alike: the flag, as a mask
        step = tl.load(step_ptr) + tl.where(tl.load(found_inf_ptr) == 0, 1.0, 0.0).to(tl.float64)
        if i == 0:
            tl.store(new_step_ptr, step)
        step = tl.maximum(step, 1.0)  # no division by zero before the first applied step
        lr = tl.cast(lr_hi, tl.float64) + tl.cast(lr_lo, tl.float64)
        beta1 = tl.cast(beta1_hi, tl.float64) + tl.cast(beta1_lo, tl.float64)
        beta2 = tl.cast(beta2_hi, tl.float64) + tl.cast(beta2_lo, tl.float64)
        bias1 = 1.0 - tl.exp(step * tl.log(beta1))
        bias2 = 1.0 - tl.exp(step * tl.log(beta2))
        step_size = -(lr * tl.sqrt(bias2) / bias1)  # float64
        offsets = row * width + cols
        exp_avg = tl.load(exp_avg_ptr + offsets, mask=inside, other=0.0)
        exp_avg_sq = tl.load(exp_avg_sq_ptr + offsets, mask=inside, other=0.0)
        weight = tl.load(param_ptr + offsets, mask=inside, other=0.0)
        numer = (grad - exp_avg) * one_minus_beta1 + exp_avg
        new_sq = (grad * grad - exp_avg_sq) * one_minus_beta2 + exp_avg_sq
        denom = tl.sqrt_rn(new_sq) + eps
        update = inside & applied & (earlier + 0 * cols == 0)  # the comparison on a vector: Triton's interpreter
        tl.store(exp_avg_ptr + offsets, numer, mask=update)
        tl.store(exp_avg_sq_ptr + offsets, new_sq, mask=update)
        tl.store(param_ptr + offsets, weight + step_size.to(tl.float32) * tl.div_rn(numer, denom), mask=update)


def _fused_step(param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict, found_inf: torch.Tensor) -> None:
    """One table's update by the kernel. param [F, D] float32; grad: its sparse gradient ([nnz] rows,
    [nnz, D] values, rows possibly repeated); state's `step` becomes a new float64 device tensor."""
    rows = grad._indices()[0].contiguous()
    values = grad._values().reshape(rows.shape[0], -1).contiguous()
    step = torch.as_tensor(state["step"], dtype=torch.float64, device=param.device)
    new_step = torch.empty_like(step)
    beta1, beta2 = group["betas"]
    width = param[0].numel()
    if rows.numel():
        _row_adam_kernel[(rows.shape[0],)](
            param, state["exp_avg"], state["exp_avg_sq"], rows, values, step, new_step, found_inf.to(param.device),
            rows.shape[0], width, *_hi_lo(group["lr"]), *_hi_lo(beta1), *_hi_lo(beta2), 1 - beta1, 1 - beta2,
            group["eps"], -1.0 if group["maximize"] else 1.0, BLOCK=triton.next_power_of_2(width))
    else:
        new_step.copy_(step + (found_inf.to(param.device) == 0))
    state["step"] = new_step


def _dense_step(param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict,
                found_inf: torch.Tensor | None) -> None:
    """One table's update in PyTorch's operations, over all its rows."""
    beta1, beta2 = group["betas"]
    rows = grad._indices()[0]  # [nnz], possibly repeated
    dense = torch.zeros_like(param).index_add_(0, rows, grad._values())  # summed as coalesce does
    touched = torch.zeros(param.shape[0], 1, dtype=torch.bool, device=param.device)
    touched.index_fill_(0, rows, True)
    if found_inf is None:
        state["step"] = int(state["step"]) + 1
        step = state["step"]
        step_size = group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    else:
        applied = found_inf.to(param.device) == 0
        touched &= applied
        state["step"] = torch.as_tensor(state["step"], dtype=torch.float64, device=param.device) + applied
        step = state["step"].clamp(min=1)  # no division by zero before the first applied step
        step_size = group["lr"] * (1 - beta2 ** step).sqrt() / (1 - beta1 ** step)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    avg_update = (dense - exp_avg) * (1 - beta1)
    sq_update = (dense * dense - exp_avg_sq) * (1 - beta2)
    numer = avg_update + exp_avg
    denom = (sq_update + exp_avg_sq).sqrt() + group["eps"]
    exp_avg.copy_(torch.where(touched, numer, exp_avg))
    exp_avg_sq.copy_(torch.where(touched, sq_update + exp_avg_sq, exp_avg_sq))
    param.add_(torch.where(touched, -step_size * (numer / denom), torch.zeros_like(param)))


class RowSparseAdam(torch.optim.Optimizer):
    """torch.optim.SparseAdam's update for the sparse gradients of nn.Embedding(sparse=True).

    fused: None picks the Triton kernel where it runs (a CUDA device with Triton) and the step is
    guarded (`found_inf` set), else PyTorch's form; True asks for the kernel wherever Triton runs
    (its CPU interpreter in the tests); False, PyTorch's form.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 maximize: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, maximize=maximize))
        self.fused = fused

    def _uses_kernel(self, param: torch.Tensor, found_inf: torch.Tensor | None) -> bool:
        if self.fused is False or found_inf is None or param.dtype != torch.float32 or not param.is_contiguous():
            return False
        return triton is not None if self.fused else fused_available(param.device)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        # As Adam's fused kernel: a `found_inf` tensor set by the caller (non-zero: a non-finite
        # gradient) makes the step change nothing, decided on the device. The step count is then a
        # device tensor (float64, so the bias corrections equal the Python ones).
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError("RowSparseAdam takes the sparse gradients of nn.Embedding(sparse=True)")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                if self._uses_kernel(param, found_inf):
                    _fused_step(param, param.grad, state, group, found_inf)
                else:
                    grad = -param.grad if group["maximize"] else param.grad
                    _dense_step(param, grad, state, group, found_inf)
        return loss
