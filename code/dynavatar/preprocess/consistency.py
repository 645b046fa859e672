"""Per-video figures of a preprocessed subject, and warnings when one video disagrees with the others.

The videos of one subject are one person in one recording: the share of the image their masks cover,
measured against the size of the face, and the head's typical pose should agree from video to video.
A test video whose masks lose the hair (a short clip where the background model never saw the
backdrop behind it) covers less per face area than the training videos do; training on one and
scoring on the other then costs PSNR that no recipe can recover. A test video whose head views lie
far from every training frame's is rendered worse for another reason: the training videos never
showed them (`novelty_entries`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.images import read_mask
from ..flame.novelty import TrackedFrames, frame_novelty
from .crop import face_boxes

N_LANDMARKS = 68
MASK_TOLERANCE = 0.2  # relative difference of mask coverage from the median of the subject's videos
POSE_TOLERANCE_DEG = 15.0  # difference of a video's median head rotation from the subject's
# A test video with a frame's head view this far from every training frame's is warned of: a judgement,
# not a measured threshold.
NOVELTY_WARNING_DEG = 10.0


def face_sizes(pixels: np.ndarray) -> np.ndarray:
    """The larger side [N] of the box around each frame's 68 landmarks [N, >=68, 2] (fitted pixels,
    finite in every frame)."""
    boxes = face_boxes(pixels[:, :N_LANDMARKS])
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def mask_coverage(mask_dir: Path, sizes: np.ndarray) -> float:
    """Median over frames of the mask's area (sum of alpha, pixels) per squared face size."""
    ratios = [read_mask(mask_dir / f"{k + 1}.png").sum() / max(float(size), 1.0) ** 2 for k, size in enumerate(sizes)]
    return float(np.median(ratios))


def head_rotation_deg(pose: np.ndarray) -> dict[str, list[float]]:
    """Pitch, yaw and roll (the global pose's axis-angle components [N, 15][:, :3], in degrees) and
    the jaw's opening: [min, median, max] of each over the video's frames."""
    out = {}
    for name, column in (("pitch", 0), ("yaw", 1), ("roll", 2), ("jaw", 6)):
        values = np.degrees(pose[:, column])
        out[f"{name}_deg"] = [float(values.min()), float(np.median(values)), float(values.max())]
    return out


def novelty_entries(tracked: dict[str, TrackedFrames], tests: set[str]) -> dict[str, dict[str, list[float]]]:
    """For each test video of `tracked` (video name -> its fitted inputs), [mean, max] over its frames
    of the distances to the nearest frame of the training videos, those not in `tests`
    (flame/novelty.py: head view and jaw in degrees, expression). Empty without a test and a
    training video."""
    training = [name for name in tracked if name not in tests]
    if not training:
        return {}
    reference = TrackedFrames(*(torch.cat([getattr(tracked[n], field) for n in training])
                                for field in ("world_mats", "flame_poses", "expressions")))
    entries = {}
    for name in tracked:
        if name in tests:
            distances = frame_novelty(tracked[name], reference)
            entries[name] = {key: [float(value.mean()), float(value.max())] for key, value in distances.items()}
    return entries


def novelty_warnings(videos: dict[str, dict]) -> list[str]:
    """One line per video of the report (`videos`: name -> entry) whose `head_novelty_deg` [mean, max]
    reaches beyond NOVELTY_WARNING_DEG."""
    lines = []
    for name, video in videos.items():
        head = video.get("head_novelty_deg")
        if head is not None and head[1] > NOVELTY_WARNING_DEG:
            lines.append(f"{name}: its head views reach {head[1]:.1f} deg from the nearest training frame's "
                         f"({head[0]:.1f} on average): the avatar is likely to render those frames worse; "
                         f"training videos with such turns help (docs/PREPROCESSING.md, What to film)")
    return lines


def disagreements(videos: dict[str, dict]) -> list[str]:
    """One line per video whose mask coverage or median head rotation differs from the subject's
    (the median over all its videos, robust to one odd video among three or more; with two, both are
    named) by more than MASK_TOLERANCE or POSE_TOLERANCE_DEG; `videos` maps names to the report's
    entries (`mask_coverage`, `pitch_deg`, `yaw_deg`, `roll_deg`)."""
    if len(videos) < 2:
        return []
    lines = []
    coverage = [v["mask_coverage"] for v in videos.values() if v.get("mask_coverage") is not None]
    typical_coverage = float(np.median(coverage)) if coverage else None
    typical_pose = {axis: float(np.median([v[f"{axis}_deg"][1] for v in videos.values()]))
                    for axis in ("pitch", "yaw", "roll")}
    for name, video in videos.items():
        own = video.get("mask_coverage")
        if own is not None and typical_coverage and abs(own - typical_coverage) > MASK_TOLERANCE * typical_coverage:
            lines.append(f"{name}: its masks cover {own:.2f} face areas a frame, the subject's videos "
                         f"{typical_coverage:.2f}: check its masks (hair or shoulders lost, or background kept); "
                         f"a clean plate (--background), your mattes (--masks) or more movement helps")
        for axis, typical in typical_pose.items():
            if abs(video[f"{axis}_deg"][1] - typical) > POSE_TOLERANCE_DEG:
                lines.append(f"{name}: its median head {axis} is {video[f'{axis}_deg'][1]:.1f} deg, the subject's "
                             f"videos {typical:.1f} deg: check its tracking (contact_sheet.png)")
    return lines
