"""What every rasterizer backend returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class RasterOutput:
    """One rendered view.

    `depth` is the accumulated (alpha-weighted) camera z of the Gaussian means,
    sum_i w_i z_i with w_i = alpha_i * T_i: divide by `alpha` for the expected depth. Every backend
    defines it so (gsplat's render mode "D").

    `means2d` holds the projected means in pixels (pixel centres at i + 0.5). After a backward pass
    its `.grad` is dL/d(pixel position) [N, 2] of the loss through image, alpha and depth, in the
    same units for every backend: read it for densification statistics. It is not a route for
    gradients into the Gaussians (use `Camera.project` for a differentiable projection).
    """

    image: Tensor  # [H, W, 3] colour composited over the background
    alpha: Tensor  # [H, W] accumulated opacity, 1 - final transmittance
    depth: Tensor  # [H, W] sum_i w_i z_i (not normalised by alpha)
    radii: Tensor  # [N] int32 screen-space radius in px, 0 = not rendered
    visible: Tensor  # [N] bool, radii > 0
    means2d: Tensor  # [N, 2] pixel coordinates; .grad after backward = dL/d(pixel position)
