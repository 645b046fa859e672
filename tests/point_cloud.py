"""A stand-in for the avatar in strategy tests: what a point strategy edits (points and point radius)."""

from __future__ import annotations

import torch


class PointCloud:
    """What a strategy edits on an avatar: its points [N, 3] and point radius."""

    def __init__(self, points: torch.Tensor, radius: float = 0.0) -> None:
        self.points, self.point_radius = points, torch.tensor(radius, dtype=torch.float64)

    @property
    def n_points(self) -> int:
        return self.points.shape[0]

    def set_points(self, points: torch.Tensor, source: torch.Tensor | None = None) -> None:
        self.points = points

    def set_point_radius(self, radius: float) -> None:
        self.point_radius.fill_(radius)
