"""An exponential moving average of the avatar's weights (`train.weight_average_epochs`): the avatar
that checkpoints hold, and so the one that evaluation, export and the viewer use.

Every step moves the weights by about the learning rate in the direction of one batch's gradient.
At the end of a short schedule that noise can make the avatar of one epoch render most of a dB
better or worse than the avatar of the next (docs/RECIPES.md); an average over the last few epochs
follows the trend and leaves out most of the noise. Training keeps stepping the live weights; the
average only watches them.

When the point strategy edits the points, the average follows the edit: a point's average becomes
its live value plus the lag (average - live) of the point it copies, so a grown copy keeps the
jitter it was placed with, and a value edited in place keeps its edit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def decay_for(epochs: float, steps_per_epoch: int) -> float:
    """The per-step decay whose average spans about `epochs` epochs of `steps_per_epoch` steps."""
    return 1.0 - 1.0 / max(1.0, epochs * steps_per_epoch)


@dataclass
class Lag:
    """What the average was before a point edit: per parameter, the live tensor and average - live."""
    live: dict[str, torch.Tensor]
    lag: dict[str, torch.Tensor]


class WeightAverage:
    """The running average of every parameter of a model, by name."""

    def __init__(self, model: nn.Module, average: dict[str, torch.Tensor] | None = None) -> None:
        """Starts at the live weights, or at a saved `average` (by name) where it has the parameter."""
        self.average = {}
        for name, p in model.named_parameters():
            saved = (average or {}).get(name)
            fits = saved is not None and saved.shape == p.shape
            self.average[name] = saved.to(p).clone() if fits else p.detach().clone()

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        """After an optimizer step: average <- decay * average + (1 - decay) * live."""
        live = dict(model.named_parameters())
        names = list(self.average)
        torch._foreach_lerp_([self.average[n] for n in names], [live[n].detach() for n in names], 1.0 - decay)

    @torch.no_grad()
    def lag(self, model: nn.Module) -> Lag:
        """Before the strategy edits the points: what `follow_edit` needs afterwards."""
        live = dict(model.named_parameters())
        return Lag(live, {name: self.average[name] - p.detach() for name, p in live.items()})

    @torch.no_grad()
    def follow_edit(self, model: nn.Module, before: Lag, source: torch.Tensor | None) -> None:
        """After the strategy edited the points. `source` [M]: the old point each new point copies
        (None: the point tensors were kept). A parameter that is the same tensor as before keeps its
        lag; a replaced per-point one takes the lag of the point each new point copies; any other
        starts its average at its live value."""
        for name, p in model.named_parameters():
            lag = before.lag.get(name)
            if lag is not None and p is before.live[name]:
                self.average[name] = p.detach() + lag
            elif (lag is not None and source is not None and p.dim() > 0 and p.shape[0] == source.shape[0]
                  and p.shape[1:] == lag.shape[1:]):
                self.average[name] = p.detach() + lag[source.to(lag.device)]
            else:
                self.average[name] = p.detach().clone()

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """`model.state_dict()` with every parameter replaced by its average."""
        state = model.state_dict()
        state.update({name: value.clone() for name, value in self.average.items()})
        return state
