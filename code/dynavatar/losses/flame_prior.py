"""The FLAME priors: the deformer's skinning weights, pose correctives and expression blendshapes
against FLAME's at each point's nearest canonical FLAME vertex (the paper's weights).

`FlamePrior` is a function of tensors only, so that a training step replayed from a CUDA graph
computes the three terms inside its recording (model/avatar.py, `prior_terms`): their forward and
backward passes then cost the host nothing.
"""

from __future__ import annotations

import torch

from ..flame import FLAME
from ..model.networks import DeformerOutput

# Inner weights of the FLAME priors (the paper's): skinning x0.1, correctives and blendshapes x10
# on 10x-scaled values, blendshapes additionally divided by 50 x the expression variance.
LBS_PRIOR_SCALE = 0.1
DIRS_PRIOR_SCALE = 10.0
DIRS_VALUE_SCALE = 10.0
VARIANCE_DIVISOR = 50.0
MIN_VARIANCE = 1e-6  # a component constant over the training frames would divide by zero


class FlamePrior:
    """`prior(deformer, nearest) -> (lbs_loss, posedirs_loss, shapedirs_loss)`, unweighted 0-dim tensors,
    for deformer outputs [N, ...] and each point's nearest canonical FLAME vertex `nearest` [N].

    `var_expression` [E] (clamped here) divides the blendshapes' error per component; None leaves it
    undivided. `reads()` names the tensors it reads where they lie, for a recording's key."""

    names = ("lbs_loss", "posedirs_loss", "shapedirs_loss")

    def __init__(self, flame: FLAME, var_expression: torch.Tensor | None) -> None:
        self.flame = flame
        self.var_expression = None if var_expression is None else var_expression.clamp_min(MIN_VARIANCE)

    def reads(self) -> tuple:
        tensors = (self.flame.lbs_weights, self.flame.posedirs, self.flame.shapedirs, self.var_expression)
        return tuple(None if t is None else (t.data_ptr(), t.device) for t in tensors)

    def __call__(self, deformer: DeformerOutput, nearest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        flame = self.flame
        weights_gt = flame.lbs_weights[nearest]  # [N, J]
        if deformer.lbs_weights.shape[1] == weights_gt.shape[1] + 1:  # ghost bone: target weight 0
            weights_gt = torch.cat([torch.zeros_like(weights_gt[:, :1]), weights_gt], dim=1)
        n = nearest.shape[0]
        posedirs_gt = flame.posedirs[nearest]  # [N, 36, 3]
        num_exp = deformer.shapedirs.shape[2]
        shapedirs_gt = flame.shapedirs[nearest][:, :, :num_exp]  # [N, 3, E]
        shapedirs_err = (DIRS_VALUE_SCALE * (deformer.shapedirs - shapedirs_gt)) ** 2
        if self.var_expression is not None:
            shapedirs_err = shapedirs_err / (self.var_expression[:num_exp] * VARIANCE_DIVISOR)
        return (((deformer.lbs_weights - weights_gt) ** 2).mean(),
                ((DIRS_VALUE_SCALE * (deformer.posedirs - posedirs_gt)) ** 2).reshape(n, -1).mean(),
                shapedirs_err.mean())
