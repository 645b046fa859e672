"""The paper's coarse-to-fine strategy: per-epoch pruning of invisible points, growth to the epoch's
target count by jittered copies of survivors, and the shrinking point radius.

The schedule is data (`PointSchedule`, conf `model.point_cloud`); the functions over it are here,
beside the strategy that follows it. The strategy's own state is the visibility seen during the
current epoch.
"""

from __future__ import annotations

import bisect
import logging
import math

import torch

from ...config import Conf, PointSchedule
from ...errors import CheckpointError
from ...model.avatar import Avatar, AvatarOutput
from ..collapse import collapsed
from .base import PointUpdate

log = logging.getLogger(__name__)


# ---- the schedule --------------------------------------------------------------------------------

def radius_for(schedule: PointSchedule, n_points: int) -> float:
    """The point radius the schedule starts `n_points` points with: radius_factor x 0.75^log2(n / 100)."""
    return schedule.radius_factor * 0.75 ** math.log2(n_points / 100)


def initial_radius(schedule: PointSchedule) -> float:
    return radius_for(schedule, schedule.n_init_points)


def target_points(schedule: PointSchedule, epoch: int) -> int:
    """How many points epoch `epoch` trains with."""
    index = bisect.bisect_right(list(schedule.schedule_epochs), epoch) - 1
    target = schedule.n_init_points if index < 0 else schedule.schedule_points[index]
    return min(target, schedule.max_points)


def last_growth_epoch(schedule: PointSchedule) -> int:
    """The epoch at which the point count reaches its last target (0 without a schedule)."""
    return schedule.schedule_epochs[-1] if schedule.schedule_epochs else 0


def radius_factor_at(schedule: PointSchedule, epoch: int) -> float:
    """Factor applied to the radius at the start of `epoch`."""
    if epoch in schedule.schedule_epochs:
        return schedule.radius_factors[list(schedule.schedule_epochs).index(epoch)]
    if (epoch > last_growth_epoch(schedule) and schedule.late_radius_every > 0
            and epoch % schedule.late_radius_every == 0):
        return schedule.late_radius_factor
    return 1.0


def noise_size(schedule: PointSchedule, epoch: int, radius: float) -> float:
    """New points are copies of survivors plus uniform noise in [-size/2, size/2]."""
    return schedule.fine_noise if epoch > schedule.fine_noise_epoch else radius


