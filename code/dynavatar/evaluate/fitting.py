"""Test-time fitting: refine the test frames' expression and FLAME pose (camera translation too, as an
option) with the avatar frozen (the paper's protocol: 20 SparseAdam steps per batch of the
photometric loss), and keep the fitted inputs as the checkpoint part TestInputParameters/<epoch>.pth,
reused by later evaluations of the same model and test frames."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..config import Conf
from ..data.batch import FrameBatch, batches, frames_per_step
from ..data.reader import FaceDataset
from ..experiment import checkpoints as ckpt
from ..losses import AvatarLoss
from ..model.avatar import Avatar
from ..model.frame_inputs import FrameInputs
from ..progress import progress

log = logging.getLogger(__name__)


def fit_frame_inputs(avatar: Avatar, inputs: FrameInputs, batches: Iterable[FrameBatch], n_batches: int,
                     steps: int, lr: float, loss: AvatarLoss, device: torch.device) -> list[tuple[float, float]]:
    """Optimise `inputs` in place on each batch for `steps` steps of `loss.photometric` (the reference's protocol). Returns the
    loss of each batch at its first and at its last step."""
    optimizer = inputs.optimizer(lr)
    if optimizer is None:
        return []
    frozen = [p for p in avatar.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    avatar.eval()
    losses: list[tuple[float, float]] = []
    try:
        for batch in progress(batches, total=n_batches, desc="fitting test frames", dynamic_ncols=True):
            batch = batch.to(device)
            first = None
            for _ in range(steps):
                out = avatar(inputs.apply(batch))
                value = loss.total(loss.photometric(out.rgb, batch.rgb))
                first = float(value.detach()) if first is None else first
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
            losses.append((first, float(value.detach())))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return losses


def points_fingerprint(avatar: Avatar) -> float:
    """A number that changes with the trained model, to tell whether saved test inputs belong to it."""
    with torch.no_grad():
        return float(avatar.points.double().abs().sum()) + avatar.n_points


def tracked_digest(data: FaceDataset) -> str:
    """A digest of the frames' tracked expressions, poses and cameras: it tells the test frames of one
    video from another's of the same name and length (another subject, the same video tracked again)."""
    digest = hashlib.sha256()
    for values in (data.expressions, data.flame_poses, data.world_mats):
        digest.update(values.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def inputs_fingerprint(avatar: Avatar, inputs: FrameInputs, data: FaceDataset, sub_dirs: list[str],
                       protocol: dict) -> dict:
    """What saved test inputs must match to be reused: the test frames (their count, videos and tracked
    inputs), the model, the inputs fitted and how they were fitted (`protocol`: steps, rate, frames a
    step, loss weights), so that an evaluation asking for another fit, or of other frames, never
    reports the metrics of an earlier one."""
    return {"n_frames": len(data), "sub_dirs": sub_dirs, "tracked": tracked_digest(data),
            "model": points_fingerprint(avatar), "keys": sorted(inputs.state_dict()), "fitted": inputs.refined,
            "protocol": protocol}


def load_fitted_inputs(inputs: FrameInputs, checkpoints: Path, epoch: int, fingerprint: dict,
                       device: torch.device) -> bool:
    """Load the test inputs saved for `epoch` into `inputs` when their fingerprint matches; returns
    whether they were loaded."""
    saved = checkpoints / ckpt.TEST_INPUTS / f"{epoch}.pth"
    if not saved.is_file():
        return False
    state = ckpt.load_part(checkpoints, ckpt.TEST_INPUTS, epoch, map_location=device)
    if state.get("fingerprint") == fingerprint:
        inputs.load_state_dict(state["inputs_state_dict"])
        log.info("using the test inputs fitted before: %s", saved)
        return True
    log.info("%s was fitted for another model, other test frames or another fitting protocol; fitting again", saved)
    return False


def save_fitted_inputs(inputs: FrameInputs, checkpoints: Path, epoch: int, fingerprint: dict) -> None:
    """Write the fitted test inputs as TestInputParameters/<epoch>.pth and latest.pth."""
    saved = checkpoints / ckpt.TEST_INPUTS / f"{epoch}.pth"
    payload = {"epoch": epoch, "fingerprint": fingerprint, "inputs_state_dict": inputs.state_dict()}
    ckpt.atomic_save(payload, saved)
    ckpt.atomic_save(payload, saved.with_name(f"{ckpt.LATEST}.pth"))


def fitting_protocol(conf: Conf, n_points: int) -> dict:
    """How test inputs are fitted: steps, rate (`evaluation.test_fit_learning_rate`, else the training
    frames' input rate as in the paper's protocol), frames a step (the training rule) and the
    photometric loss's weights."""
    train = conf.train
    rate = conf.evaluation.test_fit_learning_rate or train.learning_rate_cam
    return {"steps": conf.evaluation.test_fit_steps, "learning_rate": rate,
            "frames_per_step": frames_per_step(train, n_points), "rgb_weight": conf.loss.rgb_weight,
            "ssim_weight": conf.loss.ssim_weight}


def fit_by_protocol(conf: Conf, avatar: Avatar, inputs: FrameInputs, data: FaceDataset, order: torch.Tensor,
                    device: torch.device) -> None:
    """Fit `inputs` in place on the frames `order` [K] of `data` as the test protocol does."""
    protocol = fitting_protocol(conf, avatar.n_points)
    size = protocol["frames_per_step"]
    loss = AvatarLoss(conf.loss, None, None, device, perceptual=False)
    losses = fit_frame_inputs(avatar, inputs, batches(data, size, order), math.ceil(len(order) / size),
                              protocol["steps"], protocol["learning_rate"], loss, device)
    if losses:
        log.info("fitted the inputs: photometric loss %.4f -> %.4f (mean over batches)",
                 np.mean([a for a, _ in losses]), np.mean([b for _, b in losses]))


def fitted_test_inputs(conf: Conf, avatar: Avatar, data: FaceDataset, checkpoints: Path, epoch: int,
                device: torch.device) -> FrameInputs | None:
    """Fitted (or reloaded) expression/pose/camera of the test frames, or None when the conf's
    optimize flags are off, `evaluation.test_fit_steps` is 0, or there is no ground truth to fit."""
    train, evaluation = conf.train, conf.evaluation
    inputs = FrameInputs(data.expressions, data.flame_poses, data.world_mats, train.optimize_expression,
                         train.optimize_camera, evaluation.fit_camera_translation).to(device)
    if not inputs.enabled or data.only_json or evaluation.test_fit_steps == 0:
        return None
    fingerprint = inputs_fingerprint(avatar, inputs, data, list(conf.dataset.test.sub_dir),
                                     fitting_protocol(conf, avatar.n_points))
    if load_fitted_inputs(inputs, checkpoints, epoch, fingerprint, device):
        return inputs
    fit_by_protocol(conf, avatar, inputs, data, torch.arange(len(data)), device)
    save_fitted_inputs(inputs, checkpoints, epoch, fingerprint)
    return inputs
