"""EWA projection of 3D Gaussians to the image: the maths every backend shares.

The constants are those of the 3DGS CUDA rasterizer (diff-gaussian-rasterization): a 0.3 px^2
low-pass added to the screen-space covariance, a 3-sigma square extent on the largest eigenvalue
(with its 0.1 floor under the square root), 16 px tiles, and the Jacobian evaluated at a mean
clamped to 1.3x the field of view. Pixel coordinates follow the 3DGS convention: pixel (i, j) has
its centre at (i + 0.5, j + 0.5) and u = fx * x / z + cx.

The world-to-camera transform is applied once, to the means and the quaternions (q_cam = q_R * q),
so every backend receives camera-space means, unit quaternions and scales (a backend that takes view
matrices, gsplat, transforms them itself where no gradient has to reach the camera). The torch backend works
with the covariance factor L = R(q) diag(s) (Sigma = L L^T) and never forms the 3x3 matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Camera
from ..runtime import constant

LOW_PASS = 0.3  # px^2 added to the diagonal of every screen-space covariance
EXTENT_SIGMAS = 3.0  # screen-space radius = ceil(3 * sqrt(largest eigenvalue))
EIGEN_FLOOR = 0.1  # the 3DGS kernel's floor under the eigenvalue square root
TILE_SIZE = 16  # px, square tiles
FOV_MARGIN = 0.3  # means are clamped to the frustum widened by 30% for the Jacobian


# R(q) of a unit quaternion (w, x, y, z) is linear in the products q_i q_j: row k of this [16, 9]
# matrix's transpose holds the coefficients of R.flatten()[k] on q q^T.flatten().
_ROTATION_TERMS = (
    {(0, 0): 1, (1, 1): 1, (2, 2): -1, (3, 3): -1},  # R00 = ww + xx - yy - zz
    {(1, 2): 2, (0, 3): -2},  # R01 = 2 (xy - wz)
    {(1, 3): 2, (0, 2): 2},  # R02 = 2 (xz + wy)
    {(1, 2): 2, (0, 3): 2},  # R10 = 2 (xy + wz)
    {(0, 0): 1, (1, 1): -1, (2, 2): 1, (3, 3): -1},  # R11 = ww - xx + yy - zz
    {(2, 3): 2, (0, 1): -2},  # R12 = 2 (yz - wx)
    {(1, 3): 2, (0, 2): -2},  # R20 = 2 (xz - wy)
    {(2, 3): 2, (0, 1): 2},  # R21 = 2 (yz + wx)
    {(0, 0): 1, (1, 1): -1, (2, 2): -1, (3, 3): 1},  # R22 = ww - xx - yy + zz
)
_ROTATION_BASIS = tuple(tuple(float(terms.get((i, j), 0)) for terms in _ROTATION_TERMS)
                        for i in range(4) for j in range(4))


def quaternion_to_rotation(quats: Tensor) -> Tensor:
    """Quaternions [N, 4] (w, x, y, z; any norm) -> rotation matrices [N, 3, 3].

    R = A vec(q q^T) / |q|^2: a handful of kernels instead of one per matrix entry.
    """
    outer = (quats[:, :, None] * quats[:, None, :]).reshape(-1, 16)  # [N, 16]
    basis = constant(_ROTATION_BASIS, quats.dtype, quats.device)  # [16, 9]
    norm2 = (quats * quats).sum(-1, keepdim=True).clamp_min(1e-24)  # [N, 1]
    return ((outer @ basis) / norm2).reshape(-1, 3, 3)


def covariance_factor(quats: Tensor, scales: Tensor) -> Tensor:
    """L = R(q) diag(s) [N, 3, 3], so that the covariance is L L^T."""
    return quaternion_to_rotation(quats) * scales[..., None, :]


# Shepperd's four candidates (row i = 4 q_i q) are affine in the rotation's entries: each of the
# 16 candidate entries is a constant plus a +-1 combination of r00..r22 (flattened row-major).
_SHEPPERD_CONSTANT = (1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0)
_SHEPPERD_TERMS = (
    {0: 1, 4: 1, 8: 1}, {7: 1, 5: -1}, {2: 1, 6: -1}, {3: 1, 1: -1},  # 4 w q
    {7: 1, 5: -1}, {0: 1, 4: -1, 8: -1}, {1: 1, 3: 1}, {2: 1, 6: 1},  # 4 x q
    {2: 1, 6: -1}, {1: 1, 3: 1}, {0: -1, 4: 1, 8: -1}, {5: 1, 7: 1},  # 4 y q
    {3: 1, 1: -1}, {2: 1, 6: 1}, {5: 1, 7: 1}, {0: -1, 4: -1, 8: 1},  # 4 z q
)
_SHEPPERD_MATRIX = tuple(tuple(float(t.get(k, 0)) for k in range(9)) for t in _SHEPPERD_TERMS)  # [16, 9]
# L(p) [4, 4] with L(p) q = p * q is linear in p = (w, x, y, z): entry (i, j) = sign * p[index].
_LEFT_ENTRIES = ((0, 1), (1, -1), (2, -1), (3, -1), (1, 1), (0, 1), (3, -1), (2, 1),
                 (2, 1), (3, 1), (0, 1), (1, -1), (3, 1), (2, -1), (1, 1), (0, 1))
_LEFT_MATRIX = tuple(tuple(float(sign) if index == k else 0.0 for (index, sign) in _LEFT_ENTRIES)
                     for k in range(4))  # [4, 16]


def rotation_to_quaternion(rotation: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] (w, x, y, z), differentiable, no host sync.

    Of the four standard expressions (each 4 q_i q for one component i), the one with the largest
    q_i is used (Shepperd's method), selected on the device. All four come from one matrix product.
    """
    flat = rotation.reshape(*rotation.shape[:-2], 9)
    terms = constant(_SHEPPERD_MATRIX, flat.dtype, flat.device)
    offset = constant(_SHEPPERD_CONSTANT, flat.dtype, flat.device)
    candidates = (flat @ terms.T + offset).reshape(*rotation.shape[:-2], 4, 4)  # row i = 4 q_i q
    best = candidates.diagonal(dim1=-2, dim2=-1).argmax(dim=-1)  # [...]
    q = torch.take_along_dim(candidates, best[..., None, None].expand(*best.shape, 1, 4), dim=-2)[..., 0, :]
    return q / q.norm(dim=-1, keepdim=True)


