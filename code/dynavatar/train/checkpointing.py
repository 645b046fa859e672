"""A training run's experiment folder: the guard against overwriting an experiment, moving an old
one aside, the run's conf, and the checkpoint parts it saves and resumes from (their file format is
experiment/checkpoints.py's)."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import torch

from ..config import Conf, TrainConf, to_hocon
from ..errors import CheckpointError
from ..experiment import ExperimentPaths
from ..experiment import checkpoints as ckpt
from ..model.avatar import Avatar
from ..model.build import restore_avatar
from ..model.frame_inputs import FrameInputs
from ..runtime import rng_state, set_rng_state
from .optimizer_state import make_adam
from .strategy import Strategy

log = logging.getLogger(__name__)


def check_experiment_folder(paths: ExperimentPaths, resuming: bool, overwrite: bool) -> None:
    """A new run never overwrites an experiment's checkpoints unless asked to."""
    if resuming or overwrite:
        return
    if ckpt.has_checkpoint(paths.checkpoints):
        raise CheckpointError(
            f"{paths.train_dir} already holds checkpoints (epochs {ckpt.available_epochs(paths.checkpoints)}"
            f" and latest): resume with --is_continue, start again with --overwrite, or train into another "
            f"folder with train.methodname=<name>")


def move_experiment_aside(root: Path) -> None:
    """--overwrite: the whole old experiment (checkpoints, eval/, TensorBoard files) moves to a dated
    sibling folder once the new run is ready to start and before it writes anything, so that
    nothing of the two runs is ever mixed and nothing of the old one is lost."""
    if not root.exists():
        return
    name = f"{root.name}.replaced-{datetime.now():%Y%m%d-%H%M%S}"
    aside, n = root.with_name(name), 1
    while aside.exists():
        aside, n = root.with_name(f"{name}-{n}"), n + 1
    root.rename(aside)
    log.warning("--overwrite: the earlier experiment %s was moved aside, whole, to %s", root, aside)


def write_runconf(paths: ExperimentPaths, conf: Conf) -> None:
    """The conf the run trains with, defaults filled in, as `train/runconf.conf`."""
    paths.train_dir.mkdir(parents=True, exist_ok=True)
    paths.runconf.write_text(to_hocon(conf))


def is_numbered(done: int, nepoch: int, train: TrainConf) -> bool:
    """Whether the save after `done` epochs is also kept as a numbered checkpoint: every
    `train.numbered_save_every` saves, and the last epoch's."""
    return done % (train.numbered_save_every * max(1, train.save_freq)) == 0 or done == nepoch


def save_training(checkpoints: Path, epoch: int, numbered: bool, *, train: TrainConf, avatar: Avatar,
                  strategy: Strategy, optimizer: torch.optim.Optimizer, inputs: FrameInputs,
                  input_optimizer: torch.optim.Optimizer) -> None:
    """Save the run's state after `epoch` epochs as 'latest' (and as `epoch` when `numbered`)."""
    parts = {
        ckpt.MODEL: {"model_state_dict": avatar.state_dict(), "strategy": strategy.state_dict(),
                     "rng_state": rng_state()},
        ckpt.OPTIMIZER: {"optimizer_state_dict": optimizer.state_dict()},
        # The paper's layout has a scheduler part; the rate itself is recomputed in closed form
        # from the epoch on resume (`train.schedule.learning_rate_at`), so this part is informative only.
        ckpt.SCHEDULER: {"scheduler_state_dict": {"milestones": list(train.sched_milestones),
                                                  "gamma": train.sched_factor, "base_lr": train.learning_rate,
                                                  "last_epoch": epoch - 1}},
    }
    if inputs.enabled:
        parts[ckpt.OPTIMIZER_INPUTS] = {"optimizer_cam_state_dict": input_optimizer.state_dict()}
        parts[ckpt.INPUTS] = {"inputs_state_dict": inputs.state_dict()}
    ckpt.save_checkpoint(checkpoints, epoch, parts, numbered)


def resume_training(paths: ExperimentPaths, load_path: str | None, tag: str, *, train: TrainConf, avatar: Avatar,
                    strategy: Strategy, inputs: FrameInputs,
                    input_optimizer: torch.optim.Optimizer) -> tuple[torch.optim.Adam, int] | None:
    """Load checkpoint `tag` of `load_path` (else of this experiment) into the run: the avatar, the
    strategy's state, the per-frame inputs and their optimizer, every global RNG. Returns (the
    avatar's optimizer, the epoch to go on from), or None when the experiment has no checkpoint yet."""
    if not load_path and not ckpt.has_checkpoint(paths.checkpoints):
        log.warning("--is_continue: no checkpoints in %s yet; starting from scratch", paths.checkpoints)
        return None
    source = ckpt.checkpoints_dir_of(load_path or paths.train_dir)
    names = [ckpt.MODEL, ckpt.OPTIMIZER] + ([ckpt.INPUTS, ckpt.OPTIMIZER_INPUTS] if inputs.enabled else [])
    parts, tag = ckpt.load_checkpoint(source, names, tag)
    model = parts[ckpt.MODEL]
    model_file = source / ckpt.MODEL / f"{tag}.pth"
    upgraded = restore_avatar(avatar, model, model_file)
    try:
        strategy.load_state_dict(model.get("strategy", {}), avatar)
    except CheckpointError as exc:
        raise CheckpointError(f"{model_file}: {exc}") from None
    optimizer = make_adam(avatar, train.learning_rate)
    if upgraded:  # the network changed shape: its Adam state starts afresh (as at every prune/grow)
        log.warning("%s: model of an earlier version; its optimizer state is not reused", model_file)
    else:
        _load_optimizer(optimizer, parts[ckpt.OPTIMIZER], "optimizer_state_dict", source)
    if inputs.enabled:
        ckpt.load_model_state(inputs, parts[ckpt.INPUTS]["inputs_state_dict"], source / ckpt.INPUTS / f"{tag}.pth")
        _load_optimizer(input_optimizer, parts[ckpt.OPTIMIZER_INPUTS], "optimizer_cam_state_dict", source)
    set_rng_state(model["rng_state"])
    epoch = int(model["epoch"])
    log.info("resumed from %s (%s): epoch %d, %d points, radius %.5f", source, tag, epoch, avatar.n_points,
             float(avatar.point_radius))
    return optimizer, epoch


def _load_optimizer(optimizer: torch.optim.Optimizer, part: dict, key: str, source: Path) -> None:
    try:
        optimizer.load_state_dict(part[key])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"the optimizer state in {source} does not fit this model ({exc}); use the "
                              f"runconf.conf the checkpoint was trained with") from None
