"""Adapter to gsplat's `rasterization()` (nerfstudio-project/gsplat, CUDA).

gsplat takes OpenCV cameras with pixel intrinsics and the 3DGS pixel-centre convention, so the
camera converts directly: identity view matrix (the Gaussians arrive in camera space) and
K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]. Render mode "RGB+D" gives the accumulated depth.

Differences from the 3DGS kernel that gsplat keeps: alpha is capped at 0.999 (not 0.99), and its
radius is the opacity-aware bound of the 1/255 contour (at most 3.33 sigma per axis), binned per
axis. They change pixels only where a Gaussian's alpha exceeds 0.99 or lies near 1/255 at 3 sigma.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import Camera
from .backends import import_backend_module
from .output import RasterOutput
from .projection import LOW_PASS, TILE_SIZE, constant


def _forward_grad_to(proxy: Tensor):
    """A hook that adds the gradient of gsplat's means2d [1, N, 2] to `proxy.grad` [N, 2]."""
    def hook(grad: Tensor) -> None:
        g = grad.reshape(proxy.shape).detach()
        proxy.grad = g.clone() if proxy.grad is None else proxy.grad + g
    return hook


def rasterize_gsplat(means_cam: Tensor, quats_cam: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                     camera: Camera, background: Tensor) -> RasterOutput:
    """Rasterize camera-space Gaussians (means [N, 3], unit quaternions [N, 4], scales [N, 3]) with gsplat."""
    gsplat = import_backend_module("gsplat")
    device, dtype = means_cam.device, torch.float32
    viewmats = constant((((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0)),),
                        dtype, device)  # [1, 4, 4]
    k = ((camera.fx, 0.0, camera.cx), (0.0, camera.fy, camera.cy), (0.0, 0.0, 1.0))
    ks = constant((k,), dtype, device)  # [1, 3, 3]
    render, alphas, meta = gsplat.rasterization(
        means_cam.to(dtype), quats_cam.to(dtype), scales.to(dtype), opacities.to(dtype), colors.to(dtype),
        viewmats, ks, camera.width, camera.height, near_plane=camera.near, far_plane=camera.far, eps2d=LOW_PASS,
        packed=False, tile_size=TILE_SIZE, backgrounds=background.to(dtype)[None], render_mode="RGB+D",
        rasterize_mode="classic")
    means2d_full = meta["means2d"]  # [1, N, 2] pixels, upstream of the image
    means2d = means2d_full.detach().reshape(-1, 2).clone()
    if means2d_full.requires_grad:
        # Expose dL/d(pixel) on a [N, 2] leaf (a view of gsplat's [1, N, 2] would get no .grad).
        means2d.requires_grad_(True)
        means2d_full.register_hook(_forward_grad_to(means2d))
    radii = meta["radii"].reshape(means_cam.shape[0], -1)  # [N, 2] per axis (gsplat >= 1.5) or [N, 1]
    radii = radii.max(dim=-1).values.to(torch.int32)
    return RasterOutput(image=render[0, ..., :3], alpha=alphas[0, ..., 0], depth=render[0, ..., 3],
                        radii=radii, visible=radii > 0, means2d=means2d)
