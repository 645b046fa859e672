"""The viewer's camera: between the browser's (viser: camera-to-world rotation and position in OpenCV
axes, vertical field of view) and the rasterizer's `Camera` (OpenCV world-to-camera, pixel intrinsics)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..cameras import Camera, imavatar_world_to_camera


@dataclass(frozen=True)
class View:
    """A camera as the browser holds it: camera-to-world rotation as a quaternion (w, x, y, z),
    the position, the vertical field of view (radians); OpenCV axes (x right, y down, z forward)."""

    wxyz: tuple[float, float, float, float]
    position: tuple[float, float, float]
    fov: float


def quaternion_to_matrix(wxyz) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> rotation [3, 3]."""
    w, x, y, z = (float(v) for v in wxyz)
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / norm, x / norm, y / norm, z / norm
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def raster_camera(view: View, width: int, height: int, device: torch.device) -> Camera:
    """The rasterizer camera of a browser view at width x height pixels (square pixels, centred)."""
    rotation = quaternion_to_matrix(view.wxyz)  # camera-to-world
    world_to_camera = np.eye(4)
    world_to_camera[:3, :3] = rotation.T
    world_to_camera[:3, 3] = -rotation.T @ np.asarray(view.position, dtype=np.float64)
    focal = 0.5 * height / math.tan(0.5 * view.fov)
    return Camera(torch.tensor(world_to_camera, dtype=torch.float32, device=device), focal, focal,
                  0.5 * width, 0.5 * height, width, height)


@dataclass(frozen=True)
class StartView:
    """Where the browser's orbit camera starts: its position, the point it orbits, its up direction
    and vertical field of view (radians)."""

    position: tuple[float, float, float]
    look_at: tuple[float, float, float]
    up: tuple[float, float, float]
    fov: float


def stored_view(world_mat: torch.Tensor, intrinsics: torch.Tensor, centre: torch.Tensor) -> StartView:
    """The browser view of a stored IMavatar camera (world_mat [3, 4], normalised intrinsics [4]),
    orbiting the point of its viewing axis nearest to `centre` [3] (the head)."""
    world_to_camera = imavatar_world_to_camera(world_mat.double().cpu()).numpy()  # OpenCV [4, 4]
    rotation, translation = world_to_camera[:3, :3], world_to_camera[:3, 3]
    position = -rotation.T @ translation
    forward, up = rotation[2], -rotation[1]  # the camera's +z and -y in the world
    depth = float(forward @ (centre.double().cpu().numpy() - position))
    look_at = position + forward * max(depth, 1e-3)
    fov = 2.0 * math.atan(0.5 / abs(float(intrinsics[1])))
    return StartView(tuple(position.tolist()), tuple(look_at.tolist()), tuple(up.tolist()), fov)


def matrix_to_quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """Rotation [3, 3] -> unit quaternion (w, x, y, z) (from its largest component, for stability)."""
    r = rotation
    trace = float(np.trace(r))
    candidates = [trace, r[0, 0], r[1, 1], r[2, 2]]
    k = int(np.argmax(candidates))
    if k == 0:
        s = math.sqrt(1.0 + trace) * 2
        q = (0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s)
    elif k == 1:
        s = math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
        q = ((r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s)
    elif k == 2:
        s = math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
        q = ((r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s)
    else:
        s = math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
        q = ((r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s)
    return tuple(float(v) for v in q)


def start_as_view(start: StartView) -> View:
    """The View of the start camera: at its position, looking at its look_at, its up direction up."""
    position = np.asarray(start.position, dtype=np.float64)
    z = np.asarray(start.look_at, dtype=np.float64) - position
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(start.up, dtype=np.float64))  # right = forward x up
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return View(matrix_to_quaternion(np.stack([x, y, z], axis=1)), tuple(position.tolist()), start.fov)