def quaternion_left_matrix(p: Tensor) -> Tensor:
    """[..., 4] -> [..., 4, 4] matrices L(p) with L(p) q = p * q (Hamilton product), so R(p * q) = R(p) R(q)."""
    return (p @ constant(_LEFT_MATRIX, p.dtype, p.device)).reshape(*p.shape[:-1], 4, 4)


def to_camera(means: Tensor, quats: Tensor, world_to_camera: Tensor) -> tuple[Tensor, Tensor]:
    """World means [..., N, 3] and quaternions [..., N, 4] -> camera-space means and unit quaternions
    (OpenCV axes), for world-to-camera matrices [..., 4, 4] (one per leading index, e.g. per frame).

    Differentiable in `world_to_camera` (whose 3x3 part must be a rotation), so a refined camera
    receives gradients whatever backend rasterizes afterwards.
    """
    w2c = world_to_camera.to(means)
    rotation, translation = w2c[..., :3, :3], w2c[..., None, :3, 3]
    means_cam = means @ rotation.transpose(-1, -2) + translation
    unit = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    quats_cam = unit @ quaternion_left_matrix(rotation_to_quaternion(rotation)).transpose(-1, -2)
    return means_cam, quats_cam


@dataclass
class ScreenGaussians:
    """Gaussians projected to one camera. Entries with radius 0 are culled."""

    means2d: Tensor  # [N, 2] pixel coordinates (u, v)
    conics: Tensor  # [N, 3] inverse screen covariance (a, b, c) of [[a, b], [b, c]]
    depths: Tensor  # [N] camera z
    radii: Tensor  # [N] int32, 0 = culled
    tile_min: Tensor  # [N, 2] long, first tile (x, y) touched
    tile_max: Tensor  # [N, 2] long, one past the last tile (x, y) touched


