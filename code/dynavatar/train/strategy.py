"""The coarse-to-fine strategy: per-epoch pruning of invisible points, growth to the epoch's target
count by jittered copies of survivors, and the shrinking point radius.

The schedule is data (`PointSchedule`, conf `model.point_cloud`). The strategy is owned by the
trainer, beside the avatar (as gsplat's densification strategies are): it observes each render's
opacities and, at each epoch start, edits the avatar's points and point radius. Its own state is
the visibility seen during the current epoch.
"""

from __future__ import annotations

import logging

import torch

from ..config import PointSchedule
from ..model.avatar import Avatar

log = logging.getLogger(__name__)


def prune_and_grow(points: torch.Tensor, keep: torch.Tensor, target: int, noise: float,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the points where `keep` [N] is true, then grow to `target` by copying random survivors
    with uniform noise in [-noise/2, noise/2]. Returns (the new points [M, 3], M >= target unless
    nothing was pruned, and the index [M] of the old point each one copies)."""
    kept = keep.nonzero()[:, 0] if bool(keep.any()) else torch.arange(points.shape[0], device=points.device)
    missing = target - kept.shape[0]
    if missing <= 0:
        return points[kept], kept
    index = torch.randint(0, kept.shape[0], (missing,), generator=generator).to(points.device)
    jitter = (torch.rand(missing, 3, generator=generator).to(points) - 0.5) * noise
    source = torch.cat([kept, kept[index]])
    return torch.cat([points[kept], points[kept[index]] + jitter], dim=0), source


class CoarseToFine:
    """The schedule's state during training: which points were visible in this epoch."""

    def __init__(self, schedule: PointSchedule, prune_thresh: float, n_points: int, device: torch.device) -> None:
        self.schedule = schedule
        self.prune_thresh = prune_thresh
        self.visible = torch.zeros(n_points, dtype=torch.bool, device=device)

    def observe(self, opacities: torch.Tensor) -> None:
        """Mark the points [N] rendered with opacity >= prune threshold in some frame of opacities [B, N]."""
        visible = (opacities.detach() >= self.prune_thresh).any(dim=0)
        self.visible = self.visible.to(visible.device) | visible

    def start_epoch(self, avatar: Avatar, epoch: int, generator: torch.Generator) -> torch.Tensor | None:
        """At the start of `epoch` (> 0): prune, grow and shrink the avatar's point radius. Returns the
        index [M] of the old point each new point copies, or None when the point set is unchanged."""
        if epoch <= 0:
            return None
        points = avatar.points
        radius = float(avatar.point_radius)
        noise = self.schedule.noise_size(epoch, radius)
        target = self.schedule.target_points(epoch)
        keep = self.visible.to(points.device)
        if keep.numel() != points.shape[0] or not bool(keep.any()):
            log.warning("epoch %d: no visibility recorded for the %d points; keeping them all", epoch, points.shape[0])
            keep = torch.ones(points.shape[0], dtype=torch.bool, device=points.device)
        new, source = prune_and_grow(points.detach(), keep, target, noise, generator)
        new_radius = radius * self.schedule.radius_factor_at(epoch)
        avatar.set_point_radius(new_radius)
        changed = new.shape[0] != points.shape[0] or not bool(keep.all())
        if changed:
            avatar.set_points(new, source)
        self.visible = torch.zeros(new.shape[0], dtype=torch.bool, device=points.device)
        log.info("epoch %d: %d points (%d pruned), radius %.5f -> %.5f", epoch, new.shape[0],
                 int((~keep).sum()), radius, new_radius)
        return source if changed else None

    def state_dict(self) -> dict:
        return {"visible": self.visible.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.visible = state["visible"].to(self.visible.device)
