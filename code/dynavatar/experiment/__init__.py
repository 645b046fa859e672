"""An experiment on disk: its folder layout (`paths`) and its checkpoint files (`checkpoints`)."""

from .paths import ExperimentPaths

__all__ = ["ExperimentPaths"]
