"""The learning rate of an epoch (`train.learning_rate`, `sched_milestones`, `sched_factor`)."""

from __future__ import annotations

from ..config import TrainConf


def learning_rate_at(train: TrainConf, epoch: int) -> float:
    """MultiStepLR in closed form (`sched_milestones`, `sched_factor`), so that the rate survives the
    optimizer's rebuilds after prune/grow and a resume."""
    return train.learning_rate * train.sched_factor ** sum(1 for m in train.sched_milestones if epoch >= m)

