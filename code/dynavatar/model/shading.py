"""Pose-dependent shading: a learnt, global low-frequency lighting of the Gaussians' posed normals.

The colour network gives each Gaussian a pose-independent albedo; with `model.shading` its colour
in a frame is albedo x shading(n), where n is the normal of the point's nearest canonical FLAME vertex
turned by the rotation of its skinning in that frame. The shading is a second-order spherical-harmonic
function of n (9 coefficients per channel), shared by all Gaussians and learnt with them: the lights
of a monocular video stay where they are while the head turns, so a surface facing the light when
turned must be brighter than the same surface seen frontally. It starts as 1 (pure albedo).
"""

from __future__ import annotations

import torch
from torch import nn

N_SH = 9  # spherical harmonics up to degree 2


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """Real spherical-harmonic basis up to degree 2 (unnormalised) of unit normals [..., 3] -> [..., 9]."""
    x, y, z = normals.unbind(-1)
    one = torch.ones_like(x)
    return torch.stack([one, x, y, z, x * y, x * z, y * z, x * x - y * y, 3.0 * z * z - 1.0], dim=-1)


class Shading(nn.Module):
    """shading(n) [..., 3] = sh_basis(n) [..., 9] @ coefficients [9, 3]; the identity lighting at start."""

    def __init__(self) -> None:
        super().__init__()
        coefficients = torch.zeros(N_SH, 3)
        coefficients[0] = 1.0
        self.coefficients = nn.Parameter(coefficients)

    def forward(self, normals: torch.Tensor) -> torch.Tensor:
        return sh_basis(normals) @ self.coefficients
