"""Adapter to gsplat's `rasterization()` (nerfstudio-project/gsplat, CUDA).

gsplat takes OpenCV cameras with pixel intrinsics and the 3DGS pixel-centre convention, so the
camera converts directly: K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], and as view matrix the
identity (camera-space Gaussians) or, given `view`, the world-to-camera matrices themselves: gsplat
then transforms world-space Gaussians in its projection kernel, which saves a dozen small kernels
per call. Render mode "RGB+D" gives the accumulated depth, "RGB" (without `depth`) skips it.

In training steps inside `IntersectionBudget.use()` (see `train.wait_free_intersections`) the tile
intersections are made by `tile_intersections.intersect_tiles`, into a buffer of a capacity chosen
on the host, and gsplat's projection and rasterization kernels are called around them: the host
never waits for the device's intersection count (see tile_intersections.py). The images are the same.

Differences from the 3DGS kernel that gsplat keeps: alpha is capped at 0.999 (not 0.99), and its
radius is the opacity-aware bound of the 1/255 contour (at most 3.33 sigma per axis), binned per
axis. They change pixels only where a Gaussian's alpha exceeds 0.99 or lies near 1/255 at 3 sigma.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import Tensor

from ..cameras import Camera
from ..runtime import constant, data_constant
from .backends import get_backend
from .output import RasterOutput, gradient_leaf
from .projection import LOW_PASS, TILE_SIZE
from .tile_intersections import IntersectionBudget, active_budget, intersect_tiles


def rasterize_gsplat(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                     camera: Camera, background: Tensor, depth: bool = True, view: Tensor | None = None
                     ) -> RasterOutput:
    """Rasterize Gaussians (means [N, 3], quaternions [N, 4], scales [N, 3]) with gsplat: in camera
    space, or in world space seen through `view` (world-to-camera [4, 4])."""
    return rasterize_gsplat_frames(means[None], quats[None], scales[None], opacities[None], colors[None],
                                   [camera], background, frame_axis=False, depth=depth,
                                   view=None if view is None else view[None])


def rasterize_gsplat_frames(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor,
                            colors: Tensor, cameras: Sequence[Camera], background: Tensor,
                            frame_axis: bool = True, depth: bool = True, view: Tensor | None = None
                            ) -> RasterOutput:
    """B frames in one gsplat call: means [B, N, 3], quaternions [B, N, 4], scales [B, N, 3],
    opacities [B, N], colours [B, N, 3], one camera per frame (all of one image size); in camera
    space, or in world space seen through `view` [B, 4, 4] (world-to-camera). Returns fields with a
    leading frame axis (dropped for one frame with `frame_axis=False`); `depth` None without `depth`."""
    gsplat = get_backend("gsplat").import_package()
    device, dtype = means.device, torch.float32
    n_frames, n = means.shape[:2]
    if view is None:
        identity = (((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0)),)
        viewmats = constant(identity, dtype, device).expand(n_frames, 1, 4, 4)  # [B, 1, 4, 4]
    else:
        viewmats = view.to(dtype)[:, None]  # [B, 1, 4, 4]
    ks = data_constant(tuple(((c.fx, 0.0, c.cx), (0.0, c.fy, c.cy), (0.0, 0.0, 1.0)) for c in cameras),
                       dtype, device)[:, None]  # [B, 1, 3, 3]
    first = cameras[0]
    backgrounds = background.to(dtype).expand(n_frames, 1, 3)
    gaussians = tuple(t.to(dtype) for t in (means, quats, scales, opacities, colors))
    budget = active_budget()
    budget = budget if budget is not None and _per_axis_radii(gsplat.__version__) else None
    if budget is None:
        render, alphas, meta = gsplat.rasterization(
            *gaussians, viewmats, ks, first.width, first.height, near_plane=first.near, far_plane=first.far,
            eps2d=LOW_PASS, packed=False, tile_size=TILE_SIZE, backgrounds=backgrounds,
            render_mode="RGB+D" if depth else "RGB", rasterize_mode="classic")
    else:
        render, alphas, meta = _rasterize_without_wait(budget, *gaussians, viewmats, ks, first, backgrounds, depth)
    # render [B, 1, H, W, 4], alphas [B, 1, H, W, 1]; radii [B, 1, N, 2] per axis (gsplat >= 1.5) or [B, 1, N].
    radii = meta["radii"].reshape(n_frames, n, -1).max(dim=-1).values.to(torch.int32)
    lead = (n_frames,) if frame_axis else ()
    pick = (lambda t: t) if frame_axis else (lambda t: t[0])
    return RasterOutput(image=pick(render[:, 0, ..., :3]), alpha=pick(alphas[:, 0, ..., 0]),
                        depth=pick(render[:, 0, ..., 3]) if depth else None, radii=pick(radii),
                        visible=pick(radii > 0),
                        means2d=gradient_leaf([meta["means2d"]], lead + (n, 2)))


@functools.lru_cache(maxsize=4)
def _per_axis_radii(version: str) -> bool:
    """gsplat >= 1.5: radii per axis and an opacity-aware projection, which `_rasterize_without_wait` follows."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) >= (1, 5)


def _rasterize_without_wait(budget: IntersectionBudget, means: Tensor, quats: Tensor, scales: Tensor,
                            opacities: Tensor, colors: Tensor, viewmats: Tensor, ks: Tensor, camera: Camera,
                            backgrounds: Tensor, depth: bool) -> tuple[Tensor, Tensor, dict]:
    """What `gsplat.rasterization` does for these arguments (B frames [B, N, ...], one camera each,
    packed=False, classic mode), with the tile intersections of `intersect_tiles`: nothing waits for
    the device. Returns render [B, 1, H, W, 3 or 4], alphas [B, 1, H, W, 1] and meta's radii and means2d."""
    from gsplat.cuda._wrapper import fully_fused_projection, rasterize_to_pixels

    width, height = camera.width, camera.height
    radii, means2d, depths, conics, _ = fully_fused_projection(
        means, None, quats, scales, viewmats, ks, width, height, eps2d=LOW_PASS, near_plane=camera.near,
        far_plane=camera.far, packed=False, opacities=opacities)  # [B, 1, N, ...]
    n_frames, n = means.shape[:2]
    opacities = opacities[:, None, :].expand(n_frames, 1, n)
    colors = colors[:, None]
    if depth:
        colors = torch.cat((colors, depths[..., None]), dim=-1)
        backgrounds = torch.cat((backgrounds, backgrounds.new_zeros(n_frames, 1, 1)), dim=-1)
    tile_width, tile_height = -(-width // TILE_SIZE), -(-height // TILE_SIZE)
    flat = n_frames * n
    found = intersect_tiles(means2d.reshape(n_frames, n, 2), radii.reshape(n_frames, n, 2),
                            depths.reshape(n_frames, n), TILE_SIZE, tile_width, tile_height,
                            capacity=lambda count: budget.capacity(count, flat))
    budget.record(found.count, flat, found.flatten_ids.numel())
    render, alphas = rasterize_to_pixels(means2d, conics, colors, opacities, width, height, TILE_SIZE,
                                         found.offsets.reshape(n_frames, 1, tile_height, tile_width),
                                         found.flatten_ids, backgrounds=backgrounds, packed=False)
    return render, alphas, {"radii": radii, "means2d": means2d}
