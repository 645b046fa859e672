"""What a point strategy is to the trainer: the hooks it is called at, and what an edit reports.

A strategy owns the avatar's point set and point radius during training (as gsplat's densification
strategies own the Gaussians): it sets them up on a fresh avatar, watches every training step, and
at each epoch start may prune, grow or move points and change the radius. The trainer owns the
optimizer; it rebuilds it after an edit, from what the edit reports (`PointUpdate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ...model.avatar import Avatar, AvatarOutput


@dataclass(frozen=True)
class PointUpdate:
    """What an epoch-start edit did. Returned whenever the strategy stepped (even when no point
    changed): the optimizer is then rebuilt, as the paper does at every prune/grow step."""

    # [M] long: the old point each new point copies (per-point optimizer state can follow it); None
    # when the avatar keeps the same point tensors.
    source: torch.Tensor | None
    # The point count has reached its last target: from now on Adam's moments may be carried across
    # edits (`train.keep_optimizer_state`) instead of restarting.
    count_final: bool


class Strategy(Protocol):
    """The hooks, in the order the trainer calls them.

    `initialize` once on the freshly built avatar (a resume then loads the checkpoint over it and
    calls `load_state_dict`), per epoch `epoch_start`, per step `before_backward` and
    `after_backward`, at the epoch's end `epoch_stats`, and `state_dict` with every checkpoint.
    """

    def initialize(self, avatar: Avatar) -> None:
        """Set what the strategy owns on a freshly built avatar (its point radius) and start its own state."""

    def epoch_start(self, avatar: Avatar, epoch: int, generator: torch.Generator) -> PointUpdate | None:
        """At the start of `epoch` (from 0): edit the avatar's points (`Avatar.set_points`) and radius
        (`Avatar.set_point_radius`) when the strategy's cadence says so. Random draws come from
        `generator` only (one per epoch, so a resumed run draws what the uninterrupted one did).
        Returns None when the strategy did not step: the optimizer is kept."""

    def before_backward(self, avatar: Avatar, output: AvatarOutput) -> None:
        """After a training step's forward pass, before its backward pass: the place to ask for
        gradients of non-leaf tensors of `output` (`retain_grad`)."""

    def after_backward(self, avatar: Avatar, output: AvatarOutput, finite: torch.Tensor) -> None:
        """After the backward pass and the optimizer step; the gradients of the step are still held
        by the avatar's parameters and by what `before_backward` retained. `finite` (0-dim bool, on
        the device) is False when the step was non-finite and not applied. Must not wait for the
        device (no reading of device values)."""

    def epoch_stats(self) -> dict[str, float]:
        """Values to log with the epoch's statistics (read at the epoch's end)."""

    def state_dict(self) -> dict:
        """The strategy's own state, saved with the model (tensors and plain values only)."""

    def load_state_dict(self, state: dict, avatar: Avatar) -> None:
        """Restore `state_dict()` onto a resumed avatar (points and radius already loaded); raises
        CheckpointError when the state does not belong to that avatar."""
