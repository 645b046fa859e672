"""Per-frame tracking refinement: expression, FLAME pose and camera translation as embeddings.

The tracked values of each frame start the embeddings; a SparseAdam optimizer refines them jointly
with the avatar (training frames) or with the avatar frozen (test frames, at evaluation).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data.batch import FrameBatch


class FrameInputs(nn.Module):
    """Refinable inputs of the frames of one dataset (indexed by the dataset's `idx`)."""

    def __init__(self, expressions: torch.Tensor, flame_poses: torch.Tensor, world_mats: torch.Tensor,
                 optimize_expression: bool, optimize_camera: bool, apply_translation: bool = True) -> None:
        super().__init__()
        self.optimize_expression, self.optimize_camera = optimize_expression, optimize_camera
        # The translation embedding exists whenever the camera is refined (checkpoints keep one layout);
        # it reaches the renderer only with `apply_translation`, so that it is refined only then.
        self.apply_translation = apply_translation
        if optimize_expression:
            self.expression = nn.Embedding.from_pretrained(expressions.clone(), freeze=False, sparse=True)  # [F, 50]
        if optimize_camera:  # as the paper: the flag covers FLAME pose and camera translation
            self.flame_pose = nn.Embedding.from_pretrained(flame_poses.clone(), freeze=False, sparse=True)  # [F, 15]
            self.camera_translation = nn.Embedding.from_pretrained(world_mats[:, :3, 3].clone(), freeze=False,
                                                                   sparse=True)  # [F, 3]

    @property
    def enabled(self) -> bool:
        return self.optimize_expression or self.optimize_camera

    def apply(self, batch: FrameBatch) -> FrameBatch:
        """A copy of the batch with the refined values of its frames (by `batch.idx` [B])."""
        changes = {}
        if self.optimize_expression:
            changes["expression"] = self.expression(batch.idx)
        if self.optimize_camera:
            changes["flame_pose"] = self.flame_pose(batch.idx)
        if self.optimize_camera and self.apply_translation:
            rotation = batch.world_mat[:, :, :3]
            changes["world_mat"] = torch.cat([rotation, self.camera_translation(batch.idx)[:, :, None]], dim=2)
        return batch.replace(**changes)

    @property
    def refined(self) -> list[str]:
        """Which inputs `apply` replaces."""
        return ([name for name, on in (("expression", self.optimize_expression), ("pose", self.optimize_camera),
                                       ("camera_translation", self.optimize_camera and self.apply_translation))
                 if on])

    def optimizer(self, lr: float) -> "RowSparseAdam | None":
        params = list(self.parameters())
        return RowSparseAdam(params, lr=lr) if params else None


class RowSparseAdam(torch.optim.Optimizer):
    """torch.optim.SparseAdam's update, computed densely over the embedding's rows.

    SparseAdam coalesces each sparse gradient, which waits for the device every step. Here the
    rows named by the gradient (the batch's frames) are found and summed with index operations,
    and only those rows of the moments and the parameter change, with SparseAdam's arithmetic and
    state layout (`step`, `exp_avg`, `exp_avg_sq`), so its checkpoints load here and vice versa.
    The arithmetic that is the same for every parameter of a group runs as one `torch._foreach_*`
    call over all of them: a training step's refinement was a hundred small kernels, each launched
    from the host, where a GPU step at a few thousand points waits for the host.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, maximize=maximize))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        # As Adam's fused kernel: a `found_inf` tensor set by the caller (non-zero: a non-finite
        # gradient) makes the step change nothing, decided on the device. The step count is then a
        # device tensor (float64, so the bias corrections equal the Python ones).
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            if params:
                self._update(group, params, found_inf)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor], found_inf: torch.Tensor | None) -> None:
        beta1, beta2 = group["betas"]
        dense, touched = [], []
        for param in params:
            if not param.grad.is_sparse:
                raise RuntimeError("RowSparseAdam takes the sparse gradients of nn.Embedding(sparse=True)")
            grad = -param.grad if group["maximize"] else param.grad
            rows = grad._indices()[0]  # [nnz], possibly repeated
            dense.append(torch.zeros_like(param).index_add_(0, rows, grad._values()))  # summed as coalesce does
            rows_mask = torch.zeros(param.shape[0], 1, dtype=torch.bool, device=param.device)
            touched.append(rows_mask.index_fill_(0, rows, True))
        states = [self.state[param] for param in params]
        for param, state in zip(params, states):
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)
        if found_inf is None:
            for state in states:
                state["step"] = int(state["step"]) + 1
            step_sizes = [group["lr"] * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
                          for state in states]
        else:
            applied = found_inf.to(params[0].device) == 0
            for mask in touched:
                mask &= applied
            # A list of `applied` (not the tensor itself): foreach_add with one tensor reads it on the host.
            steps = torch._foreach_add([torch.as_tensor(state["step"], dtype=torch.float64, device=param.device)
                                        for state, param in zip(states, params)], [applied] * len(params))
            for state, step in zip(states, steps):
                state["step"] = step
            steps = torch._foreach_clamp_min(steps, 1)  # no division by zero before the first applied step
            corrected2 = torch._foreach_sqrt(_one_minus(torch._foreach_pow(beta2, steps)))
            step_sizes = torch._foreach_div(torch._foreach_mul(corrected2, group["lr"]),
                                            _one_minus(torch._foreach_pow(beta1, steps)))
        exp_avg = [state["exp_avg"] for state in states]
        exp_avg_sq = [state["exp_avg_sq"] for state in states]
        avg_update = torch._foreach_sub(dense, exp_avg)
        torch._foreach_mul_(avg_update, 1 - beta1)
        sq_update = torch._foreach_mul(dense, dense)
        torch._foreach_sub_(sq_update, exp_avg_sq)
        torch._foreach_mul_(sq_update, 1 - beta2)
        numer = torch._foreach_add(avg_update, exp_avg)
        new_sq = torch._foreach_add(sq_update, exp_avg_sq)
        denom = torch._foreach_sqrt(new_sq)
        torch._foreach_add_(denom, group["eps"])
        ratio = torch._foreach_div(numer, denom)
        torch._foreach_copy_(exp_avg, [torch.where(t, n, m) for t, n, m in zip(touched, numer, exp_avg)])
        torch._foreach_copy_(exp_avg_sq, [torch.where(t, n, m) for t, n, m in zip(touched, new_sq, exp_avg_sq)])
        changes = [torch.where(t, -size * r, 0.0) for t, size, r in zip(touched, step_sizes, ratio)]
        torch._foreach_add_(params, changes)


def _one_minus(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """1 - v for each tensor of a list, in place."""
    torch._foreach_neg_(values)
    torch._foreach_add_(values, 1)
    return values
