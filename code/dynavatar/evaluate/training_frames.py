"""The avatar on its own training frames, scored as the test split is: the other side of the gap
between training and test quality (what a model fails to generalise, not what it fails to fit).

A few evenly spaced training frames are rendered at the test split's resolution and scored with the
test split's metrics (`report.render_and_score`: the erode-dilated rendering against the ground
truth), with one of two sets of inputs:
- "trained": the inputs training used for each frame, the checkpoint's refined ones when training
  refines them, else the tracked ones; nothing is fitted. What the avatar fits, per-frame
  refinement included.
- "fitted": the tracked inputs fitted by the test protocol (`fitting.fit_by_protocol`), exactly as
  the test frames are. Per-frame refinement during training can fit a training frame with inputs
  no new frame gets; scored this way, the gap to the test split holds only what fails to carry
  over to new expressions and poses.
LPIPS is left out (its cost). The images go to eval/training_frames[_fitted]/<train sub_dir>/epoch_<N>/
as the test split's do.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..config import Conf
from ..data.reader import FaceDataset, dataset_from_conf
from ..experiment import checkpoints as ckpt
from ..metrics import Unavailable
from ..model.avatar import Avatar
from ..model.frame_inputs import FrameInputs
from . import fitting, report

log = logging.getLogger(__name__)

FOLDER = "training_frames"  # under the experiment's eval/
FOLDERS = {"trained": FOLDER, "fitted": f"{FOLDER}_fitted"}  # per set of inputs


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
                          folders: dict[str, Path], batch_size: int, device: torch.device,
                          inputs_from: str = "trained") -> dict[str, Any]:
    """The metric means ("all" and "opening" of metrics.json, LPIPS unavailable) of `count` evenly
    spaced training frames, and how many were scored ("n_frames"); their images go to
    folders[<train sub_dir>].
    inputs_from: "trained" or "fitted" (the module's docstring)."""
    if inputs_from not in FOLDERS:
        raise ValueError(f"inputs_from {inputs_from!r}: one of {', '.join(FOLDERS)}")
    data = dataset_from_conf(conf, "train", img_res=list(conf.dataset.test.img_res), load_images=False,
                             use_mean_expression=False, use_var_expression=False)
    order = spread_indices(len(data), count)
    if inputs_from == "trained":
        inputs = training_inputs(conf, checkpoints, tag, data.expressions, data.flame_poses, data.world_mats, device)
    else:
        inputs = protocol_inputs(conf, avatar, data, order, device)
    no_lpips = Unavailable("not computed for training frames")
    rows = report.render_and_score(avatar, data, inputs, folders, no_lpips, batch_size, device, order=order)
    means = report.metric_means(rows, no_lpips)["all"]
    opening = report.opening_means(rows)
    log.info("training frames (%s inputs): PSNR %.2f, SSIM %.4f, L1 %.4f over %d frames%s", inputs_from,
             means["psnr"], means["ssim"], means["l1"], len(rows), report.opening_line(opening))
    return {"n_frames": len(rows), **means, **opening}


def protocol_inputs(conf: Conf, avatar: Avatar, data: FaceDataset, order: torch.Tensor, device: torch.device) -> FrameInputs | None:
    """The tracked inputs of the frames `order` fitted as the test split's are (None, the tracked
    ones as they are, when the test protocol fits nothing)."""
    train, evaluation = conf.train, conf.evaluation
    inputs = FrameInputs(data.expressions, data.flame_poses, data.world_mats, train.optimize_expression,
                         train.optimize_camera, evaluation.fit_camera_translation).to(device)
    if not inputs.enabled or evaluation.test_fit_steps == 0:
        return None
    fitting.fit_by_protocol(conf, avatar, inputs, data, order, device)
    return inputs
