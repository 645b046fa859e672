"""Building FLAME and the avatar from a configuration or a checkpoint (shared by training,
evaluation and export)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from ..config import Conf
from ..errors import CheckpointError
from ..experiment import ExperimentPaths
from ..experiment import checkpoints as ckpt
from ..flame import FLAME, synthetic_flame_files
from ..runtime import resolve_device
from .avatar import Avatar

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"


def synthetic_flame_folder(conf: Conf) -> Path:
    """Where the synthetic FLAME-format model is written: beside the datasets folder."""
    return Path(conf.dataset.data_folder).parent / "FLAME_synthetic"


def flame_paths(conf: Conf) -> tuple[Path, Path | None]:
    """(model file, landmark file or None) named by `model.flame_model_path` / `model.flame_landmark_path`."""
    model_path = conf.model.flame_model_path
    if model_path == SYNTHETIC:
        return synthetic_flame_files(synthetic_flame_folder(conf))
    landmarks = Path(conf.model.flame_landmark_path)
    if not landmarks.is_file():
        log.info("no FLAME landmark embedding at %s: landmarks are not drawn", landmarks)
        return Path(model_path), None
    return Path(model_path), landmarks


def flame_from_conf(conf: Conf, shape_params: torch.Tensor | None) -> FLAME:
    model_path, landmark_path = flame_paths(conf)
    return FLAME(model_path, landmark_path, shape_params=shape_params, n_exp=conf.model.deformer_network.num_exp)


def avatar_from_conf(conf: Conf, shape_params: torch.Tensor, canonical_expression: torch.Tensor,
                     img_res: Sequence[int]) -> Avatar:
    """A freshly initialised avatar for the subject with these FLAME shape parameters [100]."""
    flame = flame_from_conf(conf, shape_params)
    return Avatar(conf.model, flame, shape_params, canonical_expression, conf.dataset.canonical_jaw, img_res,
                  use_background=conf.dataset.use_background, seed=conf.train.seed,
                  nearest_chunk=conf.loss.flame_distance_chunk)


def restore_avatar(avatar: Avatar, model_part: dict, source: Path) -> bool:
    """Load a ModelParameters payload into an avatar: point count, networks, buffers, point radius.
    Returns whether the checkpoint came from an earlier layout that had to be upgraded (its
    optimizer state then no longer fits).

    Checkpoints written before the point radius became a model buffer kept it only in their
    'strategy' entry; it is taken from there.
    """
    state = model_part.get("model_state_dict")
    points = state.get("points") if isinstance(state, dict) else None
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[1] != 3:
        raise CheckpointError(f"{source} is not a DynAvatar model checkpoint: expected 'model_state_dict' with "
                              f"'points' of shape [N, 3] (checkpoints of the paper's code cannot be loaded)")
    nonfinite = nonfinite_tensors(state)
    if nonfinite:
        raise CheckpointError(f"{source} holds non-finite values (NaN or inf) in {nonfinite[:5]}: the run that wrote "
                              f"it diverged; use an earlier checkpoint (--checkpoint N)")
    original = state
    state = _upgrade_colour_head(state, source)
    upgraded = state is not original
    if "point_radius" not in state:
        radius = model_part.get("strategy", {}).get("radius")
        if radius is None:
            raise CheckpointError(f"{source} holds no point radius: it is not a DynAvatar model checkpoint")
        state = {**state, "point_radius": torch.tensor(float(radius), dtype=torch.float64)}
    avatar.set_points(points)
    ckpt.load_model_state(avatar, state, source)
    return upgraded


def nonfinite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold a NaN or an infinity."""
    return [name for name, value in state.items() if isinstance(value, torch.Tensor)
            and value.is_floating_point() and not bool(torch.isfinite(value).all())]


OLD_COLOUR_OUT, NEW_COLOUR_MID, NEW_COLOUR_OUT = "color_head.2", "color_head.2", "color_head.3"


def _upgrade_colour_head(state: dict, source: Path) -> dict:
    """Checkpoints written before the colour head gained the reference's middle Linear(256, 256) hold
    Linear-softplus-Linear(256, 3): their last layer moves one place on, and the new middle layer is
    the identity, so the upgraded model computes exactly the colours it computed before."""
    prefix = "canonical_net."
    if f"{prefix}{NEW_COLOUR_OUT}.weight" in state or f"{prefix}{OLD_COLOUR_OUT}.weight" not in state:
        return state
    out_weight = state[f"{prefix}{OLD_COLOUR_OUT}.weight"]
    if out_weight.shape[0] != 3:
        return state
    width = out_weight.shape[1]
    upgraded = dict(state)
    upgraded[f"{prefix}{NEW_COLOUR_OUT}.weight"] = out_weight
    upgraded[f"{prefix}{NEW_COLOUR_OUT}.bias"] = state[f"{prefix}{OLD_COLOUR_OUT}.bias"]
    upgraded[f"{prefix}{NEW_COLOUR_MID}.weight"] = torch.eye(width, dtype=out_weight.dtype)
    upgraded[f"{prefix}{NEW_COLOUR_MID}.bias"] = torch.zeros(width, dtype=out_weight.dtype)
    log.info("%s: colour head of an earlier version; its middle layer is set to the identity", source)
    return upgraded


def experiment_checkpoints(conf: Conf, load_path: str | Path | None = None) -> Path:
    """The checkpoints folder to load from: that of `load_path` (an experiment's train folder, its
    checkpoints folder or its split folder, as `--load_path` takes) or else the conf's experiment's."""
    return ckpt.checkpoints_dir_of(load_path or ExperimentPaths.from_conf(conf).train_dir)


def load_avatar(conf: Conf, checkpoints: Path, tag: str | int = ckpt.LATEST, img_res: Sequence[int] | None = None,
                device: torch.device | None = None) -> tuple[Avatar, int]:
    """The avatar of a checkpoint (points, networks, radius, canonical frame, FLAME shape) in eval
    mode, and its epoch. `img_res` defaults to the test split's, `device` to the conf's `train.device`.
    A checkpoint that does not fit the conf's model is one CheckpointError naming the file."""
    parts, tag = ckpt.load_checkpoint(checkpoints, [ckpt.MODEL], tag)
    model = parts[ckpt.MODEL]
    state = model.get("model_state_dict", {})
    source = checkpoints / ckpt.MODEL / f"{tag}.pth"
    for key in ("points", "shape_params", "canonical_expression"):
        if key not in state:
            raise CheckpointError(f"{source} lacks '{key}': it is not a DynAvatar model checkpoint")
    img_res = conf.dataset.test.img_res if img_res is None else img_res
    device = resolve_device(conf.train.device) if device is None else device
    avatar = avatar_from_conf(conf, state["shape_params"], state["canonical_expression"], img_res)
    restore_avatar(avatar, model, source)
    return avatar.to(device).eval(), int(model["epoch"])
