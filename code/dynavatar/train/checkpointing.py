"""A training run's experiment folder: the guards against overwriting an experiment (or its later
checkpoints) and against folders it cannot write, moving an old one aside, the run's conf, and the
checkpoint parts it saves and resumes from (their file format is experiment/checkpoints.py's; the
lock that keeps a second run out, experiment/lock.py's)."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from ..config import Conf, TrainConf, to_hocon
from ..errors import CheckpointError, OutputError
from ..experiment import ExperimentPaths
from ..experiment import checkpoints as ckpt
from ..model.avatar import Avatar
from ..model.build import restore_avatar
from ..model.frame_inputs import FrameInputs
from ..runtime import rng_state, set_rng_state
from .optimizer_state import make_adam
from .strategy import Strategy
from .weight_average import WeightAverage

log = logging.getLogger(__name__)


# The model part's entry for the live weights, saved beside an averaged model state.
LIVE_PARAMETERS = "live_parameters"


@dataclass
class Resumed:
    optimizer: torch.optim.Adam
    epoch: int  # the epoch to go on from
    average: dict[str, torch.Tensor] | None  # the weights' average, by parameter name, where it was saved


def check_experiment_folder(paths: ExperimentPaths, resuming: bool, overwrite: bool, load_path: str | None = None,
                            tag: str = ckpt.LATEST) -> None:
    """A run never replaces an experiment's checkpoints unless asked to (--overwrite): a new run in a
    folder that holds some, nor a resumed one that would continue from an earlier checkpoint
    (`--checkpoint N` with later ones present) or from another experiment's (`--load_path`)."""
    checkpoints = paths.checkpoints
    if overwrite or not ckpt.has_checkpoint(checkpoints):
        return
    epochs = ckpt.available_epochs(checkpoints)
    if not resuming:
        raise CheckpointError(
            f"{paths.train_dir} already holds checkpoints (epochs {epochs} and latest): resume with --is_continue, "
            f"start again with --overwrite, or train into another folder with train.methodname=<name>")
    if load_path and ckpt.checkpoints_dir_of(load_path).resolve() != checkpoints.resolve():
        raise CheckpointError(
            f"--load_path {load_path}: this run's own experiment {paths.train_dir} holds checkpoints (epochs "
            f"{epochs} and latest), which resuming here would replace: train into another folder with "
            f"train.methodname=<name>, or pass --overwrite to move this experiment aside, whole, first")
    if tag == ckpt.LATEST:
        return
    latest = ckpt.latest_epoch(checkpoints)
    later = [e for e in epochs if e > int(tag)] + ([] if latest is None or latest <= int(tag) else [f"latest ({latest})"])
    if later:
        raise CheckpointError(
            f"--checkpoint {tag}: {paths.train_dir} holds later checkpoints ({', '.join(map(str, later))}), which "
            f"resuming from epoch {tag} here would replace: continue it in a new experiment with --load_path "
            f"{paths.train_dir} train.methodname=<name>, or pass --overwrite to move this experiment aside, whole, "
            f"and resume from its epoch {tag} in its place")


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def check_writable(paths: ExperimentPaths, test_sub_dirs: tuple[str, ...], fresh: bool) -> None:
    """Every folder the run will write into can be written, checked before any work (a read-only
    experiment otherwise fails at its first save, or at the final evaluation). `fresh`: the old
    experiment is moved aside, so only the folder it sits in matters."""
    wanted = [paths.root.parent]
    if not fresh:
        wanted += [paths.root, paths.train_dir, paths.checkpoints, *(paths.checkpoints / p for p in ckpt.PARTS),
                   paths.checkpoints / ckpt.TEST_INPUTS, paths.tensorboard, paths.eval_dir,
                   *(paths.eval_dir / s for s in test_sub_dirs)]
    for folder in dict.fromkeys(_nearest_existing(f) for f in wanted):
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OutputError(f"cannot write in {folder} ({exc.strerror or exc}): make the experiment writable "
                              f"(chmod -R u+w {paths.root}), or train into another folder with "
                              f"train.exps_folder=<folder>") from None


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


