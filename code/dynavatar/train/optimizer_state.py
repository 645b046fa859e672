"""The avatar's Adam optimizer: built, rebuilt after the point strategy edits the points, and
(`train.keep_optimizer_state`) its moments carried across that rebuild.

The paper rebuilds its optimizer at every prune/grow step, so every epoch starts from a fresh Adam
state. With thousands of steps per epoch that costs little; with a few dozen (a short video, the
demo) each restart moves every weight by about the learning rate in the direction of its current
gradient sign, whatever that gradient's noise. Carried over instead, the networks' moments stay as
they are and each point's moments follow the point they belong to (a grown copy takes those of the
point it copies, as its neighbour in space and in gradient).
"""

from __future__ import annotations

import torch
from torch import nn

from .strategy import PointUpdate


def make_adam(model: nn.Module, lr: float) -> torch.optim.Adam:
    """A fresh Adam over `model`'s parameters. On CUDA the fused kernel updates every parameter in one
    launch (same update rule)."""
    params = list(model.parameters())
    return torch.optim.Adam(params, lr=lr, fused=params[0].device.type == "cuda")


def adam_after_update(old: torch.optim.Adam, model: nn.Module, lr: float, update: PointUpdate,
                      keep_moments: bool) -> torch.optim.Adam:
    """The optimizer after the strategy stepped (`update`): rebuilt, as the paper does at every
    prune/grow step even when no point changed (the fresh Adam state is part of the method; it also
    pulls a run whose opacities all fell early back out of that state). With `keep_moments`
    (`train.keep_optimizer_state`) the moments are carried over once the point count is final;
    while it grows, restarts stay."""
    fresh = make_adam(model, lr)
    if keep_moments and update.count_final:
        fresh = carry_adam_state(old, fresh, update.source)
    return fresh


def carry_adam_state(old: torch.optim.Optimizer, new: torch.optim.Optimizer,
                     source: torch.Tensor | None) -> torch.optim.Optimizer:
    """Copy `old`'s per-parameter state into `new`, which holds the same parameters in the same order
    except that per-point ones ([N, ...], replaced after prune/grow) may be new tensors of M rows.

    A parameter that is the same tensor keeps its state. A replaced one takes the rows `source` [M]
    (the old point each new point copies) of its old moments; without `source`, or when it does not
    have one row per entry of `source`, it starts fresh. Returns `new`.
    """
    old_params = [p for group in old.param_groups for p in group["params"]]
    new_params = [p for group in new.param_groups for p in group["params"]]
    if len(old_params) != len(new_params):
        raise ValueError(f"the optimizers hold {len(old_params)} and {len(new_params)} parameters: "
                         "their states cannot be matched")
    for before, after in zip(old_params, new_params):
        state = old.state.get(before)
        if not state:
            continue
        replaced_per_point = (source is not None and after.dim() > 0 and after.shape[0] == source.shape[0]
                              and after.shape[1:] == before.shape[1:])
        if after is before:
            new.state[after] = state
        elif replaced_per_point:
            index = source.to(before.device)
            new.state[after] = {key: value[index].clone() if _per_row(value, before) else value.clone()
                                for key, value in state.items()}
    return new


def _per_row(value: torch.Tensor, param: torch.Tensor) -> bool:
    """Whether an Adam state entry holds one row per row of `param` (the moments; not the step count)."""
    return isinstance(value, torch.Tensor) and value.shape == param.shape
