"""Frame selection (`dataset.<split>.subsample`), read as IMavatar and MonoGaussianAvatar read it.

The indices address the concatenation of all sub_dirs' frames in order, and the one selection is
applied to every per-frame list alike (images, masks, expressions, poses, cameras):
- an int k >= 1: every k-th frame (k = 1 keeps all);
- a list of two ints [start, end]: the frames start .. end-1 (a range, as the reference loaders do;
  `end` past the last frame is clipped);
- any other list: exactly those frame indices.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import DatasetError

log = logging.getLogger(__name__)


def select_frames(n_frames: int, subsample: Any) -> list[int]:
    """Indices into the concatenated frame list that `subsample` keeps."""
    if isinstance(subsample, bool) or not isinstance(subsample, (int, list, tuple)):
        raise DatasetError(f"subsample must be an int step, a [start, end] range or a list of frame indices, "
                           f"got {subsample!r}")
    if isinstance(subsample, int):
        if subsample < 1:
            raise DatasetError(f"subsample step must be >= 1, got {subsample}")
        return list(range(0, n_frames, subsample))
    values = list(subsample)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DatasetError(f"subsample list must hold integers, got {values!r}")
    if len(values) == 2:
        start, end = values
        if not 0 <= start < n_frames or end <= start:
            raise DatasetError(f"subsample range [{start}, {end}] does not select frames of the "
                               f"{n_frames} available (0 <= start < {n_frames}, end > start)")
        if end > n_frames:
            log.warning("subsample range end %d is past the last frame; using %d", end, n_frames)
        return list(range(start, min(end, n_frames)))
    bad = [v for v in values if not 0 <= v < n_frames]
    if bad:
        raise DatasetError(f"subsample indices {bad[:5]} are outside the {n_frames} frames (0 .. {n_frames - 1})")
    if not values:
        raise DatasetError("subsample list is empty: it selects no frame")
    return values
