"""Adapter to gsplat's `rasterization()` (nerfstudio-project/gsplat, CUDA).

gsplat takes OpenCV cameras with pixel intrinsics and the 3DGS pixel-centre convention, so the
camera converts directly: K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], and as view matrix the
identity (camera-space Gaussians) or, given `view`, the world-to-camera matrices themselves: gsplat
then transforms world-space Gaussians in its projection kernel, which saves a dozen small kernels
per call. Render mode "RGB+D" gives the accumulated depth, "RGB" (without `depth`) skips it.

Differences from the 3DGS kernel that gsplat keeps: alpha is capped at 0.999 (not 0.99), and its
radius is the opacity-aware bound of the 1/255 contour (at most 3.33 sigma per axis), binned per
axis. They change pixels only where a Gaussian's alpha exceeds 0.99 or lies near 1/255 at 3 sigma.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..cameras import Camera
from ..runtime import constant
from .backends import get_backend
from .output import RasterOutput, gradient_leaf
from .projection import LOW_PASS, TILE_SIZE


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
    ks = constant(tuple(((c.fx, 0.0, c.cx), (0.0, c.fy, c.cy), (0.0, 0.0, 1.0)) for c in cameras),
                  dtype, device)[:, None]  # [B, 1, 3, 3]
    first = cameras[0]
    render, alphas, meta = gsplat.rasterization(
        means.to(dtype), quats.to(dtype), scales.to(dtype), opacities.to(dtype), colors.to(dtype),
        viewmats, ks, first.width, first.height, near_plane=first.near, far_plane=first.far, eps2d=LOW_PASS,
        packed=False, tile_size=TILE_SIZE, backgrounds=background.to(dtype).expand(n_frames, 1, 3),
        render_mode="RGB+D" if depth else "RGB", rasterize_mode="classic")
    # render [B, 1, H, W, 4], alphas [B, 1, H, W, 1]; radii [B, 1, N, 2] per axis (gsplat >= 1.5) or [B, 1, N].
    radii = meta["radii"].reshape(n_frames, n, -1).max(dim=-1).values.to(torch.int32)
    lead = (n_frames,) if frame_axis else ()
    pick = (lambda t: t) if frame_axis else (lambda t: t[0])
    return RasterOutput(image=pick(render[:, 0, ..., :3]), alpha=pick(alphas[:, 0, ..., 0]),
                        depth=pick(render[:, 0, ..., 3]) if depth else None, radii=pick(radii),
                        visible=pick(radii > 0),
                        means2d=gradient_leaf([meta["means2d"]], lead + (n, 2)))
