"""Test-time fitting: refine the test frames' expression and FLAME pose (camera translation too, as an
option) with the avatar frozen (the paper's protocol: 20 SparseAdam steps per batch of the
photometric loss)."""

from __future__ import annotations

import logging
from typing import Iterable

import torch
from tqdm import tqdm

from ..data.batch import FrameBatch
from ..losses import AvatarLoss
from ..model.avatar import Avatar
from ..model.frame_inputs import FrameInputs

log = logging.getLogger(__name__)


def fit_frame_inputs(avatar: Avatar, inputs: FrameInputs, batches: Iterable[FrameBatch], n_batches: int,
                     steps: int, lr: float, loss: AvatarLoss, device: torch.device) -> list[tuple[float, float]]:
    """Optimise `inputs` in place on each batch for `steps` steps of `loss.photometric`. Returns the
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
        for batch in tqdm(batches, total=n_batches, desc="fitting test frames", dynamic_ncols=True):
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
