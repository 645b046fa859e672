"""The learning rate of a training step (`train.learning_rate`, `sched_milestones`, `sched_factor`,
`warmup_epochs`)."""

from __future__ import annotations

from ..config import TrainConf


def warmup_factor(warmup_epochs: int, epoch: int, step: int, n_steps: int) -> float:
    """The warm-up's factor on the learning rate at step `step` (from 0) of the `n_steps` of `epoch`:
    linear in the steps done, from 1 / (warmup_epochs x n_steps) at the first step to 1 at the last
    step of epoch warmup_epochs - 1; 1 after that and without a warm-up."""
    if epoch >= warmup_epochs:
        return 1.0
    return min(1.0, (epoch + (step + 1) / n_steps) / warmup_epochs)


def learning_rate_at(train: TrainConf, epoch: int, step: int = 0, n_steps: int = 1) -> float:
    """MultiStepLR in closed form (`sched_milestones`, `sched_factor`) times the warm-up's factor, so
    that the rate survives the optimizer's rebuilds after prune/grow and a resume (it depends on the
    epoch and the step only). Without `step` and `n_steps`: the rate of the epoch's last step."""
    rate = train.learning_rate * train.sched_factor ** sum(1 for m in train.sched_milestones if epoch >= m)
    return rate * warmup_factor(train.warmup_epochs, epoch, step, n_steps)
