"""Step 3, landmarks: 68 iBUG points (and the two irises) per frame, from the face-mesh and iris
models or from a user's file (`--landmarks FILE`).

Coordinates are pixels of the source video frame, with the centre of the top-left pixel at (0, 0).
The 68 points follow the iBUG 300-W layout that FLAME's landmark embedding uses: jaw 0-16, brows
17-26, nose 27-35, eyes 36-47 (36-41 is the eye on the image's left), mouth 48-67. Irises, when
present, are points 68 (image-left eye) and 69.

Landmark file format (json), one entry per video folder name, frames keyed by their source index
(0-based, at the video's own frame rate):

    {"talk": {"0": [[x, y], ... 68 or 70 points], "1": [...], ...}, "head": {...}}

A frame missing from the file, or given as null, has no landmarks: tracking fills it from its neighbours.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .errors import PreprocessError

log = logging.getLogger(__name__)

N_LANDMARKS = 68
N_WITH_IRIS = 70
# MediaPipe face-mesh vertex for each of the 68 iBUG points (subject's right = image left first).
MESH_TO_IBUG68 = (
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,  # jaw 0-16
    71, 63, 105, 66, 107,  # brow on the image's left 17-21
    336, 296, 334, 293, 301,  # other brow 22-26
    168, 197, 5, 4,  # nose bridge 27-30
    75, 97, 2, 326, 305,  # nostrils 31-35
    33, 160, 158, 133, 153, 144,  # eye on the image's left 36-41
    362, 385, 387, 263, 373, 380,  # other eye 42-47
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips 48-59
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips 60-67
)
LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)  # image-left eye, image-right eye


@dataclass
class VideoLandmarks:
    """Landmarks of a video's kept frames, in source-frame pixels."""

    points: np.ndarray  # [N, 70, 2] float64: 68 iBUG points then the two irises; NaN where unknown
    source_indices: list[int]  # [N] source frame index of each kept frame

    @property
    def valid(self) -> np.ndarray:
        """[N] bool: frames whose 68 points are known."""
        return np.isfinite(self.points[:, :N_LANDMARKS]).all(axis=(1, 2))

    @property
    def has_iris(self) -> np.ndarray:
        """[N] bool: frames whose two irises are known."""
        return np.isfinite(self.points[:, N_LANDMARKS:]).all(axis=(1, 2))


def mesh_to_ibug68(mesh: np.ndarray) -> np.ndarray:
    """Face mesh [..., 468, 2] -> the 68 iBUG points [..., 68, 2]."""
    return mesh[..., MESH_TO_IBUG68, :]


def with_irises(points68: np.ndarray, irises: np.ndarray | None) -> np.ndarray:
    """68 points [68, 2] and iris centres [2, 2] (any order, or None) -> [70, 2], the irises assigned
    to the eye they lie nearest to (image-left eye first) and NaN when missing."""
    out = np.full((N_WITH_IRIS, 2), np.nan)
    out[:N_LANDMARKS] = points68
    if irises is not None:
        eyes = np.stack([points68[LEFT_EYE].mean(0), points68[RIGHT_EYE].mean(0)])  # [2, 2]
        cost = np.linalg.norm(irises[:, None] - eyes[None], axis=-1)  # [iris, eye]
        order = (0, 1) if cost[0, 0] + cost[1, 1] <= cost[0, 1] + cost[1, 0] else (1, 0)
        out[N_LANDMARKS:] = irises[list(order)]
    return out


def _frame_points(value, path: Path, video: str, index: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 2 or arr.shape[0] not in (N_LANDMARKS, N_WITH_IRIS) or arr.shape[1] != 2 \
            or not np.isfinite(arr).all():
        raise PreprocessError(f"{path}: video '{video}' frame {index}: expected 68 or 70 [x, y] pixel pairs "
                              f"(see docs/PREPROCESSING.md, 'Landmark file')")
    return arr


def read_landmark_file(path: str | Path, video: str, source_indices: Iterable[int]) -> VideoLandmarks:
    """The landmarks of `video` at the given source frames from a landmark file (format above)."""
    path = Path(path)
    if not path.is_file():
        raise PreprocessError(f"{path}: landmark file not found (--landmarks)")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise PreprocessError(f"{path}: cannot read the landmark file ({exc})") from None
    if not isinstance(content, dict) or video not in content or not isinstance(content[video], dict):
        known = sorted(content) if isinstance(content, dict) else []
        raise PreprocessError(f"{path}: no landmarks for video '{video}' (the file has {known}); key each video's "
                              f"frames by its folder name")
    frames: Mapping = content[video]
    indices = list(source_indices)
    points = np.full((len(indices), N_WITH_IRIS, 2), np.nan)
    for k, index in enumerate(indices):
        arr = _frame_points(frames.get(str(index)), path, video, index)
        if arr is not None:
            points[k, : arr.shape[0]] = arr
    result = VideoLandmarks(points, indices)
    if not result.valid.any():
        raise PreprocessError(f"{path}: video '{video}' has no landmarks for any of the {len(indices)} selected "
                              f"frames (source frames {indices[0]}..{indices[-1]})")
    return result


def landmark_file_content(videos: Mapping[str, VideoLandmarks]) -> dict:
    """{video: {source index: [[x, y] ...]}} for writing with json (frames without landmarks left out)."""
    out = {}
    for name, marks in videos.items():
        frames = {}
        for k, index in enumerate(marks.source_indices):
            if marks.valid[k]:
                count = N_WITH_IRIS if marks.has_iris[k] else N_LANDMARKS
                frames[str(index)] = np.round(marks.points[k, :count], 3).tolist()
        out[name] = frames
    return out
