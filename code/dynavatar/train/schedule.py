"""The training schedule of `train`: the learning rate of an epoch and the batch size for a point count."""

from __future__ import annotations

from ..config import TrainConf


def learning_rate_at(train: TrainConf, epoch: int) -> float:
    """MultiStepLR in closed form (`sched_milestones`, `sched_factor`), so that the rate survives the
    optimizer's rebuilds after prune/grow and a resume."""
    return train.learning_rate * train.sched_factor ** sum(1 for m in train.sched_milestones if epoch >= m)


def batch_size(train: TrainConf, n_points: int) -> int:
    """The paper's rule: min(max_points_training / n_points, max_batch), at least 1."""
    return max(1, min(train.max_points_training // max(1, n_points), train.max_batch))
