"""Where the training images live during a run: on the GPU when they fit its budget, else in host memory."""

from __future__ import annotations

import logging

import torch

from ..data.reader import FaceDataset

log = logging.getLogger(__name__)


def place_training_images(data: FaceDataset, device: torch.device, fraction: float) -> None:
    """Move preloaded images to `device` when it is a GPU and they take at most `fraction` of its free
    memory (`train.gpu_image_fraction`): batches are then gathered and composited there, with no copy
    per step."""
    size = data.preloaded_bytes()
    if device.type != "cuda" or size == 0:
        return
    free, _ = torch.cuda.mem_get_info(device)
    if size <= free * fraction:
        data.to(device)
        log.info("training images on %s (%.2f GiB)", device, size / 2 ** 30)
    else:
        log.info("training images stay in host memory (%.2f GiB, %.2f GiB free on %s)", size / 2 ** 30,
                 free / 2 ** 30, device)
