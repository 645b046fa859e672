"""Step 5 (background): one static background per subject, from the sampled frames of all its videos.

The videos of one subject are one recording: the same camera, the same backdrop. A short clip where
the head barely moves never shows the backdrop behind the hair, and a background learnt from it
alone takes the hair for backdrop; another video of the subject, where the head moved, shows it.
So the background seen in any video counts for all of them.

Each video has its own square crop of the source frame. The sampled frames are kept as their crop's
square of source pixels (`Crop.window`); a frame of video u is brought into the crop of video v by
placing its window in the source frame and resampling it exactly as v's own frames are resampled
(`Crop.resample`), so the pooled background matches v's frames pixel for pixel. Where u's window
does not cover v's crop, or u's person covers it, the pixel is left out (NaN through the resampling).

Videos share a scene when, where both see background, the frames of one lie within SCENE_TOLERANCE
(median colour distance) of the other's own background. Videos that share a scene with no other
(another size, a moved camera, other light) keep a background of their own, with a warning.

Or a clean plate (`--background IMAGE`): a photograph of the empty scene from the same camera
position, at the videos' size, is the background of every video.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .crop import Crop
from .errors import PreprocessError
from .masks import BackgroundModel, MaskOptions, estimate_background, first_exclusion, map_frames, segment

log = logging.getLogger(__name__)

SCENE_TOLERANCE = 0.04  # median colour distance (RGB in [0, 1]) between videos that share a scene
MIN_OVERLAP = 0.05  # share of a crop's pixels where both videos must see background to compare them
SCENE_FRAMES = 8  # frames of the other video used to compare two videos


@dataclass
class VideoSample:
    """The sampled frames of one video, for the background."""

    name: str
    crop: Crop
    source_size: tuple[int, int]  # (width, height) of the video
    windows: np.ndarray  # [K, size, size, 3] uint8: the crop's square of source pixels of each sampled frame
    points: np.ndarray  # [K, 68, 2] landmarks of the sampled frames, output pixels

    def frames(self) -> np.ndarray:
        """The sampled frames as the crop writes them -> [K, res, res, 3] float32 in [0, 1]."""
        return np.stack([self.crop.resample(w) for w in self.windows]).astype(np.float32) / 255.0


@dataclass
class SubjectBackground:
    models: list[BackgroundModel]  # one per video, in the order given, at the output size
    kinds: list[str]  # per video: "subject" (pooled with others), "video" (its own) or "clean plate"
    warnings: list[str]


def _into(source: VideoSample, k: int, exclude: np.ndarray, target: Crop) -> np.ndarray:
    """Sampled frame k of `source` in the crop `target` -> [res, res, 3] float32 in [0, 1], NaN where the
    source's window does not reach or `exclude` [res, res] bool (the source's output pixels) is set."""
    import cv2

    crop = source.crop
    window = source.windows[k].astype(np.float32) / 255.0
    # An excluded output pixel leaves out every source pixel under it (linear, then any weight).
    hidden = cv2.resize(exclude.astype(np.float32), (crop.size, crop.size), interpolation=cv2.INTER_LINEAR) > 0
    window[hidden] = np.nan
    placed = np.full((target.size, target.size, 3), np.nan, np.float32)
    dx, dy = crop.x0 - target.x0, crop.y0 - target.y0
    x0, y0 = max(dx, 0), max(dy, 0)
    x1, y1 = min(dx + crop.size, target.size), min(dy + crop.size, target.size)
    if x1 > x0 and y1 > y0:
        placed[y0:y1, x0:x1] = window[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
    return target.resample(placed)


def _pooled_stack(videos: list[VideoSample], own: list[np.ndarray], excludes: list[np.ndarray], v: int,
                  group: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The sampled frames of every video of `group` in the crop of video v -> (frames [M, res, res, 3]
    uint8, exclude [M, res, res] bool)."""
    frames, exclude = [np.round(own[v] * 255).astype(np.uint8)], [excludes[v]]
    for u in group:
        if u == v:
            continue
        for k in range(len(videos[u].windows)):
            image = _into(videos[u], k, excludes[u][k], videos[v].crop)
            missing = np.isnan(image).any(axis=2)
            frames.append(np.round(np.nan_to_num(image) * 255).astype(np.uint8)[None])
            exclude.append(missing[None])
    return np.concatenate(frames), np.concatenate(exclude)


