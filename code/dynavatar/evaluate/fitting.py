"""Test-time fitting: refine the test frames' expression, FLAME pose and camera translation with the
avatar frozen (the paper's protocol: 20 SparseAdam steps per batch of the photometric loss)."""

from __future__ import annotations

import logging
from typing import Iterable

import torch
from tqdm import tqdm

from ..evaluate.metrics import ssim_loss
from ..model.avatar import Avatar
from ..train.frame_inputs import FrameInputs
from ..train.trainer import to_device

log = logging.getLogger(__name__)


def fit_frame_inputs(avatar: Avatar, inputs: FrameInputs, batches: Iterable[tuple], n_batches: int,
                     steps: int, lr: float, ssim_weight: float, device: torch.device) -> list[tuple[float, float]]:
    """Optimise `inputs` in place on each batch of (indices, model_input, ground_truth) for `steps`
    steps of L1 + ssim_weight (1 - SSIM) (the paper's photometric loss). Returns the loss of each
    batch at its first and at its last step."""
    optimizer = inputs.optimizer(lr)
    if optimizer is None:
        return []
    frozen = [p for p in avatar.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    avatar.eval()
    losses: list[tuple[float, float]] = []
    try:
        for _, model_input, ground_truth in tqdm(batches, total=n_batches, desc="fitting test frames",
                                                 dynamic_ncols=True):
            model_input = to_device(model_input, device)
            gt = ground_truth["rgb"].to(device)
            first = None
            for _ in range(steps):
                refined = inputs.apply(model_input)
                out = avatar(refined["expression"], refined["flame_pose"], refined["world_mat"],
                             refined["intrinsics"])
                loss = (out.rgb - gt).abs().mean() + ssim_weight * ssim_loss(out.rgb, gt)
                first = float(loss.detach()) if first is None else first
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            losses.append((first, float(loss.detach())))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return losses
