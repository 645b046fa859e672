"""The rasterizer entry points: world-space Gaussians and a camera in, a RasterOutput out
(`rasterize`), or the Gaussians of several frames and one camera each (`rasterize_frames`)."""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..cameras import Camera
from .backends import Backend, get_backend, resolve_backend
from .output import RasterOutput, gradient_leaf
from .projection import to_camera

log = logging.getLogger(__name__)
_announced: set[tuple[str, str]] = set()


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
              camera: Camera, background: Tensor, backend: str = "auto", depth: bool = True) -> RasterOutput:
    """Render Gaussians with precomputed colours into `camera`'s image.

    means [N, 3] world space; quats [N, 4] (w, x, y, z), normalised here; scales [N, 3] (activated,
    > 0); opacities [N] in [0, 1]; colors [N, 3]; background [3]. `backend` is one of auto, torch,
    gsplat, inria (conf key model.rasterizer). Without `depth` the output's depth is None (gsplat
    then composites three channels instead of four).

    The world-to-camera transform of the means and rotations is done here, once, in PyTorch, so
    gradients reach `camera.world_to_camera` whatever the backend; the backends then see
    camera-space Gaussians under an identity view matrix. Where no gradient has to reach the camera,
    a backend that takes view matrices (gsplat) transforms the world-space Gaussians in its own
    kernel instead. Gaussians whose camera z is not inside (camera.near, camera.far) are culled.
    """
    _check_shapes(means, quats, scales, opacities, colors, background, batched=False)
    record = get_backend(_backend_for(backend, means))
    background = background.to(device=means.device, dtype=means.dtype)
    return _draw(record, record.rasterize_function(), means, quats, camera.world_to_camera, scales, opacities, colors,
                 camera, background, depth=depth)


def rasterize_frames(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                     cameras: Sequence[Camera], background: Tensor, backend: str = "auto", depth: bool = True
                     ) -> RasterOutput:
    """Render B frames, each with its own Gaussians and camera: means [B, N, 3], quats [B, N, 4],
    scales [B, N, 3], opacities [B, N], colors [B, N, 3], one camera per frame, background [3].
    Returns a RasterOutput whose fields have a leading frame axis (image [B, H, W, 3], ...).

    The same images as B calls of `rasterize`; a backend with a frames function (gsplat) draws all
    frames of one image size in one call (fewer kernel launches), the others frame by frame. The
    stacked `means2d` is a leaf whose `.grad` after a backward pass is dL/d(pixel position) [B, N, 2].
    """
    _check_shapes(means, quats, scales, opacities, colors, background, batched=True)
    if len(cameras) != means.shape[0]:
        raise ValueError(f"rasterize_frames: {means.shape[0]} frames of Gaussians but {len(cameras)} cameras")
    name = _backend_for(backend, means)
    record = get_backend(name)
    background = background.to(device=means.device, dtype=means.dtype)
    draw_frames = record.frames_function()
    if draw_frames is not None and len({(c.width, c.height) for c in cameras}) == 1:
        world_to_camera = torch.stack([camera.world_to_camera for camera in cameras])  # [B, 4, 4]
        return _draw(record, draw_frames, means, quats, world_to_camera, scales, opacities, colors, cameras,
                     background, depth=depth)
    outputs = [rasterize(means[b], quats[b], scales[b], opacities[b], colors[b], camera, background, name, depth)
               for b, camera in enumerate(cameras)]
    stacked = {f.name: torch.stack([getattr(o, f.name) for o in outputs]) for f in fields(RasterOutput)
               if f.name not in ("means2d", "depth")}
    stacked["depth"] = torch.stack([o.depth for o in outputs]) if depth else None
    means2d = gradient_leaf([o.means2d for o in outputs], (len(outputs),) + tuple(outputs[0].means2d.shape))
    return RasterOutput(**stacked, means2d=means2d)


def _draw(record: Backend, draw: Callable, means: Tensor, quats: Tensor, world_to_camera: Tensor, *rest,
          depth: bool) -> RasterOutput:
    """`draw(means, quats, *rest)` of `record`'s backend: world-space Gaussians and the view matrices
    where it takes them and no gradient has to reach the camera, else camera-space Gaussians (the
    PyTorch transform, which carries the camera's gradient)."""
    if record.view_matrix and not (torch.is_grad_enabled() and world_to_camera.requires_grad):
        return draw(means, quats, *rest, depth=depth, view=world_to_camera)
    means_cam, quats_cam = to_camera(means, quats, world_to_camera)
    return draw(means_cam, quats_cam, *rest, depth=depth)


def _check_shapes(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                  background: Tensor, batched: bool) -> None:
    lead = tuple(means.shape[:-1])
    expected = (lead + (3,), lead + (4,), lead + (3,), lead, lead + (3,), (3,))
    got = tuple(tuple(t.shape) for t in (means, quats, scales, opacities, colors, background))
    if means.dim() != (3 if batched else 2) or got != expected:
        frames = "B," if batched else ""
        raise ValueError(
            f"{'rasterize_frames' if batched else 'rasterize'} expects means [{frames}N,3], quats [{frames}N,4], "
            f"scales [{frames}N,3], opacities [{frames}N], colors [{frames}N,3], background [3]; got "
            + ", ".join(str(g) for g in got))


def _backend_for(backend: str, means: Tensor) -> str:
    name = resolve_backend(backend, means.device)
    if (backend, name) not in _announced:
        _announced.add((backend, name))
        log.info("rasterizer backend %r -> %s on %s", backend, name, means.device.type)
    if means.shape[-2] == 0:
        return "torch"  # nothing to draw: the background, without calling a CUDA kernel on empty inputs
    return name


__all__ = ["rasterize", "rasterize_frames", "RasterOutput"]
