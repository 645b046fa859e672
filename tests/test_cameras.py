"""The one camera conversion, checked against the paper's recipe written out literally."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynavatar.cameras import imavatar_camera, imavatar_cameras, keypoints_to_pixels, pixels_to_keypoints
from dynavatar.flame.lbs import axis_angle_to_matrix


def paper_recipe(world_mat: np.ndarray) -> np.ndarray:
    """docs/DATA_FORMAT.md: P = [world_mat; 0 0 0 1], c2w = inv(P), c2w[:3, 1:3] *= -1, w2c = inv(c2w)."""
    p = np.vstack([world_mat, [0.0, 0.0, 0.0, 1.0]])
    c2w = np.linalg.inv(p)
    c2w[:3, 1:3] *= -1
    return np.linalg.inv(c2w)


def test_world_to_camera_equals_the_papers_recipe_for_a_general_pose():
    rotation = axis_angle_to_matrix(torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64))
    world_mat = torch.cat([rotation, torch.tensor([[0.1], [-0.2], [-4.0]], dtype=torch.float64)], dim=1)
    camera = imavatar_camera(world_mat, [-3.0, 3.0, 0.5, 0.5], 512, 512)
    np.testing.assert_allclose(camera.world_to_camera.numpy(), paper_recipe(world_mat.numpy()), atol=1e-12)


def test_pixel_intrinsics_of_the_documented_example():
    # docs/DATA_FORMAT.md: [-3.0072, 2.9471, 0.5106, 0.4946] at 512 px is fx 1539.7, fy 1508.9, cx 261.4, cy 253.2,
    # and the rasterizer's pixel centres add half a pixel.
    camera = imavatar_camera(torch.eye(4)[:3], [-3.0072, 2.9471, 0.5106, 0.4946], 512, 512)
    assert camera.fx == pytest.approx(1539.7, abs=0.05) and camera.fy == pytest.approx(1508.9, abs=0.05)
    assert camera.cx == pytest.approx(261.4 + 0.5, abs=0.05) and camera.cy == pytest.approx(253.2 + 0.5, abs=0.05)


def test_a_point_in_front_of_the_imavatar_camera_projects_like_imavatar():
    """IMavatar casts the ray of pixel (i, j) through (i, j): u = -fx_n W x / z + cx_n W with z < 0."""
    intr = [-3.0, 2.9, 0.52, 0.47]
    world_mat = torch.tensor([[1.0, 0, 0, 0.05], [0, 1, 0, -0.02], [0, 0, 1, -4.0]], dtype=torch.float64)
    point = torch.tensor([0.2, 0.3, 0.1], dtype=torch.float64)
    camera = imavatar_camera(world_mat, intr, 64, 48)
    pixel, depth = camera.project(point)
    x, y, z = (world_mat[:, :3] @ point + world_mat[:, 3]).tolist()  # IMavatar camera space, z < 0 in front
    u_imavatar = intr[0] * 64 * x / z + intr[2] * 64
    v_imavatar = intr[1] * 48 * y / z + intr[3] * 48
    assert depth.item() == pytest.approx(-z)
    assert pixel[0].item() - 0.5 == pytest.approx(u_imavatar) and pixel[1].item() - 0.5 == pytest.approx(v_imavatar)
    keypoint = pixels_to_keypoints(pixel, 64, 48)
    assert keypoint.tolist() == pytest.approx([u_imavatar / 64 * 2 - 1, v_imavatar / 48 * 2 - 1])
    assert torch.allclose(keypoints_to_pixels(keypoint, 64, 48), pixel)


def test_camera_translation_receives_gradients():
    world_mat = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -4.0]], requires_grad=True)
    pixel, _ = imavatar_camera(world_mat, [-3.0, 3.0, 0.5, 0.5], 64, 64).project(torch.tensor([0.1, 0.1, 0.0]))
    pixel.sum().backward()
    assert world_mat.grad[:, 3].abs().sum() > 0


def test_a_batch_of_cameras_equals_the_cameras_of_its_frames():
    gen = torch.Generator().manual_seed(2)
    rotations = axis_angle_to_matrix(torch.randn(3, 3, generator=gen) * 0.3)
    translations = torch.randn(3, 3, 1, generator=gen) - torch.tensor([0.0, 0.0, 4.0])[:, None]
    world_mats = torch.cat([rotations, translations], 2)
    intrinsics = torch.tensor([[-3.0, 3.0, 0.5, 0.5], [-2.9, 3.1, 0.49, 0.52], [-3.0072, 2.9471, 0.5106, 0.4946]])
    batch = imavatar_cameras(world_mats, intrinsics, 64, 48)
    assert len(batch) == 3
    for b, camera in enumerate(batch):
        single = imavatar_camera(world_mats[b], intrinsics[b], 64, 48)
        assert torch.equal(camera.world_to_camera, single.world_to_camera)
        assert (camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height) == \
            (single.fx, single.fy, single.cx, single.cy, single.width, single.height)
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        imavatar_cameras(world_mats, intrinsics[0], 64, 48)
