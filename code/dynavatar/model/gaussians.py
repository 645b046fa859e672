"""Activated Gaussians: what the avatar gives the rasterizer for each frame."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Gaussians:
    """Activated Gaussians of one or several frames (leading batch dimension optional)."""

    means: torch.Tensor  # [..., N, 3]
    quats: torch.Tensor  # [..., N, 4] wxyz, normalised
    scales: torch.Tensor  # [..., N, 3] including the point radius
    opacities: torch.Tensor  # [..., N]
    colors: torch.Tensor  # [..., N, 3] in [0, 1]

    def frame(self, index: int) -> "Gaussians":
        return Gaussians(self.means[index], self.quats[index], self.scales[index], self.opacities[index],
                         self.colors[index])
