"""Random Gaussian scenes for the rasterizer's tests and benchmark (no data needed).

`random_scene` fills the view frustum between depth 2 and 6 with Gaussians whose size shrinks as
1/sqrt(N), so the number of Gaussians covering a pixel stays about the same at any N (as when the
avatar's point count grows and its radius shrinks). `sphere_scene` puts them on a sphere shell of
radius 0.5, as the avatar's canonical points start, with the method's point radius schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Camera


@dataclass
class Scene:
    means: Tensor  # [N, 3] world
    quats: Tensor  # [N, 4] wxyz, not normalised
    scales: Tensor  # [N, 3]
    opacities: Tensor  # [N]
    colors: Tensor  # [N, 3]
    camera: Camera
    background: Tensor  # [3]

    def args(self) -> tuple:
        """Positional arguments of `rasterize` (without the backend)."""
        return (self.means, self.quats, self.scales, self.opacities, self.colors, self.camera, self.background)

    def detached_leaves(self) -> "Scene":
        """A copy whose Gaussian tensors are fresh leaves requiring grad."""
        def leaf(t: Tensor) -> Tensor:
            return t.detach().clone().requires_grad_(True)
        return Scene(leaf(self.means), leaf(self.quats), leaf(self.scales), leaf(self.opacities),
                     leaf(self.colors), self.camera, self.background)


def look_camera(width: int, height: int, fov_x_deg: float = 50.0, cx: float | None = None,
                cy: float | None = None, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> Camera:
    """A camera at the origin looking down +z (OpenCV axes), square pixels."""
    fx = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    return Camera(torch.eye(4, dtype=dtype, device=device), fx, fx,
                  width / 2 if cx is None else cx, height / 2 if cy is None else cy, width, height)


def random_scene(n: int, width: int, height: int, seed: int = 0, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, scale: float = 0.03, max_opacity: float = 0.9) -> Scene:
    """N random Gaussians inside the frustum of `look_camera`, depth 2..6.

    Scales are log-uniform in [0.3, 1.5] x scale x sqrt(1000 / N) per axis (anisotropic), opacities
    uniform in [0.1, max_opacity] (below the 0.99 cap, where backends differ), colours uniform.
    """
    gen = torch.Generator().manual_seed(seed)
    camera = look_camera(width, height, device=device, dtype=dtype)
    z = 2.0 + 4.0 * torch.rand(n, generator=gen, dtype=torch.float64)
    x = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * z * (0.5 * width / camera.fx) * 1.1
    y = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * z * (0.5 * height / camera.fy) * 1.1
    means = torch.stack([x, y, z], dim=-1)
    size = scale * math.sqrt(1000.0 / n)
    log_factor = torch.empty(n, 3, dtype=torch.float64).uniform_(math.log(0.3), math.log(1.5), generator=gen)
    scales = size * torch.exp(log_factor)
    quats = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    opacities = 0.1 + (max_opacity - 0.1) * torch.rand(n, generator=gen, dtype=torch.float64)
    colors = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    background = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    t = [v.to(device=device, dtype=dtype) for v in (means, quats, scales, opacities, colors, background)]
    return Scene(t[0], t[1], t[2], t[3], t[4], camera, t[5])


def sphere_scene(n: int, width: int, height: int, seed: int = 0, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> Scene:
    """N Gaussians on a sphere shell of radius 0.5 at distance 1.6 (the shell fills ~70% of the
    image width), isotropic-ish scales of the method's point radius 0.15 * 0.75^log2(N / 100)."""
    gen = torch.Generator().manual_seed(seed)
    camera = look_camera(width, height, fov_x_deg=35.0, device=device, dtype=dtype)
    direction = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    means = 0.5 * direction / direction.norm(dim=-1, keepdim=True) + torch.tensor([0.0, 0.0, 1.6], dtype=torch.float64)
    radius = 0.15 * 0.75 ** math.log2(max(n, 100) / 100)
    scales = radius * 0.5 * (0.5 + torch.rand(n, 3, generator=gen, dtype=torch.float64))
    quats = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    opacities = 0.1 + 0.8 * torch.rand(n, generator=gen, dtype=torch.float64)
    colors = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    background = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    t = [v.to(device=device, dtype=dtype) for v in (means, quats, scales, opacities, colors, background)]
    return Scene(t[0], t[1], t[2], t[3], t[4], camera, t[5])
