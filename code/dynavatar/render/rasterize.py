"""The one rasterizer entry point: world-space Gaussians and a camera in, a RasterOutput out."""

from __future__ import annotations

import logging

from torch import Tensor

from ..cameras import Camera
from .backends import resolve_backend
from .output import RasterOutput
from .projection import to_camera

log = logging.getLogger(__name__)
_announced: set[tuple[str, str]] = set()


def _run_backend(name: str, *args) -> RasterOutput:
    if name == "torch":
        from .torch_backend import rasterize_torch
        return rasterize_torch(*args)
    if name == "gsplat":
        from .gsplat_backend import rasterize_gsplat
        return rasterize_gsplat(*args)
    from .inria_backend import rasterize_inria
    return rasterize_inria(*args)


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
              camera: Camera, background: Tensor, backend: str = "auto") -> RasterOutput:
    """Render Gaussians with precomputed colours into `camera`'s image.

    means [N, 3] world space; quats [N, 4] (w, x, y, z), normalised here; scales [N, 3] (activated,
    > 0); opacities [N] in [0, 1]; colors [N, 3]; background [3]. `backend` is one of auto, torch,
    gsplat, inria (conf key model.rasterizer).

    The world-to-camera transform of the means and rotations is done here, once, in PyTorch, so
    gradients reach `camera.world_to_camera` whatever the backend; the backends then see
    camera-space Gaussians under an identity view matrix. Gaussians whose camera z is not inside
    (camera.near, camera.far) are culled.
    """
    n = means.shape[0]
    if means.shape != (n, 3) or quats.shape != (n, 4) or scales.shape != (n, 3) \
            or opacities.shape != (n,) or colors.shape != (n, 3) or background.shape != (3,):
        raise ValueError(
            "rasterize expects means [N,3], quats [N,4], scales [N,3], opacities [N], colors [N,3], background [3]; "
            f"got {tuple(means.shape)}, {tuple(quats.shape)}, {tuple(scales.shape)}, {tuple(opacities.shape)}, "
            f"{tuple(colors.shape)}, {tuple(background.shape)}")
    name = resolve_backend(backend, means.device)
    if (backend, name) not in _announced:
        _announced.add((backend, name))
        log.info("rasterizer backend %r -> %s on %s", backend, name, means.device.type)
    if n == 0:
        name = "torch"  # nothing to draw: the background, without calling a CUDA kernel on empty inputs
    means_cam, quats_cam = to_camera(means, quats, camera.world_to_camera)
    return _run_backend(name, means_cam, quats_cam, scales, opacities, colors, camera,
                        background.to(device=means.device, dtype=means.dtype))


__all__ = ["rasterize", "RasterOutput"]