def write_runconf(paths: ExperimentPaths, conf: Conf, start_epoch: int = 0) -> None:
    """The conf the run trains with, defaults filled in, as `train/runconf.conf` (atomically). A run
    resumed at `start_epoch` with another conf keeps the earlier one as
    `runconf.until-epoch-<start_epoch>.conf`: the conf of the epochs before."""
    text = to_hocon(conf)
    tmp = paths.runconf.with_name(paths.runconf.name + ".tmp")
    try:
        paths.train_dir.mkdir(parents=True, exist_ok=True)
        if start_epoch > 0 and paths.runconf.is_file() and _settings(paths.runconf.read_text()) != _settings(text):
            kept, n = paths.train_dir / f"runconf.until-epoch-{start_epoch}.conf", 1
            while kept.exists():
                kept, n = paths.train_dir / f"runconf.until-epoch-{start_epoch}-{n}.conf", n + 1
            os.replace(paths.runconf, kept)
            log.warning("resumed with another conf than the experiment's: the earlier one is kept as %s", kept)
        tmp.write_text(text)
        os.replace(tmp, paths.runconf)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {paths.runconf} ({exc.strerror or exc}): free disk space or make "
                          f"{paths.train_dir} writable") from None


def _settings(runconf: str) -> list[str]:
    """A runconf's lines less its comments: its header names the conf file as it was given, which
    differs for one file given by another path."""
    return [line for line in runconf.splitlines() if not line.lstrip().startswith("#")]


def is_numbered(done: int, nepoch: int, train: TrainConf) -> bool:
    """Whether the save after `done` epochs is also kept as a numbered checkpoint: every
    `train.numbered_save_every` saves, and the last epoch's."""
    return done % (train.numbered_save_every * max(1, train.save_freq)) == 0 or done == nepoch


def save_training(checkpoints: Path, epoch: int, numbered: bool, *, train: TrainConf, avatar: Avatar,
                  strategy: Strategy, optimizer: torch.optim.Optimizer, inputs: FrameInputs,
                  input_optimizer: torch.optim.Optimizer, average: WeightAverage | None = None) -> None:
    """Save the run's state after `epoch` epochs as 'latest' (and as `epoch` when `numbered`). With
    `average` (`train.weight_average_epochs`) the model is the averaged avatar, which evaluation and
    export load, and the live weights that training steps are kept beside it for a resume."""
    model = {"model_state_dict": avatar.state_dict(), "strategy": strategy.state_dict(), "rng_state": rng_state()}
    if average is not None:
        model["model_state_dict"] = average.state_dict(avatar)
        model[LIVE_PARAMETERS] = {name: p.detach() for name, p in avatar.named_parameters()}
    parts = {
        ckpt.MODEL: model,
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
                    input_optimizer: torch.optim.Optimizer) -> Resumed | None:
    """Load checkpoint `tag` of `load_path` (else of this experiment) into the run: the avatar (its
    live weights, where the checkpoint holds an average beside them), the strategy's state, the
    per-frame inputs and their optimizer, every global RNG. Returns None when the experiment has no
    checkpoint yet."""
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
    average = None
    if LIVE_PARAMETERS in model:  # the model state is the average: training goes on from the live weights
        average = {name: p.detach().clone() for name, p in avatar.named_parameters()}
        _load_live_parameters(avatar, model[LIVE_PARAMETERS], model_file)
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
    return Resumed(optimizer, epoch, average)


@torch.no_grad()
def _load_live_parameters(avatar: Avatar, live: dict[str, torch.Tensor], source: Path) -> None:
    parameters = dict(avatar.named_parameters())
    for name, p in parameters.items():
        value = live.get(name)
        if value is None or value.shape != p.shape:
            got = "missing" if value is None else f"of shape {tuple(value.shape)}"
            raise CheckpointError(f"{source}: the live weights' {name} is {got}, the model's is {tuple(p.shape)}; "
                                  "the checkpoint is damaged or of another model")
        p.copy_(value)


def _load_optimizer(optimizer: torch.optim.Optimizer, part: dict, key: str, source: Path) -> None:
    try:
        optimizer.load_state_dict(part[key])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"the optimizer state in {source} does not fit this model ({exc}); use the "
                              f"runconf.conf the checkpoint was trained with") from None
