"""How far each test frame lies from the frames the avatar was trained on, beside its metrics.

A test frame whose head view, jaw or expression no training frame came near is where an avatar is
expected to lose; these distances say which frames those are, and their correlation with PSNR how
closely a test video's frame-to-frame losses follow them. Each is the distance to the nearest
training frame in that quantity alone (the nearest head view and the nearest expression can be
different frames):

- head_novelty_deg: the angle from the frame's head orientation as its camera sees it (the camera's
  rotation, then FLAME's global and neck rotations) to the nearest training frame's. A pitch and a
  yaw each within the training range can still make a view that no training frame shows.
- jaw_novelty_deg: the angle from the frame's jaw rotation to the nearest training frame's.
- expression_novelty: the Euclidean distance from the frame's expression coefficients to the
  nearest training frame's, in the coefficients' own units (FLAME scales its expression
  components to about unit variance over its training scans), over the components both hold.

The tracked inputs are compared (those of the dataset's flame_params.json), not the ones the test
protocol fits: the distances describe the data, whatever the avatar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Protocol, Sequence

import numpy as np
import torch

from .lbs import GLOBAL, JAW, NECK, axis_angle_to_matrix

NOVELTY_COLUMNS = ("head_novelty_deg", "jaw_novelty_deg", "expression_novelty")
CORRELATED_WITH = ("psnr", "psnr_unopened")  # the per-frame metrics the summary correlates them with
CHUNK = 256  # test frames compared with all training frames at a time


class Tracked(Protocol):
    """Frames' tracked inputs, as a dataset (`FaceDataset`) or a tracking run holds them."""

    world_mats: torch.Tensor  # [N, 3, 4] world to camera
    flame_poses: torch.Tensor  # [N, 15]
    expressions: torch.Tensor  # [N, E]


class FrameRecord(Protocol):
    sub_dir: str
    frame_id: Hashable


class TrackedVideo(Tracked, Protocol):
    """`Tracked` with the record of each frame (a `FaceDataset`)."""

    frames: Sequence[FrameRecord]


@dataclass
class TrackedFrames:
    """`Tracked` from tensors (e.g. a preprocessing run's fit)."""

    world_mats: torch.Tensor  # [N, 3, 4]
    flame_poses: torch.Tensor  # [N, 15]
    expressions: torch.Tensor  # [N, E]


def head_rotations(flame_poses: torch.Tensor, world_mats: torch.Tensor | None = None) -> torch.Tensor:
    """The head's orientation [N, 3, 3]: FLAME's global then neck rotation (flame_poses [N, 15]), seen
    from each frame's camera when world_mats [N, 3, 4] (world to camera) are given."""
    rotations = axis_angle_to_matrix(flame_poses[:, GLOBAL]) @ axis_angle_to_matrix(flame_poses[:, NECK])
    return rotations if world_mats is None else world_mats[:, :3, :3] @ rotations


def _in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """fn over CHUNK rows at a time, concatenated: a [CHUNK, M] table of long videos stays small."""
    return torch.cat([fn(rows[start:start + CHUNK]) for start in range(0, len(rows), CHUNK)])


def nearest_angle_deg(rotations: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """For each rotation [T, 3, 3], the angle in degrees to the nearest of `reference` [M, 3, 3] [T]."""
    # trace(A^T B) = 1 + 2 cos(angle): the nearest has the largest
    traces = _in_chunks(lambda part: torch.einsum("tij,mij->tm", part, reference).amax(dim=1), rotations)
    return torch.rad2deg(torch.arccos(((traces - 1.0) / 2.0).clamp(-1.0, 1.0)))


def frame_novelty(test: Tracked, train: Tracked) -> dict[str, torch.Tensor]:
    """NOVELTY_COLUMNS -> [T] distances of each of `test`'s frames to the frames of `train`."""
    test_poses, train_poses = test.flame_poses.double(), train.flame_poses.double()
    n_exp = min(test.expressions.shape[1], train.expressions.shape[1])
    train_expressions = train.expressions[:, :n_exp].double()
    return {
        "head_novelty_deg": nearest_angle_deg(head_rotations(test_poses, test.world_mats.double()),
                                              head_rotations(train_poses, train.world_mats.double())),
        "jaw_novelty_deg": nearest_angle_deg(axis_angle_to_matrix(test_poses[:, JAW]),
                                             axis_angle_to_matrix(train_poses[:, JAW])),
        "expression_novelty": _in_chunks(lambda part: torch.cdist(part, train_expressions).amin(dim=1),
                                         test.expressions[:, :n_exp].double()),
    }


def with_novelty(rows: list[dict[str, Any]], test: TrackedVideo, train: Tracked) -> None:
    """Add NOVELTY_COLUMNS to `rows`, one metrics row per frame of `test` in its order (each row's
    `sub_dir` and `frame_id` are checked against the frame's record)."""
    if len(rows) != len(test.frames):
        raise ValueError(f"{len(rows)} rows for {len(test.frames)} frames")
    for index, (row, record) in enumerate(zip(rows, test.frames)):  # every row checked before any changes
        if (row["sub_dir"], row["frame_id"]) != (record.sub_dir, record.frame_id):
            raise ValueError(f"row {index} is frame {row['frame_id']} of {row['sub_dir']}, "
                             f"not {record.frame_id} of {record.sub_dir}")
    distances = frame_novelty(test, train)
    for index, row in enumerate(rows):
        row.update({name: float(values[index]) for name, values in distances.items()})


def _correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's correlation over the frames where both are finite (a rendering equal to its ground
    truth scores an infinite PSNR); None where it is undefined (fewer than 3 such frames, or a
    constant)."""
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def novelty_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """metrics.json's "novelty": for each column, its mean and largest value over the rows and its
    correlation with each of CORRELATED_WITH (negative: the farther frames score lower)."""
    summary: dict[str, Any] = {}
    for name in NOVELTY_COLUMNS:
        values = np.array([r[name] for r in rows], dtype=np.float64)
        summary[name] = {"mean": float(values.mean()), "max": float(values.max()),
                         **{f"correlation_with_{metric}": _correlation(values, np.array([r[metric] for r in rows]))
                            for metric in CORRELATED_WITH}}
    return summary


def novelty_line(summary: dict[str, Any]) -> str:
    """The log's words for `novelty_summary`: one line, so the head's and the expression's correlation
    with the PSNR without the opening only (metrics.json holds every one)."""
    def corr(entry: dict[str, Any]) -> str:
        value = entry["correlation_with_psnr_unopened"]
        return "" if value is None else f", correlation with PSNR without the erode-dilation {value:+.2f}"
    head, jaw, expression = (summary[name] for name in NOVELTY_COLUMNS)
    return (f"distance to the nearest training frame: head view {head['mean']:.1f} deg mean "
            f"(largest {head['max']:.1f}){corr(head)}; jaw {jaw['mean']:.1f} deg (largest {jaw['max']:.1f}); "
            f"expression {expression['mean']:.2f} (largest {expression['max']:.2f}){corr(expression)}")
