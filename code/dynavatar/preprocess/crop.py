"""Step 2 (continued): one square crop per video, placed from the face's landmarks over all its
frames (the camera is static), and the resampling of frames, mattes and points into it.

Pixel convention everywhere: the centre of the top-left pixel is at (0, 0); pixel i spans
[i - 0.5, i + 0.5]. A crop maps the source square [x0 - 0.5, x0 + size - 0.5] onto [-0.5, res - 0.5].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .errors import PreprocessError

log = logging.getLogger(__name__)

DEFAULT_CROP_SCALE = 2.2  # crop side / face size: the head, hair and shoulders, as in IMavatar data
CENTRE_RAISE = 0.2  # the crop centre sits this many face sizes above the face's centre (hair, forehead)
MOTION_MARGIN = 1.15  # the crop holds every frame's face box, grown by this factor


@dataclass(frozen=True)
class Crop:
    """A square of `size` source pixels with top-left pixel (x0, y0), resampled to `res` x `res`."""

    x0: int
    y0: int
    size: int
    res: int

    @property
    def scale(self) -> float:
        """Output pixels per source pixel."""
        return self.res / self.size

    def points_to_crop(self, points: np.ndarray) -> np.ndarray:
        """Source pixel coordinates [..., 2] -> output pixel coordinates [..., 2]."""
        origin = np.array([self.x0, self.y0], dtype=np.float64)
        return (points - origin + 0.5) * self.scale - 0.5

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Source image [H, W] or [H, W, C] -> the crop [res, res(, C)], same dtype; area-averaged when
        shrinking (no aliasing), bilinear when enlarging."""
        return self.resample(self.window(image))

    def window(self, image: np.ndarray) -> np.ndarray:
        """Source image [H, W(, C)] -> the crop's square of source pixels [size, size(, C)] (a view)."""
        window = image[self.y0:self.y0 + self.size, self.x0:self.x0 + self.size]
        if window.shape[:2] != (self.size, self.size):
            raise PreprocessError(f"the crop {self} does not fit a frame of {image.shape[1]}x{image.shape[0]} "
                                  f"pixels (all videos and mattes of a subject must keep their size)")
        return window

    def resample(self, window: np.ndarray) -> np.ndarray:
        """The crop's square of source pixels [size, size(, C)] -> [res, res(, C)], as `apply` resamples
        (a NaN spreads to every output pixel it contributes to)."""
        import cv2

        if self.size == self.res:
            return np.ascontiguousarray(window)
        interpolation = cv2.INTER_AREA if self.size > self.res else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(window), (self.res, self.res), interpolation=interpolation)

    def as_dict(self) -> dict:
        return {"x0": self.x0, "y0": self.y0, "size": self.size, "res": self.res}


def face_boxes(points: np.ndarray) -> np.ndarray:
    """Landmarks [N, L, 2] -> boxes [M, 4] (xmin, ymin, xmax, ymax) of the M frames whose points are all known."""
    known = points[np.isfinite(points).all(axis=(1, 2))]
    return np.concatenate([known.min(axis=1), known.max(axis=1)], axis=1) if len(known) else np.zeros((0, 4))


def square_crop(points: np.ndarray, width: int, height: int, res: int, crop_scale: float = DEFAULT_CROP_SCALE,
                name: str = "the video") -> Crop:
    """The crop of a video from its landmarks [N, 68, 2] in source pixels (NaN for frames without).

    Side: `crop_scale` x the median face size, at least enough to hold every frame's face box (grown
    by 15 %), at most the frame's shorter side. Centre: the middle of all face boxes, raised by 0.2
    face sizes; the square is then shifted to lie inside the frame (never padded). A side that the
    frame cuts short is logged as a warning naming `name`: the avatar then sees less around the head
    than asked for.
    """
    boxes = face_boxes(points)
    if not len(boxes):
        raise PreprocessError("no frame has landmarks: cannot place the crop")
    face = float(np.median(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
    union = np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
    centre = np.array([(union[0] + union[2]) / 2, (union[1] + union[3]) / 2 - CENTRE_RAISE * face])
    side = max(crop_scale * face, MOTION_MARGIN * max(union[2] - union[0], union[3] - union[1]))
    size = int(round(min(side, width, height)))
    if size < int(round(side)):
        log.warning("%s: the crop would be %d px (--crop_scale %g x a face of %d px, or the head's motion) but the "
                    "frame is only %d x %d px: it is cut to %d px; the hair or chin may touch its edges (film "
                    "from farther away, or lower --crop_scale)", name, int(round(side)), crop_scale, round(face),
                    width, height, size)
    x0 = int(round(centre[0] + 0.5 - size / 2))
    y0 = int(round(centre[1] + 0.5 - size / 2))
    x0 = min(max(x0, 0), width - size)
    y0 = min(max(y0, 0), height - size)
    return Crop(x0, y0, size, int(res))
