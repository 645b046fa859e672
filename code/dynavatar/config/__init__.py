"""Configuration: `load_conf` reads a `.conf` (the paper's layout), validates it once and returns a
typed `Conf` of frozen per-section dataclasses. Every key, its default and its meaning are declared
once, in `schema.py`; `python -m dynavatar.config` prints them."""

from .defaults import defaults_text
from .loader import default_conf, defaults, load_conf, parse_override, to_hocon, validate
from .schema import (CanonicalNetworkConf, Conf, DatasetConf, DeformerNetworkConf, EvaluationConf, GaussianNetworkConf,
                     LossConf, ModelConf, PointSchedule, SplitConf, TrainConf)

__all__ = [
    "default_conf", "defaults", "defaults_text", "load_conf", "parse_override", "to_hocon", "validate",
    "CanonicalNetworkConf", "Conf", "DatasetConf", "DeformerNetworkConf", "EvaluationConf", "GaussianNetworkConf",
    "LossConf", "ModelConf", "PointSchedule", "SplitConf", "TrainConf",
]