def prune_and_grow(points: torch.Tensor, keep: torch.Tensor, target: int, noise: float,
                   generator: torch.Generator, weights: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the points where `keep` [N] is true, then grow to `target` by copying survivors with
    uniform noise in [-noise/2, noise/2]: survivors drawn uniformly, or with `weights` [N] (>= 0) in
    proportion to their weight (uniformly when no survivor has any). Returns (the new points [M, 3],
    M >= target unless nothing was pruned, and the index [M] of the old point each one copies)."""
    kept = keep.nonzero()[:, 0] if bool(keep.any()) else torch.arange(points.shape[0], device=points.device)
    missing = target - kept.shape[0]
    if missing <= 0:
        return points[kept], kept
    chances = None if weights is None else weights.detach()[kept].double().cpu()
    if chances is not None and bool(torch.isfinite(chances).all()) and float(chances.sum()) > 0:
        index = torch.multinomial(chances, missing, replacement=True, generator=generator).to(points.device)
    else:
        index = torch.randint(0, kept.shape[0], (missing,), generator=generator).to(points.device)
    jitter = (torch.rand(missing, 3, generator=generator).to(points) - 0.5) * noise
    source = torch.cat([kept, kept[index]])
    return torch.cat([points[kept], points[kept[index]] + jitter], dim=0), source


# ---- the strategy --------------------------------------------------------------------------------

class CoarseToFine:
    """Every `every` epochs (`train.prune_grow_every`) after the first: prune the points no training
    frame of the epoch showed with opacity >= `prune_thresh`, grow to the schedule's target and
    scale the radius by the schedule's factor.

    The grown points copy survivors drawn uniformly (the paper's), or with `model.point_cloud.grow_from
    = gradient` in proportion to each survivor's mean image-space position gradient |dL/d means2d| over
    the frames of the epoch that drew it: new points go where the image is still wrong, the signal by
    which 3D Gaussian Splatting clones and splits (here the schedule keeps deciding how many)."""

    def __init__(self, schedule: PointSchedule, prune_thresh: float, every: int = 1) -> None:
        self.schedule = schedule
        self.prune_thresh = prune_thresh
        self.every = every
        self.by_gradient = schedule.grow_from == "gradient"
        self.visible = torch.zeros(0, dtype=torch.bool)  # [N] seen in this epoch; sized by `initialize`
        self.observed = False  # whether any step was observed since the last edit
        self.gradient_sum = torch.zeros(0)  # [N] sum of |dL/d means2d| over the frames that drew each point
        self.drawn = torch.zeros(0)  # [N] how many frames drew each point

    @classmethod
    def from_conf(cls, conf: Conf) -> "CoarseToFine":
        return cls(conf.model.point_cloud, conf.model.prune_thresh, conf.train.prune_grow_every)

    def initialize(self, avatar: Avatar) -> None:
        avatar.set_point_radius(initial_radius(self.schedule))
        self._reset(avatar.n_points, avatar.points.device)

    def _reset(self, n_points: int, device: torch.device) -> None:
        """Start the epoch's observations afresh for `n_points` points."""
        self.visible = torch.zeros(n_points, dtype=torch.bool, device=device)
        self.observed = False
        self.gradient_sum = torch.zeros(n_points, device=device)
        self.drawn = torch.zeros(n_points, device=device)

    def observe(self, opacities: torch.Tensor) -> None:
        """Mark the points [N] rendered with opacity >= prune threshold in some frame of opacities [B, N]."""
        visible = (opacities.detach() >= self.prune_thresh).any(dim=0)
        self.visible = self.visible.to(visible.device) | visible
        self.observed = True

    def before_backward(self, avatar: Avatar, output: AvatarOutput) -> None:
        pass

    def after_backward(self, avatar: Avatar, output: AvatarOutput, finite: torch.Tensor) -> None:
        self.observe(output.gaussians.opacities)
        if not self.by_gradient:
            return
        raster = output.raster
        if raster is not None and raster.means2d.grad is not None:
            drawn = raster.visible.reshape(-1, avatar.n_points).float() * finite  # [B, N]; none of a skipped step
            norm = raster.means2d.grad.detach().reshape(-1, avatar.n_points, 2).norm(dim=-1)  # [B, N] pixels
            self.gradient_sum = self.gradient_sum.to(norm.device) + torch.nan_to_num(norm * drawn).sum(dim=0)
            self.drawn = self.drawn.to(norm.device) + drawn.sum(dim=0)

    def grow_weights(self) -> torch.Tensor | None:
        """Each point's chance to be copied [N] (None: uniform): its mean gradient over the frames that drew it."""
        if not self.by_gradient:
            return None
        return self.gradient_sum / self.drawn.clamp(min=1.0)

    def epoch_start(self, avatar: Avatar, epoch: int, generator: torch.Generator) -> PointUpdate | None:
        if epoch <= 0 or epoch % self.every != 0:
            return None
        return PointUpdate(self.prune_grow_shrink(avatar, epoch, generator),
                           count_final=epoch > last_growth_epoch(self.schedule))

    def prune_grow_shrink(self, avatar: Avatar, epoch: int, generator: torch.Generator) -> torch.Tensor | None:
        """Prune, grow and shrink the avatar's point radius as the schedule says for `epoch` (> 0).
        Returns the index [M] of the old point each new point copies, or None when the point set is
        unchanged."""
        points = avatar.points
        radius = float(avatar.point_radius)
        noise = noise_size(self.schedule, epoch, radius)
        target = target_points(self.schedule, epoch)
        keep = self.visible.to(points.device)
        if not self.observed or keep.numel() != points.shape[0]:  # no step seen since the last edit, or the
            # points were replaced from outside since: nothing to prune by
            log.warning("epoch %d: no visibility recorded for the %d points; keeping them all", epoch, points.shape[0])
            keep = torch.ones(points.shape[0], dtype=torch.bool, device=points.device)
        elif not bool(keep.any()):  # pruning would remove every point; keeping them all would train a ghost
            raise collapsed(epoch, f"the avatar has become transparent (no point was rendered with opacity >= "
                                   f"model.prune_thresh ({self.prune_thresh:g}) in any training frame since epoch "
                                   f"{max(0, epoch - self.every)}) and pruning would remove every point")
        weights = self.grow_weights() if keep.numel() == self.drawn.numel() else None
        new, source = prune_and_grow(points.detach(), keep, target, noise, generator, weights)
        new_radius = radius * radius_factor_at(self.schedule, epoch)
        avatar.set_point_radius(new_radius)
        changed = new.shape[0] != points.shape[0] or not bool(keep.all())
        if changed:
            avatar.set_points(new, source)
        self._reset(new.shape[0], points.device)
        log.info("epoch %d: %d points (%d pruned), radius %.5f -> %.5f", epoch, new.shape[0],
                 int((~keep).sum()), radius, new_radius)
        return source if changed else None

    def epoch_stats(self) -> dict[str, float]:
        return {"visible_fraction": float(self.visible.float().mean())}

    def state_dict(self) -> dict:
        return {"visible": self.visible.cpu(), "observed": self.observed, "gradient_sum": self.gradient_sum.cpu(),
                "drawn": self.drawn.cpu()}

    def load_state_dict(self, state: dict, avatar: Avatar) -> None:
        visible = state.get("visible") if isinstance(state, dict) else None
        if not isinstance(visible, torch.Tensor) or visible.shape != (avatar.n_points,):
            raise CheckpointError(f"the point visibility does not match its {avatar.n_points} points")
        self.visible = visible.to(avatar.points.device)
        self.observed = bool(state.get("observed", True))  # checkpoints without it were saved after training steps
        # Checkpoints written before the gradient statistics existed start them at zero.
        for name in ("gradient_sum", "drawn"):
            value = state.get(name)
            if not isinstance(value, torch.Tensor) or value.shape != (avatar.n_points,):
                value = torch.zeros(avatar.n_points)
            setattr(self, name, value.to(avatar.points.device, torch.float32))