def scene_distance(videos: list[VideoSample], own: list[np.ndarray], excludes: list[np.ndarray],
                   models: list[BackgroundModel], v: int, u: int) -> float | None:
    """How far the background seen in video u lies from video v's own background: the median colour
    distance over the pixels where both see it, in v's crop (None: too little overlap to tell)."""
    if videos[u].source_size != videos[v].source_size:
        return None
    res = videos[v].crop.res
    picks = np.linspace(0, len(videos[u].windows) - 1, min(SCENE_FRAMES, len(videos[u].windows))).round().astype(int)
    distances = []
    for k in sorted(set(picks.tolist())):
        image = _into(videos[u], k, excludes[u][k], videos[v].crop)
        valid = ~np.isnan(image).any(axis=2) & models[v].seen
        if valid.sum() >= MIN_OVERLAP * res * res:
            distances.append(np.linalg.norm(image[valid] - models[v].image[valid], axis=1))
    if not distances:
        return None
    return float(np.median(np.concatenate(distances)))


def scene_groups(videos: list[VideoSample], own, excludes, models) -> list[list[int]]:
    """Videos linked when each one's background lies within SCENE_TOLERANCE of the other's -> groups of
    video indices (connected, so a subject filmed in one scene is one group)."""
    parent = list(range(len(videos)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for v in range(len(videos)):
        for u in range(v + 1, len(videos)):
            there, back = (scene_distance(videos, own, excludes, models, v, u),
                           scene_distance(videos, own, excludes, models, u, v))
            log.debug("background of %s vs %s: %s, %s", videos[v].name, videos[u].name, there, back)
            if there is not None and back is not None and max(there, back) <= SCENE_TOLERANCE:
                parent[root(u)] = root(v)
    groups: dict[int, list[int]] = {}
    for i in range(len(videos)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def read_clean_plate(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The clean plate image -> [H, W, 3] float32 in [0, 1]; it must have the videos' size (width, height)."""
    from ..data.images import read_rgb
    from ..errors import DatasetError

    try:
        plate = read_rgb(Path(path))
    except (DatasetError, OSError) as exc:
        raise PreprocessError(f"{path}: cannot read the clean plate (--background): {exc}") from None
    if (plate.shape[1], plate.shape[0]) != tuple(size):
        raise PreprocessError(f"{path}: the clean plate is {plate.shape[1]}x{plate.shape[0]}, the videos "
                              f"{size[0]}x{size[1]}: photograph the empty scene with the same camera and settings "
                              f"(--background)")
    return plate.astype(np.float32)


def subject_backgrounds(videos: list[VideoSample], options: MaskOptions | None = None,
                        plate: np.ndarray | None = None, per_video: bool = False) -> SubjectBackground:
    """The background model of each video of a subject (see the module's docstring).

    plate: a clean plate [H, W, 3] float in [0, 1] at the videos' size, used as every video's background.
    per_video: learn each video's background from its own frames only (the behaviour before pooling).
    """
    options = options or MaskOptions()
    if plate is not None:
        models = [BackgroundModel(v.crop.apply(plate).astype(np.float32), np.ones((v.crop.res,) * 2, bool))
                  for v in videos]
        return SubjectBackground(models, ["clean plate"] * len(videos), [])
    own = [v.frames() for v in videos]
    # Round 1, each video alone: the colour segmentation and the head region leave the person out.
    threads = options.threads()
    excludes = [np.stack(list(map_frames(lambda fp: first_exclusion(*fp, options), zip(frames, video.points),
                                         threads)))
                for video, frames in zip(videos, own)]
    first = [BackgroundModel(*estimate_background(f, e)) for f, e in zip(own, excludes)]
    groups = [[i] for i in range(len(videos))] if per_video else scene_groups(videos, own, excludes, first)
    warnings = []
    if not per_video and len(videos) > 1:
        for group in groups:
            if len(group) == 1:
                name = videos[group[0]].name
                warnings.append(f"{name}: its background differs from the other videos' (or its size does): "
                                f"its masks use a background learnt from it alone; film all videos of a subject "
                                f"from one camera position in one scene, or give a clean plate (--background)")
    for line in warnings:
        log.warning("%s", line)
    models: list[BackgroundModel | None] = [None] * len(videos)
    for group in groups:
        pooled = [BackgroundModel(*estimate_background(*_pooled_stack(videos, own, excludes, v, group)))
                  for v in group] if len(group) > 1 else [first[group[0]]]
        # Round 2: the difference segmentation against that background leaves the person out.
        second = {}
        for v, model in zip(group, pooled):
            people = np.stack([alpha > 0 for alpha in map_frames(lambda fp: segment(*fp, model, options),
                                                                  zip(own[v], videos[v].points), threads)])
            second[v] = people | excludes[v] & ~model.seen
        refined = [second[v] if v in second else excludes[v] for v in range(len(videos))]
        for v in group:
            models[v] = BackgroundModel(*estimate_background(*_pooled_stack(videos, own, refined, v, group)))
    kinds = [""] * len(videos)
    for group in groups:
        for v in group:
            kinds[v] = "subject" if len(group) > 1 else "video"
    return SubjectBackground(models, kinds, warnings)
