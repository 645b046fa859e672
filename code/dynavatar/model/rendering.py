"""Rendering the Gaussians of B frames, one camera each, over a colour or a learnt background image."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from ..cameras import Camera
from ..render import RasterStats, rasterize_frames
from ..runtime import constant
from .gaussians import Gaussians


class Rendering(NamedTuple):
    rgb: torch.Tensor  # [B, H, W, 3]
    alpha: torch.Tensor  # [B, H, W]
    depth: torch.Tensor | None  # [B, H, W] alpha-weighted camera depth (None unless asked for)
    raster: RasterStats  # [B, N, ...] per-Gaussian statistics of the rasterizer


def render_gaussians(gaussians: Gaussians, cameras: Sequence[Camera], background: torch.Tensor,
                     backend: str = "auto", depth: bool = False) -> Rendering:
    """Rasterize the frames of `gaussians` [B, N, ...], one camera each, with `backend` (conf
    `model.rasterizer`); the depth only with `depth` (nothing in training or animation reads it, and
    drawing it costs a fourth channel).

    `background` is a colour [3], drawn by the rasterizer, or an image [H, W, 3] (a learnt
    background): the Gaussians are then drawn over black and the image shows where they do not
    cover, rgb + (1 - alpha) background.
    """
    g = gaussians
    learnt = background.dim() == 3
    colour = constant((0.0,) * 3, g.means.dtype, g.means.device) if learnt else background
    out = rasterize_frames(g.means, g.quats, g.scales, g.opacities, g.colors, cameras, colour, backend, depth)
    rgb = out.image
    if learnt:
        rgb = rgb + (1.0 - out.alpha[..., None]) * background
    return Rendering(rgb, out.alpha, out.depth, out.stats())
