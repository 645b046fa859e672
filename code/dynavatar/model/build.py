"""Building FLAME and the avatar from a configuration (shared by training, evaluation and export)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from ..flame import FLAME, synthetic_flame_files
from .avatar import Avatar

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"


def synthetic_flame_folder(conf: Any) -> Path:
    """Where the synthetic FLAME-format model is written: beside the datasets folder."""
    return Path(conf.get("dataset.data_folder")).parent / "FLAME_synthetic"


def flame_paths(conf: Any) -> tuple[Path, Path | None]:
    """(model file, landmark file or None) named by `model.flame_model_path` / `model.flame_landmark_path`."""
    model_path = str(conf.get("model.flame_model_path"))
    if model_path == SYNTHETIC:
        return synthetic_flame_files(synthetic_flame_folder(conf))
    landmarks = Path(conf.get("model.flame_landmark_path"))
    if not landmarks.is_file():
        log.info("no FLAME landmark embedding at %s: landmarks are not drawn", landmarks)
        return Path(model_path), None
    return Path(model_path), landmarks


def flame_from_conf(conf: Any, shape_params: torch.Tensor | None) -> FLAME:
    model_path, landmark_path = flame_paths(conf)
    return FLAME(model_path, landmark_path, shape_params=shape_params,
                 n_exp=int(conf.get("model.deformer_network.num_exp")))


def avatar_from_conf(conf: Any, shape_params: torch.Tensor, canonical_expression: torch.Tensor,
                     img_res: Sequence[int]) -> Avatar:
    """A freshly initialised avatar for the subject with these FLAME shape parameters [100]."""
    flame = flame_from_conf(conf, shape_params)
    return Avatar(conf.get("model"), flame, shape_params, canonical_expression,
                  float(conf.get("dataset.canonical_pose")), img_res,
                  use_background=bool(conf.get("dataset.use_background")), seed=int(conf.get("train.seed")))
