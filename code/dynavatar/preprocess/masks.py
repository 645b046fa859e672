"""Step 5, masks: a static-camera background model with OpenCV, or mattes made elsewhere.

At the output size, or for outputs below MASK_MIN_RES pixels at up to that many pixels of the crop's
source (`mask_crop`), the alpha then area-averaged to the output size (the background itself is
pooled over a subject's videos: `background.py`):

1. A first person mask of each sampled frame (up to 48 per video) from colour alone: GrabCut seeded
   by the landmarks (the face is person; what lies well beyond a generous head-and-shoulders region
   is not), with the head region where hair usually lies added whatever its colour.
2. Background estimate: the per-pixel median of the sampled frames where the pixel is not person; a
   second round uses the masks of step 3 instead. Background that no sampled frame shows is filled
   in from around it, and where it lies away from what was seen, counted as person (the person
   covered it in every sampled frame).
3. Each frame: the colour distance to the background (lightly blurred against video noise),
   thresholded at a level set from the frame's own noise floor; opening and closing, only the parts
   connected to the face, holes filled.
4. GrabCut refinement in a narrow band around the silhouette, where a pixel that matches the known
   background stays background.
5. Soft edges: on the one-pixel band either side of the edge, alpha from the background difference
   along the person's colour, `alpha = (I - B).(F - B) / |F - B|^2` (F the nearby person colour).

Frames are segmented on `MaskOptions.workers` threads at once (OpenCV and NumPy release the GIL
for their work); GrabCut's random start is seeded per frame, so a frame's mask is the same whatever
thread makes it and whatever frames came before.

Or `--masks DIR`: `DIR/<video>/<k>.png`, one grey matte per source frame numbered from 1 (ffmpeg's
`%d.png`), at the video's size; they are cropped and resized like the frames.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from ..data.images import read_mask
from ..errors import DatasetError
from .crop import Crop
from .errors import PreprocessError

log = logging.getLogger(__name__)

GRABCUT_SEED = 0  # GrabCut's k-means start, the same for every frame
# Masks are made at no fewer pixels than this where the source has them: at 64 px a one-pixel edge is
# a large part of a head of about 40 pixels (mean mask IoU at 64 px 0.974-0.985 by backdrop made at
# 64 px, 0.983-0.990 made at 128 and area-averaged: docs/PREPROCESSING.md).
MASK_MIN_RES = 128


@dataclass
class MaskOptions:
    samples: int = 48  # frames used for the background estimate
    min_threshold: float = 0.06  # smallest colour distance (RGB in [0, 1]) that counts as person
    noise_factor: float = 5.0  # threshold = noise_factor x the frame's typical background difference
    grabcut: bool = True
    grabcut_iterations: int = 2
    band: float = 4.0  # half-width of the GrabCut band, pixels at 512 px
    exclusion_margin: float = 3.0  # the person is grown by this many pixels (at 512 px) for the background
    workers: int = 0  # threads segmenting frames at once; 0: one per CPU core

    def threads(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)


T = TypeVar("T")
R = TypeVar("R")


def mask_crop(crop: Crop) -> Crop:
    """The crop at the size its masks are made at: its output size, or for a smaller output up to
    MASK_MIN_RES pixels (never more than the crop's source pixels)."""
    return replace(crop, res=max(crop.res, min(crop.size, MASK_MIN_RES)))


def points_at(points: np.ndarray, res: int, other: int) -> np.ndarray:
    """Pixel coordinates [..., 2] (an array or a tensor; centres at integers) of a `res` x `res` image ->
    those of the same square at `other` x `other`."""
    return (points + 0.5) * (other / res) - 0.5


def to_size(alpha: np.ndarray, res: int) -> np.ndarray:
    """An alpha [S, S] -> [res, res], area-averaged when shrinking (the soft edge it leaves is the
    pixel's share of the person)."""
    if alpha.shape[0] == res:
        return alpha
    return _cv2().resize(alpha, (res, res), interpolation=_cv2().INTER_AREA)


def map_frames(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """`fn` over `items` on `workers` threads, the results in the items' order (one thread: in turn)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="masks") as pool:
        yield from pool.map(fn, items)


def _cv2():
    import cv2

    return cv2


def _px(value: float, res: int) -> int:
    """A length given in pixels at 512 px -> pixels at `res` (at least 1)."""
    return max(1, int(round(value * res / 512.0)))


def _disk(radius: int) -> np.ndarray:
    return _cv2().getStructuringElement(_cv2().MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def face_hull(points: np.ndarray, size: int) -> np.ndarray:
    """The convex hull of landmarks [68, 2] (output pixels), filled -> [size, size] bool: surely person."""
    cv2 = _cv2()
    hull = np.zeros((size, size), np.uint8)
    known = points[np.isfinite(points).all(axis=1)]
    if len(known) >= 3:
        cv2.fillConvexPoly(hull, cv2.convexHull(np.round(known).astype(np.int32)), 1)
    return hull.astype(bool)


def person_prior(points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the person can be, from landmarks [68, 2] -> (likely [H, W] bool: the head, and the neck
    and chest down to the bottom of the image; possible [H, W] bool: a generous head with hair, and
    the shoulders down to the bottom).

    In units of the landmark box (w wide, h from brows to chin): the head reaches 0.95 h above the
    brows (a skull's crown lies about 0.85 h above them, hair higher) and 0.45 w beyond the jaw on
    either side; shoulders widen to 4 w at the bottom of the image.
    """
    cv2 = _cv2()
    known = points[np.isfinite(points).all(axis=1)]
    (x0, y0), (x1, y1) = known.min(axis=0), known.max(axis=0)
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    cx = (x0 + x1) / 2
    likely, possible = np.zeros((size, size), np.uint8), np.zeros((size, size), np.uint8)

    def ellipse(target, centre_y, half_w, half_h):
        cv2.ellipse(target, (int(round(cx)), int(round(centre_y))), (int(round(half_w)), int(round(half_h))),
                    0, 0, 360, 1, -1)

    ellipse(likely, (y0 + y1) / 2 - 0.15 * h, 0.55 * w, 0.7 * h)
    cv2.rectangle(likely, (int(cx - 0.3 * w), int(y1 - 0.2 * h)), (int(cx + 0.3 * w), size), 1, -1)  # neck, chest
    ellipse(possible, (y0 + y1) / 2 - 0.3 * h, 0.95 * w, 1.15 * h)
    bottom = size + h
    body = np.array([[cx - 0.7 * w, y1 - 0.3 * h], [cx + 0.7 * w, y1 - 0.3 * h], [cx + 2 * w, bottom],
                     [cx - 2 * w, bottom]])
    cv2.fillConvexPoly(possible, np.round(body).astype(np.int32), 1)
    return likely.astype(bool), (possible | likely).astype(bool)


def head_region(points: np.ndarray, size: int) -> np.ndarray:
    """The head with its hair as it usually lies, from landmarks [68, 2] -> [H, W] bool: an ellipse
    from 0.85 h above the brows to below the chin, 0.2 w wider than the jaw on either side. Left out
    of the first background estimate whatever its colour: dark hair before a dark backdrop looks like
    backdrop to a colour model, and where the head never uncovers it, that would become background."""
    cv2 = _cv2()
    known = points[np.isfinite(points).all(axis=1)]
    (x0, y0), (x1, y1) = known.min(axis=0), known.max(axis=0)
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    region = np.zeros((size, size), np.uint8)
    cv2.ellipse(region, (int(round((x0 + x1) / 2)), int(round(y0 + 0.1 * h))),
                (int(round(0.7 * w)), int(round(0.95 * h))), 0, 0, 360, 1, -1)
    return region.astype(bool)


def _grabcut(frame: np.ndarray, trimap: np.ndarray, iterations: int) -> np.ndarray | None:
    """Run GrabCut on frame [H, W, 3] float in [0, 1] from an initial trimap (cv2.GC_* labels);
    -> person [H, W] bool, or None when a colour model cannot be built (too few pixels of a kind)."""
    cv2 = _cv2()
    if not ((trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)).any() or \
            not ((trimap == cv2.GC_BGD) | (trimap == cv2.GC_PR_BGD)).any():
        return None
    image = np.ascontiguousarray((np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8)[..., ::-1])  # BGR
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    labels = trimap.copy()
    cv2.setRNGSeed(GRABCUT_SEED)  # its k-means start draws from the calling thread's generator
    try:
        cv2.grabCut(image, labels, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def colour_segmentation(frame: np.ndarray, points: np.ndarray, iterations: int = 3) -> np.ndarray:
    """A first person mask [H, W] bool from colour alone (GrabCut seeded by the landmarks: the face is
    person, what lies beyond the generous prior is background), used to estimate the background."""
    cv2 = _cv2()
    size = frame.shape[0]
    hull = face_hull(points, size)
    likely, possible = person_prior(points, size)
    trimap = np.full((size, size), cv2.GC_BGD, np.uint8)
    trimap[possible] = cv2.GC_PR_BGD
    trimap[likely] = cv2.GC_PR_FGD
    trimap[hull] = cv2.GC_FGD
    person = _grabcut(frame, trimap, iterations)
    return _fill_holes(_connected_to(person, hull)) if person is not None else likely | hull


def first_exclusion(frame: np.ndarray, points: np.ndarray, options: MaskOptions) -> np.ndarray:
    """What the first background estimate leaves out of a frame [H, W, 3] float -> [H, W] bool: the
    colour segmentation and the head region (`head_region`), grown by the exclusion margin."""
    cv2 = _cv2()
    res = frame.shape[0]
    person = colour_segmentation(frame, points, options.grabcut_iterations + 1) | head_region(points, res)
    return cv2.dilate(person.astype(np.uint8), _disk(_px(options.exclusion_margin, res))).astype(bool)


def nan_median(values: np.ndarray) -> np.ndarray:
    """The median over axis 0 of `values` [K, ...] float, NaNs left out (0 where all are NaN): what
    `np.nan_to_num(np.nanmedian(values, axis=0))` gives, from one sort (NaNs sort last), several
    times faster."""
    ordered = np.sort(values, axis=0)
    count = (~np.isnan(values)).sum(axis=0)
    lower = np.take_along_axis(ordered, (np.maximum(count - 1, 0) // 2)[None], axis=0)[0]
    upper = np.take_along_axis(ordered, (count // 2)[None], axis=0)[0]
    upper = np.where(count % 2 == 1, lower, upper)
    return np.where(count > 0, (lower + upper) / 2, 0).astype(values.dtype)


def estimate_background(frames: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames [K, H, W, 3] (float in [0, 1], or uint8) and pixels to leave out [K, H, W] bool ->
    (background [H, W, 3] float32: the median of the frames left in, filled in from around where no
    frame left a pixel in; seen [H, W] bool: left in by at least one frame). Computed a band of rows at
    a time, so that a subject's many frames need little memory."""
    cv2 = _cv2()
    scale = 255.0 if frames.dtype == np.uint8 else 1.0
    height = frames.shape[1]
    rows = max(1, int(2 ** 22 // max(1, frames.shape[0] * frames.shape[2] * 3)))  # ~16 MB of float32 a band
    background = np.zeros(frames.shape[1:], np.float32)
    for top in range(0, height, rows):
        band = frames[:, top:top + rows].astype(np.float32) / scale
        band[exclude[:, top:top + rows]] = np.nan
        background[top:top + rows] = nan_median(band)
    seen = (~exclude).any(axis=0)
    if seen.any() and not seen.all():
        filled = cv2.inpaint((background * 255 + 0.5).astype(np.uint8), (~seen).astype(np.uint8), 3,
                             cv2.INPAINT_TELEA).astype(np.float32) / 255.0
        background = np.where(seen[..., None], background, filled)
    return background, seen


def colour_distance(frame: np.ndarray, background: np.ndarray, res: int) -> np.ndarray:
    """Frame and background [H, W, 3] float in [0, 1] -> [H, W] distance, lightly blurred against noise."""
    cv2 = _cv2()
    sigma = max(0.5, res / 512.0)
    diff = cv2.GaussianBlur((frame - background).astype(np.float32), (0, 0), sigma)
    return np.linalg.norm(diff, axis=2)


def _connected_to(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The parts of `mask` [H, W] bool that touch `seed` [H, W] bool."""
    cv2 = _cv2()
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = np.unique(labels[seed & mask])
    return np.isin(labels, keep[keep > 0])


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the regions of ~mask [H, W] that do not reach the image border."""
    cv2 = _cv2()
    _, labels = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return mask | ~np.isin(labels, border)


@dataclass
class BackgroundModel:
    """A video's static background at the output size."""

    image: np.ndarray  # [H, W, 3] float32 in [0, 1]
    seen: np.ndarray  # [H, W] bool: pixels where the background was visible in a sampled frame


def segment(frame: np.ndarray, points: np.ndarray, model: BackgroundModel, options: MaskOptions) -> np.ndarray:
    """The person's alpha [H, W] float32 in one frame [H, W, 3] float, from the background model and the
    landmarks [68, 2]: difference threshold, clean-up, GrabCut in the uncertain band, soft edges."""
    cv2 = _cv2()
    res = frame.shape[0]
    hull = face_hull(points, res)
    likely, possible = person_prior(points, res)
    seen = model.seen
    distance = colour_distance(frame, model.image, res)
    reference = seen & ~possible
    noise = float(np.median(distance[reference])) if reference.any() else 0.0
    threshold = max(options.min_threshold, options.noise_factor * noise)
    # Background never seen far from where it was: the person covered it in every sampled frame.
    hidden = cv2.erode((~seen).astype(np.uint8), _disk(_px(options.band, res))).astype(bool)
    person = (distance > threshold) | hidden | hull
    person = cv2.morphologyEx(person.astype(np.uint8), cv2.MORPH_OPEN, _disk(_px(2, res)))
    person = cv2.morphologyEx(person, cv2.MORPH_CLOSE, _disk(_px(4, res))).astype(bool) | hull
    person = _fill_holes(_connected_to(person, hull))
    if options.grabcut:
        band = _disk(_px(options.band, res))
        # Sure person: what differs from background seen there. Background never seen (the head
        # region of a still head) is left to the colour model: it is person or backdrop alike.
        inner = cv2.erode((person & ~hidden).astype(np.uint8), band).astype(bool) | hull
        outer = cv2.dilate(person.astype(np.uint8), band).astype(bool) | (~seen & possible)
        trimap = np.where(person, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        trimap[~outer] = cv2.GC_BGD
        trimap[seen & (distance < 0.5 * threshold) & ~hull] = cv2.GC_BGD
        trimap[inner] = cv2.GC_FGD
        refined = _grabcut(frame, trimap, options.grabcut_iterations)
        if refined is not None:
            person = _fill_holes(_connected_to(refined, hull))
    return soft_edges(frame, model.image, person, seen)


def soft_edges(frame: np.ndarray, background: np.ndarray, mask: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Binary person mask [H, W] -> alpha [H, W] float32: 1 inside, 0 outside, and on the one-pixel
    band either side of the edge the fraction of the person in the pixel's colour."""
    cv2 = _cv2()
    m = mask.astype(np.uint8)
    ring = _disk(1)
    core = cv2.erode(m, ring).astype(np.float32)
    edge = (cv2.dilate(m, ring) - cv2.erode(m, ring)).astype(bool) & seen
    alpha = mask.astype(np.float32)
    if not edge.any():
        return alpha
    # F: the person's colour near each pixel (mean of the eroded person within a few pixels).
    weight = cv2.GaussianBlur(core, (0, 0), 2.0)
    colour = cv2.GaussianBlur(frame.astype(np.float32) * core[..., None], (0, 0), 2.0)
    person = colour / np.maximum(weight, 1e-6)[..., None]
    contrast = person - background
    norm2 = (contrast * contrast).sum(axis=2)
    estimate = ((frame - background) * contrast).sum(axis=2) / np.maximum(norm2, 1e-6)
    usable = edge & (weight > 1e-3) & (norm2 > 0.1 ** 2)
    alpha[usable] = np.clip(estimate[usable], 0.0, 1.0)
    return alpha


def read_external_matte(folder: Path, video: str, source_index: int) -> np.ndarray:
    """The matte of a source frame from a `--masks` folder -> [H, W] float32 in [0, 1] (grey or RGB,
    8 or 16 bit; of RGB the first channel)."""
    path = folder / video / f"{source_index + 1}.png"
    if not path.is_file():
        raise PreprocessError(f"{path}: matte not found (--masks expects <dir>/<video>/<k>.png, k = source frame "
                              f"number from 1, for every kept frame)")
    try:
        return read_mask(path)
    except DatasetError as exc:
        raise PreprocessError(f"{exc} (--masks)") from None
