"""The avatar on its own training frames, scored as the test split is: the other side of the gap
between training and test quality (what a model fails to generalise, not what it fails to fit).

A few evenly spaced training frames are rendered at the test split's resolution and scored with the
test split's metrics (`report.render_and_score`: the erode-dilated rendering against the ground
truth), each with the inputs training used for it: the checkpoint's refined ones when training
refines them, else the tracked ones. Nothing is fitted, and LPIPS is left out (its cost). The
images go to eval/training_frames/<train sub_dir>/epoch_<N>/ as the test split's do.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..config import Conf
from ..data.reader import dataset_from_conf
from ..experiment import checkpoints as ckpt
from ..metrics import Unavailable
from ..model.avatar import Avatar
from ..model.frame_inputs import FrameInputs
from . import report

log = logging.getLogger(__name__)

FOLDER = "training_frames"  # under the experiment's eval/


def spread_indices(n_frames: int, count: int) -> torch.Tensor:
    """`count` evenly spaced indices of n_frames frames, first and last included (all of them when
    count >= n_frames) [min(count, n_frames)]."""
    if count >= n_frames:
        return torch.arange(n_frames)
    return torch.linspace(0, n_frames - 1, count).round().long().unique()


def training_inputs(conf: Conf, checkpoints: Path, tag: str | int, expressions: torch.Tensor,
                    flame_poses: torch.Tensor, world_mats: torch.Tensor, device: torch.device) -> FrameInputs | None:
    """The per-frame inputs of checkpoint `tag` as training applies them, or None when training
    does not refine them (the tracked values are then what it used)."""
    train = conf.train
    inputs = FrameInputs(expressions, flame_poses, world_mats, train.optimize_expression, train.optimize_camera,
                         train.refine_camera_translation)
    if not inputs.enabled:
        return None
    parts, tag = ckpt.load_checkpoint(checkpoints, [ckpt.INPUTS], tag)
    ckpt.load_model_state(inputs, parts[ckpt.INPUTS]["inputs_state_dict"], checkpoints / ckpt.INPUTS / f"{tag}.pth")
    return inputs.to(device)


def score_training_frames(conf: Conf, avatar: Avatar, checkpoints: Path, tag: str | int, count: int,
                          folders: dict[str, Path], batch_size: int, device: torch.device) -> dict[str, Any]:
    """The metric means ("all" of metrics.json, LPIPS unavailable) of `count` evenly spaced training
    frames, and how many were scored ("n_frames"); their images go to folders[<train sub_dir>]."""
    data = dataset_from_conf(conf, "train", img_res=list(conf.dataset.test.img_res), load_images=False,
                             use_mean_expression=False, use_var_expression=False)
    inputs = training_inputs(conf, checkpoints, tag, data.expressions, data.flame_poses, data.world_mats, device)
    no_lpips = Unavailable("not computed for training frames")
    rows = report.render_and_score(avatar, data, inputs, folders, no_lpips, batch_size, device,
                                   order=spread_indices(len(data), count))
    means = report.metric_means(rows, no_lpips)["all"]
    log.info("training frames: PSNR %.2f, SSIM %.4f, L1 %.4f over %d frames", means["psnr"], means["ssim"],
             means["l1"], len(rows))
    return {"n_frames": len(rows), **means}
