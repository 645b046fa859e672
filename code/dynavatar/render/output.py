"""What every rasterizer backend returns, and the per-Gaussian statistics kept from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass
class RasterStats:
    """Per-Gaussian statistics of a rendering, for densification strategies (shapes [..., N]).

    Every backend fills all three. `means2d`'s `.grad` after a backward pass is dL/d(pixel position)
    [..., N, 2], in pixels for every backend (zero for Gaussians that were not drawn).
    """

    means2d: Tensor  # [..., N, 2] pixel coordinates, pixel centres at i + 0.5
    radii: Tensor  # [..., N] int32 screen-space radius in px, 0 = not rendered
    visible: Tensor  # [..., N] bool, radii > 0


@dataclass
class RasterOutput:
    """One rendered view.

    `depth` is the accumulated (alpha-weighted) camera z of the Gaussian means,
    sum_i w_i z_i with w_i = alpha_i * T_i: divide by `alpha` for the expected depth. Every backend
    defines it so (gsplat's render mode "D"), and leaves it None when it was not asked for.

    `means2d` holds the projected means in pixels (pixel centres at i + 0.5). After a backward pass
    its `.grad` is dL/d(pixel position) [N, 2] of the loss through image, alpha and depth, in the
    same units for every backend: read it for densification statistics. It is not a route for
    gradients into the Gaussians (use `Camera.project` for a differentiable projection).
    """

    image: Tensor  # [H, W, 3] colour composited over the background
    alpha: Tensor  # [H, W] accumulated opacity, 1 - final transmittance
    depth: Tensor | None  # [H, W] sum_i w_i z_i (not normalised by alpha); None when not asked for
    radii: Tensor  # [N] int32 screen-space radius in px, 0 = not rendered
    visible: Tensor  # [N] bool, radii > 0
    means2d: Tensor  # [N, 2] pixel coordinates; .grad after backward = dL/d(pixel position)

    def stats(self) -> RasterStats:
        return RasterStats(self.means2d, self.radii, self.visible)


def gradient_leaf(parts: Sequence[Tensor], shape: Sequence[int]) -> Tensor:
    """A leaf of `shape` holding the values of `parts` one after the other (each flattened).

    After a backward pass its `.grad` holds their gradients laid out the same way, so that dL/d(pixel
    position) is read from one tensor however a backend computed it (a reshaped or stacked view of
    the parts would get no `.grad`). Without gradients, the plain values.
    """
    values = torch.cat([p.detach().reshape(-1) for p in parts]).reshape(tuple(shape))
    if not any(p.requires_grad for p in parts):
        return values
    leaf = values.requires_grad_(True)
    start = 0
    for part in parts:
        if part.requires_grad:
            part.register_hook(_accumulator(leaf, start))
        start += part.numel()
    return leaf


def _accumulator(leaf: Tensor, start: int):
    def hook(grad: Tensor) -> None:
        with torch.no_grad():
            if leaf.grad is None:
                leaf.grad = torch.zeros_like(leaf)
            leaf.grad.view(-1)[start:start + grad.numel()] += grad.reshape(-1)
    return hook
