"""Point strategies: what edits the avatar's point set and point radius during training.

`train.strategy` names one of `STRATEGIES`; `strategy_from_conf` builds it. The protocol the trainer
calls is `Strategy` (base.py).
"""

from __future__ import annotations

from typing import Callable

from ...config import Conf
from ...errors import ConfigError
from .base import PointUpdate, Strategy
from .coarse_to_fine import CoarseToFine, prune_and_grow
from .static import StaticPoints

STRATEGIES: dict[str, Callable[[Conf], Strategy]] = {
    "coarse_to_fine": CoarseToFine.from_conf,  # the paper's
    "static": StaticPoints.from_conf,
}


def strategy_from_conf(conf: Conf) -> Strategy:
    """The strategy `train.strategy` names, or one clear error."""
    name = conf.train.strategy
    if name not in STRATEGIES:
        raise ConfigError(f"train.strategy = {name!r} is not a point strategy: use one of "
                          f"{', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name](conf)


__all__ = ["STRATEGIES", "CoarseToFine", "PointUpdate", "StaticPoints", "Strategy", "prune_and_grow",
           "strategy_from_conf"]
