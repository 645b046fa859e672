"""The coarse-to-fine point schedule: per-epoch pruning of invisible points, growth to the epoch's
target count by jittered copies of survivors, and the shrinking point radius.

The schedule is data (conf `model.point_cloud`); `CoarseToFine` holds its state (radius and the
visibility seen during the current epoch) so the trainer only calls `observe` after each render
and `start_epoch` at each epoch start.
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PointSchedule:
    n_init_points: int = 400
    max_points: int = 100000
    init_radius: float = 0.5  # radius of the initial sphere of points
    radius_factor: float = 0.15  # point radius = radius_factor * 0.75 ** log2(n / 100) at the start
    schedule_epochs: Sequence[int] = (5, 10, 15, 20, 25, 30, 40, 50, 60)
    schedule_points: Sequence[int] = (800, 1600, 3200, 6400, 10000, 20000, 40000, 80000, 100000)
    radius_factors: Sequence[float] = (0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.9)
    late_radius_every: int = 5
    late_radius_factor: float = 0.75
    fine_noise_epoch: int = 100
    fine_noise: float = 0.004

    def __post_init__(self) -> None:
        lengths = {len(self.schedule_epochs), len(self.schedule_points), len(self.radius_factors)}
        if len(lengths) != 1:
            raise ConfigError("model.point_cloud: schedule_epochs, schedule_points and radius_factors must have "
                              f"the same length (got {len(self.schedule_epochs)}, {len(self.schedule_points)}, "
                              f"{len(self.radius_factors)})")
        if list(self.schedule_epochs) != sorted(self.schedule_epochs):
            raise ConfigError("model.point_cloud.schedule_epochs must be increasing")

    @classmethod
    def from_conf(cls, conf: Any) -> "PointSchedule":
        """From the `model.point_cloud` conf section."""
        keys = cls.__dataclass_fields__.keys()
        return cls(**{k: conf[k] for k in keys if k in conf})

    def initial_radius(self) -> float:
        return self.radius_factor * 0.75 ** math.log2(self.n_init_points / 100)

    def target_points(self, epoch: int) -> int:
        """How many points epoch `epoch` trains with."""
        index = bisect.bisect_right(list(self.schedule_epochs), epoch) - 1
        target = self.n_init_points if index < 0 else self.schedule_points[index]
        return min(target, self.max_points)

    def radius_factor_at(self, epoch: int) -> float:
        """Factor applied to the radius at the start of `epoch`."""
        if epoch in self.schedule_epochs:
            return self.radius_factors[list(self.schedule_epochs).index(epoch)]
        last = self.schedule_epochs[-1] if self.schedule_epochs else 0
        if epoch > last and self.late_radius_every > 0 and epoch % self.late_radius_every == 0:
            return self.late_radius_factor
        return 1.0

    def noise_size(self, epoch: int, radius: float) -> float:
        """New points are copies of survivors plus uniform noise in [-size/2, size/2]."""
        return self.fine_noise if epoch > self.fine_noise_epoch else radius


def initial_points(n: int, radius: float, generator: torch.Generator) -> torch.Tensor:
    """n points [n, 3] on a sphere: a uniform cube sample pushed onto the sphere."""
    cube = torch.rand(n, 3, generator=generator) * 2.0 - 1.0
    return torch.nn.functional.normalize(cube, dim=1) * radius


def prune_and_grow(points: torch.Tensor, keep: torch.Tensor, target: int, noise: float,
                   generator: torch.Generator) -> torch.Tensor:
    """Keep the points where `keep` [N] is true, then grow to `target` by copying random survivors
    with uniform noise in [-noise/2, noise/2]. Returns the new points [target or more, 3]."""
    survivors = points[keep] if bool(keep.any()) else points
    missing = target - survivors.shape[0]
    if missing <= 0:
        return survivors
    index = torch.randint(0, survivors.shape[0], (missing,), generator=generator).to(points.device)
    jitter = (torch.rand(missing, 3, generator=generator).to(points) - 0.5) * noise
    return torch.cat([survivors, survivors[index] + jitter], dim=0)


@dataclass
class CoarseToFine:
    """State of the schedule during training: current radius and the visibility of this epoch."""

    schedule: PointSchedule
    radius: float
    visible: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    @classmethod
    def start(cls, schedule: PointSchedule, n_points: int, device: torch.device) -> "CoarseToFine":
        return cls(schedule, schedule.initial_radius(), torch.zeros(n_points, dtype=torch.bool, device=device))

    def observe(self, visible: torch.Tensor) -> None:
        """Mark points [N] rendered with opacity >= prune threshold in some frame."""
        self.visible = self.visible.to(visible.device) | visible.detach()

    def start_epoch(self, epoch: int, points: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """At the start of `epoch` (> 0): prune, grow and shrink the radius. Returns the new points,
        or None when the point set is unchanged (the optimizer then need not be rebuilt)."""
        if epoch <= 0:
            return None
        noise = self.schedule.noise_size(epoch, self.radius)
        target = self.schedule.target_points(epoch)
        keep = self.visible.to(points.device)
        if keep.numel() != points.shape[0] or not bool(keep.any()):
            log.warning("epoch %d: no visibility recorded for the %d points; keeping them all", epoch, points.shape[0])
            keep = torch.ones(points.shape[0], dtype=torch.bool, device=points.device)
        new = prune_and_grow(points.detach(), keep, target, noise, generator)
        old_radius = self.radius
        self.radius *= self.schedule.radius_factor_at(epoch)
        self.visible = torch.zeros(new.shape[0], dtype=torch.bool, device=points.device)
        changed = new.shape[0] != points.shape[0] or not bool(keep.all())
        log.info("epoch %d: %d points (%d pruned), radius %.5f -> %.5f", epoch, new.shape[0],
                 int((~keep).sum()), old_radius, self.radius)
        return new if changed else None

    def state_dict(self) -> dict:
        return {"radius": self.radius, "visible": self.visible.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.radius = float(state["radius"])
        self.visible = state["visible"].to(self.visible.device)
