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

log = logging.getLogger(__name__)

SSIM_WEIGHT = 0.25  # the paper's fitting loss: L1 + 0.25 (1 - SSIM)


def fit_frame_inputs(avatar: Avatar, inputs: FrameInputs, batches: Iterable[tuple], n_batches: int,
                     steps: int, lr: float, device: torch.device) -> None:
    """Optimise `inputs` in place on each batch of (indices, model_input, ground_truth) for `steps` steps."""
    optimizer = inputs.optimizer(lr)
    if optimizer is None:
        return
    frozen = [p for p in avatar.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    avatar.eval()
    try:
        for _, model_input, ground_truth in tqdm(batches, total=n_batches, desc="fitting test frames",
                                                 dynamic_ncols=True):
            model_input = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model_input.items()}
            gt = ground_truth["rgb"].to(device)
            for _ in range(steps):
                refined = inputs.apply(model_input)
                out = avatar(refined["expression"], refined["flame_pose"], refined["world_mat"],
                             refined["intrinsics"])
                loss = (out.rgb - gt).abs().mean() + SSIM_WEIGHT * ssim_loss(out.rgb, gt)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
