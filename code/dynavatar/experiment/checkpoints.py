"""The experiment folder layout users know from the paper, and atomic checkpoint files.

<exps_folder>/<subject>/<methodname>/<train sub_dirs joined by +>/
    train/runconf.conf
    train/checkpoints/{ModelParameters, OptimizerParameters, SchedulerParameters,
                       OptimizerInputs, InputParameters, TestInputParameters}/{latest, N}.pth
    train/tensorboard/
    eval/<test sub_dir>/epoch_<N>/
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

log = logging.getLogger(__name__)

MODEL = "ModelParameters"
OPTIMIZER = "OptimizerParameters"
SCHEDULER = "SchedulerParameters"
OPTIMIZER_INPUTS = "OptimizerInputs"
INPUTS = "InputParameters"
TEST_INPUTS = "TestInputParameters"
PARTS = (MODEL, OPTIMIZER, SCHEDULER, OPTIMIZER_INPUTS, INPUTS)
LATEST = "latest"


def checkpoints_dir_of(load_path: str | Path) -> Path:
    """Accept an experiment's train folder (as the paper's --load_path), its checkpoints folder, or its split folder."""
    path = Path(load_path)
    for candidate in (path / "checkpoints", path, path / "train" / "checkpoints"):
        if (candidate / MODEL).is_dir():
            return candidate
    raise CheckpointError(f"no checkpoints found under {path}: expected {path / 'checkpoints' / MODEL} "
                          f"(pass the experiment's train folder to --load_path)")


def available_epochs(checkpoints: Path) -> list[int]:
    folder = checkpoints / MODEL
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"(\d+)\.pth", p.name)))


def atomic_save(obj: Any, path: Path) -> None:
    """Write via a temporary file and rename, so a kill never leaves a broken checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(checkpoints: Path, epoch: int, parts: dict[str, dict], numbered: bool) -> None:
    """Write each part as `latest.pth` and, when `numbered`, as `<epoch>.pth`.

    The model part goes last: a kill in between leaves the previous model `latest`, and resuming
    checks that every part holds the same epoch (`check_same_epoch`).
    """
    for part, state in sorted(parts.items(), key=lambda item: item[0] == MODEL):
        payload = {"epoch": epoch, **state}
        atomic_save(payload, checkpoints / part / f"{LATEST}.pth")
        if numbered:
            atomic_save(payload, checkpoints / part / f"{epoch}.pth")


def load_part(checkpoints: Path, part: str, tag: str | int, map_location: Any = "cpu") -> dict:
    """Read one checkpoint part; a missing file is one clear error listing the epochs that exist."""
    path = checkpoints / part / f"{tag}.pth"
    if not path.is_file():
        epochs = available_epochs(checkpoints)
        have = ", ".join(str(e) for e in epochs) or "none"
        latest = " and latest" if (checkpoints / part / f"{LATEST}.pth").is_file() else ""
        raise CheckpointError(f"checkpoint {path} not found; epochs available: {have}{latest} "
                              f"(choose one with --checkpoint)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                              f"it may be truncated or not a DynAvatar checkpoint") from None
    if not isinstance(payload, dict) or "epoch" not in payload:
        raise CheckpointError(f"{path} is not a DynAvatar checkpoint (no 'epoch' entry)")
    return payload


def check_same_epoch(parts: dict[str, dict], checkpoints: Path, tag: str | int) -> None:
    """Parts of one checkpoint must come from one epoch (an interrupted save can mix them)."""
    epochs = {part: int(state["epoch"]) for part, state in parts.items()}
    if len(set(epochs.values())) > 1:
        raise CheckpointError(f"the '{tag}' checkpoint parts in {checkpoints} come from different epochs {epochs} "
                              f"(an interrupted save?); resume from a numbered one with --checkpoint N "
                              f"(available: {available_epochs(checkpoints)})")


def load_model_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """load_state_dict with one clear error when names or shapes do not fit the model of the conf."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        details = "; ".join(filter(None, [
            f"missing {missing[:5]}" if missing else "",
            f"unexpected {unexpected[:5]}" if unexpected else "",
            f"wrong sizes {mismatched[:5]}" if mismatched else "",
        ]))
        raise CheckpointError(f"{source} does not fit the model described by the conf ({details}); "
                              f"use the runconf.conf the checkpoint was trained with")
    module.load_state_dict(state)
