"""A strategy that never edits the points: the avatar trains with the points it starts with (or is
given) at the schedule's initial radius. For measurements at a fixed point count (the benchmark) and
for training from a point set made elsewhere."""

from __future__ import annotations

import torch

from ...config import Conf, PointSchedule
from ...model.avatar import Avatar, AvatarOutput
from .base import PointUpdate
from .coarse_to_fine import initial_radius


class StaticPoints:
    """Sets the initial point radius of `model.point_cloud`, then leaves points and radius alone."""

    def __init__(self, schedule: PointSchedule) -> None:
        self.schedule = schedule

    @classmethod
    def from_conf(cls, conf: Conf) -> "StaticPoints":
        return cls(conf.model.point_cloud)

    def initialize(self, avatar: Avatar) -> None:
        avatar.set_point_radius(initial_radius(self.schedule))

    def epoch_start(self, avatar: Avatar, epoch: int, generator: torch.Generator) -> PointUpdate | None:
        return None

    def before_backward(self, avatar: Avatar, output: AvatarOutput) -> None:
        pass

    def after_backward(self, avatar: Avatar, output: AvatarOutput, finite: torch.Tensor) -> None:
        pass

    def epoch_stats(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, avatar: Avatar) -> None:
        pass  # nothing of its own: the points and the radius are the model's