def tile_grid(camera: Camera) -> tuple[int, int]:
    """Number of tiles (along x, along y) covering the image."""
    return (camera.width + TILE_SIZE - 1) // TILE_SIZE, (camera.height + TILE_SIZE - 1) // TILE_SIZE


def project(means_cam: Tensor, factor_cam: Tensor, camera: Camera) -> ScreenGaussians:
    """EWA projection of camera-space Gaussians (means [N, 3], covariance factors [N, 3, 3]),
    culling those outside (near, far) or off-screen."""
    tx, ty, tz = means_cam.unbind(-1)  # [N] each
    in_depth = (tz > camera.near) & (tz < camera.far)
    z = torch.where(in_depth, tz, torch.ones_like(tz))  # culled ones get a harmless z (no inf in grads)
    fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
    width, height = camera.width, camera.height
    u = fx * tx / z + cx
    v = fy * ty / z + cy

    # Jacobian at the mean clamped to the widened frustum (1.3 x tan(fov/2) for a centred principal
    # point; the bounds follow an off-centre principal point, as gsplat does).
    margin_x, margin_y = FOV_MARGIN * 0.5 * width / fx, FOV_MARGIN * 0.5 * height / fy
    xz = (tx / z).clamp(-(cx / fx + margin_x), (width - cx) / fx + margin_x)
    yz = (ty / z).clamp(-(cy / fy + margin_y), (height - cy) / fy + margin_y)
    # J = [[fx/z, 0, -fx*xz/z], [0, fy/z, -fy*yz/z]]; rows of T = J @ L:
    f0, f1, f2 = factor_cam[:, 0, :], factor_cam[:, 1, :], factor_cam[:, 2, :]  # [N, 3] each
    t0 = (fx / z)[:, None] * (f0 - xz[:, None] * f2)
    t1 = (fy / z)[:, None] * (f1 - yz[:, None] * f2)
    a = (t0 * t0).sum(-1) + LOW_PASS
    b = (t0 * t1).sum(-1)
    c = (t1 * t1).sum(-1) + LOW_PASS
    det = a * c - b * b
    det_ok = det > 0
    inv_det = 1.0 / torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c * inv_det, -b * inv_det, a * inv_det], dim=-1)

    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt((mid * mid - det).clamp_min(EIGEN_FLOOR))
        radius = torch.ceil(EXTENT_SIGMAS * torch.sqrt(lam))
        grid_x, grid_y = tile_grid(camera)
        # The 3DGS kernel bins in pixel coordinates whose centres are integers (u - 0.5).
        px, py = u - 0.5, v - 0.5
        tile_min = torch.stack([
            torch.floor((px - radius) / TILE_SIZE).clamp(0, grid_x),
            torch.floor((py - radius) / TILE_SIZE).clamp(0, grid_y)], dim=-1).long()
        tile_max = torch.stack([
            torch.floor((px + radius + TILE_SIZE - 1) / TILE_SIZE).clamp(0, grid_x),
            torch.floor((py + radius + TILE_SIZE - 1) / TILE_SIZE).clamp(0, grid_y)], dim=-1).long()
        touches = ((tile_max - tile_min).prod(-1) > 0) & torch.isfinite(radius)
        valid = in_depth & det_ok & touches
        radii = torch.where(valid, radius, torch.zeros_like(radius)).to(torch.int32)
    return ScreenGaussians(torch.stack([u, v], dim=-1), conics, tz, radii, tile_min, tile_max)
