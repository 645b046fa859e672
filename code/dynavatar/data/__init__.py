"""Data: the IMavatar-format reader and the dataset checker."""

from .checker import CheckReport, check_conf, check_path, check_sub_dir, run_check
from .flame_params import FlameParams, read_flame_params
from .problems import Problem
from .reader import FaceDataset, dataset_from_conf

__all__ = [
    "CheckReport", "check_conf", "check_path", "check_sub_dir", "run_check", "FlameParams", "read_flame_params",
    "Problem", "FaceDataset", "dataset_from_conf",
]
