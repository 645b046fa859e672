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
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError("RowSparseAdam takes the sparse gradients of nn.Embedding(sparse=True)")
                grad = -param.grad if group["maximize"] else param.grad
                rows = grad._indices()[0]  # [nnz], possibly repeated
                dense = torch.zeros_like(param).index_add_(0, rows, grad._values())  # summed as coalesce does
                touched = torch.zeros(param.shape[0], 1, dtype=torch.bool, device=param.device)
                touched.index_fill_(0, rows, True)
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
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
        return loss
