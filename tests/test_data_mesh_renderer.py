"""The synthetic-data mesh renderer: coverage, pixel-centre convention, z-buffer, anti-aliasing."""

import torch

from dynavatar.cameras import imavatar_camera, keypoints_to_pixels, pixels_to_keypoints
from dynavatar.flame.mesh import connected_components, outward_winding
from dynavatar.subject_generator.mesh_renderer import (box_downsample, interpolate, majority_downsample, rasterize,
                                                       render_mesh)

SQUARE = torch.tensor([[0, 1, 2], [0, 2, 3]])


def _square(x0, y0, x1, y1):
    return torch.tensor([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=torch.float32)


def test_square_covers_exactly_its_pixels():
    # Pixel i spans [i, i + 1] in the rasterizer convention: [2, 6] covers pixels 2..5.
    frags = rasterize(_square(2, 2, 6, 6), torch.ones(4), SQUARE, 8, 8)
    covered = frags.covered.float()
    assert covered.sum() == 16
    assert covered[2:6, 2:6].all()


def test_supersampling_gives_fractional_edge_coverage():
    s = 4
    frags = rasterize(_square(2.5, 2.5, 6.5, 6.5) * s, torch.ones(4), SQUARE, 8 * s, 8 * s)
    alpha = box_downsample(frags.covered.float(), s)
    assert torch.isclose(alpha.sum(), torch.tensor(16.0))
    assert alpha[2, 2] == 0.25 and alpha[2, 4] == 0.5 and alpha[4, 4] == 1.0


def test_nearest_triangle_wins_and_depth_is_perspective_correct():
    pixels = torch.cat([_square(0, 0, 8, 8), _square(2, 2, 6, 6)])
    depth = torch.tensor([5.0, 5, 5, 5, 2, 2, 2, 2])
    faces = torch.cat([SQUARE, SQUARE + 4])
    frags = rasterize(pixels, depth, faces, 8, 8)
    assert (frags.face_index[3:5, 3:5] >= 2).all() and (frags.face_index[0, :] < 2).all()
    # Same result whatever the drawing order.
    flipped = rasterize(pixels, depth, faces.flip(0), 8, 8)
    assert torch.equal(frags.depth, flipped.depth)
    # A plane tilted in depth: interpolated 1/z, so the depth at a sample is exact.
    tilted = rasterize(_square(0, 0, 8, 8), torch.tensor([1.0, 3.0, 3.0, 1.0]), SQUARE, 8, 8)
    u = torch.arange(8) + 0.5  # screen x runs linearly in 1/z between 1/1 and 1/3
    expected = 1.0 / (1.0 + (1.0 / 3.0 - 1.0) * u / 8.0)
    assert torch.allclose(tilted.depth[4], expected, atol=1e-5)


def test_interpolate_and_majority():
    frags = rasterize(_square(0, 0, 4, 4), torch.ones(4), SQUARE, 4, 4)
    colour = interpolate(torch.tensor([[0.0], [1.0], [1.0], [0.0]]), SQUARE, frags)  # x ramp
    assert torch.allclose(colour[1, :, 0], (torch.arange(4) + 0.5) / 4)
    labels = torch.tensor([[1, 1, 2, 2], [1, 3, 2, 2], [0, 0, 5, 5], [0, 4, 5, 6]])
    assert majority_downsample(labels, 2, 7).tolist() == [[1, 2], [0, 5]]


def test_vertex_lands_where_imavatar_keypoints_say():
    """A tiny square centred on a 3D point renders centred at the point's flame_keypoints pixel
    (IMavatar convention: pixel centres at integers), through the dataset camera."""
    world_mat = torch.tensor([[1.0, 0, 0, 0.03], [0, 1, 0, -0.05], [0, 0, 1, -4.0]])
    intrinsics = [-3.1, 3.0, 0.52, 0.47]
    res = 32
    camera = imavatar_camera(world_mat, intrinsics, res, res)
    centre = torch.tensor([0.21, 0.13, 0.1])
    half = 0.1
    corners = centre + torch.tensor([[-half, -half, 0], [half, -half, 0], [half, half, 0], [-half, half, 0]])
    image = render_mesh(camera, corners, SQUARE, lambda frags, front, normals: torch.ones(*frags.face_index.shape, 3),
                        supersample=8)
    alpha = image.alpha
    rows, cols = torch.meshgrid(torch.arange(res, dtype=torch.float32), torch.arange(res, dtype=torch.float32),
                                indexing="ij")
    centroid = torch.stack([(alpha * cols).sum(), (alpha * rows).sum()]) / alpha.sum()  # integer pixel centres
    keypoint = pixels_to_keypoints(camera.project(centre)[0], res, res)
    imavatar_pixel = (keypoint + 1.0) / 2.0 * res  # flame_keypoints -> pixels (centres at integers)
    assert torch.allclose(centroid, imavatar_pixel, atol=0.1), (centroid, imavatar_pixel)
    assert torch.allclose(keypoints_to_pixels(keypoint, res, res), camera.project(centre)[0], atol=1e-5)


def test_winding_is_decided_per_part():
    # Two tetrahedra, one wound inwards: each gets its own sign.
    tet_v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    tet_f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])  # outward
    vertices = torch.cat([tet_v, tet_v + 5])
    faces = torch.cat([tet_f, tet_f[:, [0, 2, 1]] + 4])
    assert connected_components(faces, 8).unique().numel() == 2
    assert outward_winding(vertices, faces).tolist() == [1.0] * 4 + [-1.0] * 4
