"""Cameras: the one conversion from the stored IMavatar camera to an OpenCV pinhole camera.

IMavatar stores a world-to-camera matrix whose camera looks down -z (y up), together with
intrinsics normalised by the image size and fx negated (the NerFace convention). Rasterizers want
OpenCV axes (x right, y down, z forward) and pixel intrinsics whose pixel (i, j) has its centre at
(i + 0.5, j + 0.5), whereas IMavatar's rays (and its `flame_keypoints`) put that centre at (i, j).
Everything that needs a camera calls `imavatar_camera`, so the convention lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .runtime import constant, data_constant

# Offset from IMavatar's pixel centres (at integers) to the rasterizers' (at half-integers).
PIXEL_CENTRE_OFFSET = 0.5
DEFAULT_NEAR = 0.01
DEFAULT_FAR = 100.0


@dataclass(frozen=True)
class Camera:
    """A pinhole camera in OpenCV axes, as every rasterizer backend takes it.

    `world_to_camera` may require grad (per-frame camera refinement); the intrinsics are plain
    floats in pixels, with the pixel-centre convention of the 3DGS rasterizers.
    """

    world_to_camera: torch.Tensor  # [4, 4]
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    near: float = DEFAULT_NEAR
    far: float = DEFAULT_FAR

    def to_camera_space(self, points: torch.Tensor) -> torch.Tensor:
        """World points [..., 3] -> camera-space points [..., 3] (z forward)."""
        rotation = self.world_to_camera[:3, :3].to(points)
        translation = self.world_to_camera[:3, 3].to(points)
        return points @ rotation.T + translation

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World points [..., 3] -> (pixel coordinates [..., 2] in rasterizer convention, depth [...])."""
        cam = self.to_camera_space(points)
        z = cam[..., 2]
        u = self.fx * cam[..., 0] / z + self.cx
        v = self.fy * cam[..., 1] / z + self.cy
        return torch.stack([u, v], dim=-1), z


# Flip of the y and z axes: IMavatar camera (y up, z backward) -> OpenCV camera (y down, z forward).
_AXIS_FLIP = (1.0, -1.0, -1.0)


def imavatar_world_to_camera(world_mat: torch.Tensor) -> torch.Tensor:
    """Stored IMavatar `world_mat` [..., 3, 4] -> OpenCV world-to-camera [..., 4, 4].

    The paper's loader computes inv(flip_yz_columns(inv([world_mat; 0 0 0 1]))), which equals
    diag(1, -1, -1) @ [world_mat; 0 0 0 1] for any invertible matrix; that is what we compute
    (differentiably, so a refined camera translation receives gradients).
    """
    flip = constant(_AXIS_FLIP, world_mat.dtype, world_mat.device)
    top = world_mat[..., :3, :4] * flip[:, None]
    bottom = constant((0.0, 0.0, 0.0, 1.0), world_mat.dtype, world_mat.device).expand(*world_mat.shape[:-2], 1, 4)
    return torch.cat([top, bottom], dim=-2)


def pixel_intrinsics(intrinsics: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Normalised IMavatar intrinsics [..., 4] ([fx/W (negated), fy/H, cx/W, cy/H]) -> rasterizer
    (fx, fy, cx, cy) in pixels [..., 4]."""
    scale = data_constant((-float(width), float(height), float(width), float(height)), intrinsics.dtype,
                          intrinsics.device)
    offset = constant((0.0, 0.0, PIXEL_CENTRE_OFFSET, PIXEL_CENTRE_OFFSET), intrinsics.dtype, intrinsics.device)
    return intrinsics * scale + offset


def imavatar_pixel_intrinsics(intrinsics: Sequence[float] | torch.Tensor, width: int, height: int
                              ) -> tuple[float, float, float, float]:
    """Normalised IMavatar intrinsics [fx/W (negated), fy/H, cx/W, cy/H] -> rasterizer (fx, fy, cx, cy) in pixels."""
    values = [float(v) for v in (intrinsics.tolist() if isinstance(intrinsics, torch.Tensor) else intrinsics)]
    if len(values) != 4:
        raise ValueError(f"intrinsics must hold 4 numbers [fx/W, fy/H, cx/W, cy/H], got {len(values)}")
    fx, fy, cx, cy = pixel_intrinsics(torch.tensor(values, dtype=torch.float64), width, height).tolist()
    return fx, fy, cx, cy


def imavatar_camera(world_mat: torch.Tensor, intrinsics: Sequence[float] | torch.Tensor, width: int, height: int,
                    near: float = DEFAULT_NEAR, far: float = DEFAULT_FAR) -> Camera:
    """The one conversion of a stored IMavatar camera (world_mat [3, 4], normalised intrinsics [4])
    into the OpenCV camera handed to the rasterizer, at an image of `width` x `height` pixels."""
    fx, fy, cx, cy = imavatar_pixel_intrinsics(intrinsics, width, height)
    return Camera(imavatar_world_to_camera(world_mat), fx, fy, cx, cy, int(width), int(height), near, far)


def imavatar_cameras(world_mats: torch.Tensor, intrinsics: torch.Tensor, width: int, height: int,
                     near: float = DEFAULT_NEAR, far: float = DEFAULT_FAR) -> list[Camera]:
    """`imavatar_camera` of every frame of a batch (world_mats [B, 3, 4], intrinsics [B, 4] on the
    host), converted together: a training step's cameras cost the host a few operations, not a few
    per frame."""
    if intrinsics.dim() != 2 or intrinsics.shape[-1] != 4:
        raise ValueError(f"intrinsics must be [B, 4] [fx/W, fy/H, cx/W, cy/H], got {tuple(intrinsics.shape)}")
    views = imavatar_world_to_camera(world_mats)  # [B, 4, 4]
    pixels = pixel_intrinsics(intrinsics.detach().to("cpu", torch.float64), width, height).tolist()
    return [Camera(view, fx, fy, cx, cy, int(width), int(height), near, far)
            for view, (fx, fy, cx, cy) in zip(views.unbind(0), pixels)]


def pixels_to_keypoints(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Rasterizer-convention pixel coordinates [..., 2] -> IMavatar `flame_keypoints` ([-1, 1], pixel centres at integers)."""
    size = torch.tensor([width, height], dtype=pixels.dtype, device=pixels.device)
    return (pixels - PIXEL_CENTRE_OFFSET) / size * 2.0 - 1.0


def keypoints_to_pixels(keypoints: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Inverse of `pixels_to_keypoints`."""
    size = torch.tensor([width, height], dtype=keypoints.dtype, device=keypoints.device)
    return (keypoints + 1.0) / 2.0 * size + PIXEL_CENTRE_OFFSET
