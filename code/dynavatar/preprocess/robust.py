"""The robust distance that tracking's terms share."""

from __future__ import annotations

import torch


def pseudo_huber(distance: torch.Tensor, scale: float) -> torch.Tensor:
    """scale^2 (sqrt(1 + (d / scale)^2) - 1), elementwise: quadratic below `scale`, linear beyond,
    so that a few wrong observations do not dominate a fit."""
    return scale * scale * (torch.sqrt(1.0 + (distance / scale) ** 2) - 1.0)


def pseudo_huber_of_squared(squared: torch.Tensor, scale: float) -> torch.Tensor:
    """`pseudo_huber` of distances given squared, d^2: a vector's squared length is a sum that needs
    no square root (a vector norm over a strided last axis is slow on the CPU, and its gradient is
    undefined at 0)."""
    return scale * scale * (torch.sqrt(1.0 + squared / (scale * scale)) - 1.0)
