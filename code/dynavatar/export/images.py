"""Evaluation images: PNG writing, the erode-dilate rendering the metrics use, error heat maps,
side-by-side panels. Images are tensors [H,W,3] (or [B,H,W,3] where stated), float in [0,1].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..files import temporary_beside

# Jet-like colour ramp (dark blue -> blue -> cyan -> yellow -> red -> dark red): anchors at
# equally spaced error levels, linearly interpolated. Implemented here to avoid matplotlib.
_RAMP = np.array([
    [0.0, 0.0, 0.5],
    [0.0, 0.0, 1.0],
    [0.0, 1.0, 1.0],
    [1.0, 1.0, 0.0],
    [1.0, 0.0, 0.0],
    [0.5, 0.0, 0.0],
])


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Float [..,3] in [0,1] -> uint8, clipped and rounded (the reference truncates; < 0.5/255 apart)."""
    if image.dtype == torch.uint8:
        return image
    return (image.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def save_png(path: str | Path, image: torch.Tensor) -> Path:
    """Write [H,W,3] (float in [0,1] or uint8) as a PNG, atomically."""
    if image.dim() != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"save_png needs an image [H,W,C], got shape {tuple(image.shape)}")
    array = to_uint8(image).cpu().numpy()
    if array.shape[-1] == 1:
        array = array[..., 0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_beside(path, ".png")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(array).save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def erode_dilate(image: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Grey-level opening of the rendered RGB image: size x size min filter, then max filter.

    This is what the paper's `rgb_erode_dilate` images (its metric input) are: cv2.erode then
    cv2.dilate, 3x3 square kernel, one iteration each, applied per channel to the rendering itself
    (not to an alpha mask); pixels outside the image are ignored, as cv2's default border does.
    On a white background it removes bright specks narrower than the kernel, i.e. background
    showing through holes between splats. Min/max commute with the uint8 quantisation, so this on
    floats equals the reference on its saved uint8 image. [H,W,C] or [B,H,W,C] -> same shape.
    """
    x = image.unsqueeze(0) if image.dim() == 3 else image
    x = x.permute(0, 3, 1, 2)  # [B,C,H,W]
    pad = size // 2
    # max_pool pads with -inf, so the border never wins: the cv2 default for both operations.
    eroded = -F.max_pool2d(-x, size, stride=1, padding=pad)
    opened = F.max_pool2d(eroded, size, stride=1, padding=pad)
    opened = opened.permute(0, 2, 3, 1)
    return opened[0] if image.dim() == 3 else opened


def colormap(values: np.ndarray) -> np.ndarray:
    """Scalars in [0,1] of any shape -> RGB in [0,1], shape + (3,), on the jet-like ramp."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    stops = np.linspace(0.0, 1.0, len(_RAMP))
    return np.stack([np.interp(v, stops, _RAMP[:, c]) for c in range(3)], axis=-1)


def error_heatmap(a: torch.Tensor, b: torch.Tensor, vmax: float | None = None) -> torch.Tensor:
    """Per-pixel |a - b| averaged over channels, colour-mapped: [H,W,3] float in [0,1].

    vmax: the error shown as the top colour; None uses this image's largest error (pass a fixed
    value to compare frames of a video).
    """
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    err = (a.detach().double() - b.detach().double()).abs().mean(dim=-1).cpu().numpy()  # [H,W]
    top = float(err.max()) if vmax is None else float(vmax)
    scaled = err / top if top > 0 else np.zeros_like(err)
    return torch.from_numpy(colormap(scaled)).to(torch.float32)


def side_by_side(images: Sequence[torch.Tensor], gap: int = 0, gap_value: float = 1.0) -> torch.Tensor:
    """Concatenate [H,W_i,C] images left to right (one height, one dtype) with optional gaps."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    first = images[0]
    for i, im in enumerate(images):
        if im.dim() != 3 or im.shape[0] != first.shape[0] or im.shape[2] != first.shape[2]:
            raise ValueError(f"image {i} has shape {tuple(im.shape)}, expected [{first.shape[0]}, W, "
                             f"{first.shape[2]}] like the first")
    parts: list[torch.Tensor] = []
    for i, im in enumerate(images):
        if i and gap:
            fill = gap_value * 255 if first.dtype == torch.uint8 else gap_value
            parts.append(torch.full((first.shape[0], gap, first.shape[2]), fill, dtype=first.dtype,
                                    device=first.device))
        parts.append(im.to(first.dtype, copy=False).to(first.device))
    return torch.cat(parts, dim=1)
