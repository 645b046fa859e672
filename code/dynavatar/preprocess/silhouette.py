"""A silhouette term for FLAME tracking: the projected head should lie inside a foreground mask.

Landmarks of a face detector placed on a head of other anatomy are biased with the pose (see the
tracking section of docs/PREPROCESSING.md); the head's outline in a mask is not. The comparison is
one-sided: every projected mesh vertex should fall inside the mask, whose outside distance is
sampled bilinearly (differentiable in the projected vertices). Hair, the neck below FLAME's and the
shoulders only add to a mask, so this holds for any subject; the other side (each mask edge pixel
near the mesh's outline) does not, and measured worse (docs/PREPROCESSING.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .robust import pseudo_huber

MASK_THRESHOLD = 0.5


def outside_distance(masks: np.ndarray) -> np.ndarray:
    """Masks [N, H, W] in [0, 1] -> [N, H, W] float32: each pixel's distance (pixels) to the nearest
    mask pixel (0 inside)."""
    return np.stack([ndimage.distance_transform_edt(m < MASK_THRESHOLD) for m in masks]).astype(np.float32)


def sample_channels(images: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of images [N, C, H, W] at pixels [N, V, 2] (x, y; centres at integers) ->
    [N, V, C]; outside the image the border value."""
    _, _, h, w = images.shape
    grid = torch.stack([(2 * pixels[..., 0] + 1) / w - 1, (2 * pixels[..., 1] + 1) / h - 1], dim=-1)
    return F.grid_sample(images, grid[:, None], mode="bilinear", padding_mode="border",
                         align_corners=False)[:, :, 0].permute(0, 2, 1)


def sample_image(images: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of images [N, H, W] at pixels [N, V, 2] -> [N, V] (`sample_channels`)."""
    return sample_channels(images[:, None], pixels)[..., 0]


def inside_loss(distance: torch.Tensor, projected: torch.Tensor, scale: float, huber_px: float) -> torch.Tensor:
    """[N] mean over vertices of a pseudo-Huber loss of the outside distance (pixels x scale) of
    projected vertices [N, V, 2] in the distance maps [N, H, W] (a mask's error costs linearly)."""
    d = sample_image(distance, projected) * scale
    return pseudo_huber(d, huber_px).mean(dim=1)
