"""The distances of test frames to the training frames (flame/novelty.py): angles and distances
against hand-made frames, the order of the camera's, global and neck rotations, the nearest training
frame chosen per quantity, the rows they join, and the summary's correlations."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from dynavatar.flame.novelty import CHUNK, NOVELTY_COLUMNS, frame_novelty, novelty_summary, with_novelty
from dynavatar.flame.lbs import axis_angle_to_matrix


def _frames(head_yaw_deg, neck_pitch_deg=None, jaw_deg=None, expressions=None, camera_yaw_deg=None, sub_dir="v"):
    """Frames whose global rotation turns about y, neck about x, jaw about x, camera about y (degrees)."""
    n = len(head_yaw_deg)
    poses = torch.zeros(n, 15)
    poses[:, 1] = torch.deg2rad(torch.tensor(head_yaw_deg, dtype=torch.float32))
    if neck_pitch_deg is not None:
        poses[:, 3] = torch.deg2rad(torch.tensor(neck_pitch_deg, dtype=torch.float32))
    if jaw_deg is not None:
        poses[:, 6] = torch.deg2rad(torch.tensor(jaw_deg, dtype=torch.float32))
    world_mats = torch.zeros(n, 3, 4)
    camera = torch.zeros(n, 3)
    if camera_yaw_deg is not None:
        camera[:, 1] = torch.deg2rad(torch.tensor(camera_yaw_deg, dtype=torch.float32))
    world_mats[:, :3, :3] = axis_angle_to_matrix(camera)
    world_mats[:, 2, 3] = -4.0
    expressions = torch.zeros(n, 50) if expressions is None else torch.tensor(expressions, dtype=torch.float32)
    frames = [SimpleNamespace(sub_dir=sub_dir, frame_id=i + 1) for i in range(n)]
    return SimpleNamespace(flame_poses=poses, world_mats=world_mats, expressions=expressions, frames=frames)


def test_head_view_angle_to_the_nearest_training_frame():
    train = _frames([-20.0, 0.0, 20.0])
    test = _frames([5.0, 30.0, -20.0])
    head = frame_novelty(test, train)["head_novelty_deg"]
    assert head.tolist() == pytest.approx([5.0, 10.0, 0.0], abs=1e-4)


def test_a_turn_and_a_tilt_each_seen_alone_make_a_new_view_together():
    train = _frames([10.0, 0.0], neck_pitch_deg=[0.0, 10.0])
    test = _frames([10.0], neck_pitch_deg=[10.0])
    head = float(frame_novelty(test, train)["head_novelty_deg"][0])
    # Against the turn alone, the tilt is left: 10 degrees; against the tilt alone, the turn.
    assert head == pytest.approx(10.0, abs=0.01)


def test_the_camera_turn_counts_as_the_head_turn_it_shows():
    train = _frames([0.0])
    turned_camera = _frames([0.0], camera_yaw_deg=[15.0])
    undone = _frames([-15.0], camera_yaw_deg=[15.0])  # the head turned back as far as the camera turned
    assert float(frame_novelty(turned_camera, train)["head_novelty_deg"][0]) == pytest.approx(15.0, abs=1e-4)
    # (float32 matrices: an angle near zero comes out within a few hundredths of a degree)
    assert float(frame_novelty(undone, train)["head_novelty_deg"][0]) == pytest.approx(0.0, abs=0.05)


def test_jaw_and_expression_distances_take_their_own_nearest_frame():
    expressions = [[0.0] * 50, [3.0, 4.0] + [0.0] * 48]
    train = _frames([0.0, 30.0], jaw_deg=[0.0, 20.0], expressions=expressions)
    test = _frames([30.0], jaw_deg=[2.0], expressions=[[0.0, 1.0] + [0.0] * 48])
    distances = frame_novelty(test, train)
    assert float(distances["head_novelty_deg"][0]) == pytest.approx(0.0, abs=0.05)  # frame 2
    assert float(distances["jaw_novelty_deg"][0]) == pytest.approx(2.0, abs=1e-4)  # frame 1
    assert float(distances["expression_novelty"][0]) == pytest.approx(1.0, abs=1e-6)  # frame 1


def matrix_to_axis_angle(matrix):
    """[1, 3, 3] rotation (angle below 180 deg) -> [1, 3] axis-angle."""
    angle = torch.arccos(((matrix[0].trace() - 1.0) / 2.0).clamp(-1.0, 1.0))
    skew = torch.stack([matrix[0, 2, 1] - matrix[0, 1, 2], matrix[0, 0, 2] - matrix[0, 2, 0],
                        matrix[0, 1, 0] - matrix[0, 0, 1]])
    return (skew / (2.0 * torch.sin(angle)) * angle)[None]


def _axis_angle(axis, degrees):
    vector = torch.zeros(1, 3, dtype=torch.float64)
    vector[0, "xyz".index(axis)] = math.radians(degrees)
    return vector


@pytest.mark.parametrize("order", ["camera, global, neck", "global, neck"])
def test_the_head_view_composes_camera_global_and_neck_in_that_order(order):
    """A training frame seen by a turned camera, its head turned by the global and the neck joint about
    other axes (rotations that do not commute), against test frames whose one global rotation is the
    composition in the right order (distance 0) or in another (not 0)."""
    rotation = {name: axis_angle_to_matrix(_axis_angle(axis, degrees))
                for name, axis, degrees in (("camera", "y", 90.0), ("global", "x", 20.0), ("neck", "z", 30.0))}
    names = order.split(", ")
    train = _frames([0.0])
    train.flame_poses = torch.zeros(1, 15, dtype=torch.float64)
    train.flame_poses[:, 0:3], train.flame_poses[:, 3:6] = _axis_angle("x", 20.0), _axis_angle("z", 30.0)
    if "camera" in names:
        train.world_mats = train.world_mats.double()
        train.world_mats[:, :3, :3] = rotation["camera"]

    def composed(sequence):
        result = torch.eye(3, dtype=torch.float64)[None]
        for name in sequence:
            result = result @ rotation[name]
        test = _frames([0.0])
        test.flame_poses = torch.zeros(1, 15, dtype=torch.float64)
        test.flame_poses[:, 0:3] = matrix_to_axis_angle(result)
        return float(frame_novelty(test, train)["head_novelty_deg"][0])

    assert composed(names) == pytest.approx(0.0, abs=1e-3)
    assert composed(list(reversed(names))) > 5.0


def test_rows_get_their_own_frames_distances():
    train = _frames([0.0])
    test = _frames([0.0, 4.0], sub_dir="test")
    rows = [{"sub_dir": "test", "frame_id": 1}, {"sub_dir": "test", "frame_id": 2}]
    with_novelty(rows, test, train)
    assert set(rows[1]) >= set(NOVELTY_COLUMNS)
    assert [r["head_novelty_deg"] for r in rows] == pytest.approx([0.0, 4.0], abs=1e-3)
    with pytest.raises(ValueError, match="row 0 is frame 2"):
        with_novelty(list(reversed(rows)), test, train)
    with pytest.raises(ValueError, match="1 rows for 2 frames"):
        with_novelty(rows[:1], test, train)


def test_summary_correlates_the_distances_with_psnr():
    rows = [{"head_novelty_deg": d, "jaw_novelty_deg": 1.0, "expression_novelty": 2.0 * d,
             "psnr": 30.0 - d, "psnr_unopened": 33.0 - 0.5 * d} for d in (0.0, 2.0, 5.0, 9.0)]
    summary = novelty_summary(rows)
    head = summary["head_novelty_deg"]
    assert head["mean"] == pytest.approx(4.0) and head["max"] == pytest.approx(9.0)
    assert head["correlation_with_psnr"] == pytest.approx(-1.0)
    assert summary["expression_novelty"]["correlation_with_psnr_unopened"] == pytest.approx(-1.0)
    # A distance that does not vary has no correlation (None, not NaN); a frame of infinite PSNR (a
    # rendering equal to its ground truth) is left out of the correlations, which stay defined.
    assert summary["jaw_novelty_deg"]["correlation_with_psnr"] is None
    rows[0]["psnr"] = math.inf
    summary = novelty_summary(rows)
    assert summary["head_novelty_deg"]["correlation_with_psnr"] == pytest.approx(-1.0)
    assert not any(isinstance(v, float) and math.isnan(v) for entry in summary.values() for v in entry.values())


def test_long_videos_are_compared_in_chunks_with_the_same_result():
    generator = torch.Generator().manual_seed(0)
    train = _frames(torch.empty(700).uniform_(-30, 30, generator=generator).tolist(),
                    expressions=torch.randn(700, 50, generator=generator).tolist())
    test = _frames(torch.empty(600).uniform_(-40, 40, generator=generator).tolist(),
                   expressions=torch.randn(600, 50, generator=generator).tolist())
    assert len(test.frames) > CHUNK
    distances = frame_novelty(test, train)
    yaw_test, yaw_train = test.flame_poses[:, 1].double(), train.flame_poses[:, 1].double()
    expected = torch.rad2deg((yaw_test[:, None] - yaw_train[None]).abs().amin(dim=1))  # one axis: angles subtract
    assert torch.allclose(distances["head_novelty_deg"], expected, atol=0.05)
    brute = ((test.expressions[:, None].double() - train.expressions[None].double()) ** 2).sum(-1).sqrt().amin(dim=1)
    assert torch.allclose(distances["expression_novelty"], brute, atol=1e-9)
