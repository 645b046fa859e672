"""Preprocessing of synthetic videos against the generator's exact answers (no face detector needed).

The videos are a synthetic subject re-composited over a textured static backdrop and encoded to mp4;
the landmark source is the generator's true 2D keypoints (`--landmarks`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynavatar.cameras import imavatar_camera
from dynavatar.data.images import read_mask
from dynavatar.flame import FLAME
from dynavatar.preprocess.crop import Crop
from dynavatar.preprocess.masks import read_external_matte
from dynavatar.preprocess.tracking import video_focals

from test_preprocess_units import needs_opencv

REPO = Path(__file__).resolve().parents[1]
VIDEOS = ("train1", "train2", "test1")


def preprocess(*args: str, cwd: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "preprocess.py"), *args, "--flame", "synthetic"],
                            cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def check_dataset(path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "check_dataset.py"), "--path", str(path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def video_args(folder: Path, names=VIDEOS) -> list[str]:
    args = []
    for name in names:
        args += ["--test-video" if name.startswith("test") else "--video", str(folder / f"{name}.mp4")]
    return args


def crops(subject: Path) -> dict[str, Crop]:
    report = json.loads((subject / "preprocess" / "report.json").read_text())
    return {name: Crop(**video["crop"]) for name, video in report["videos"].items()}


@pytest.fixture(scope="module")
def tracked_512(tmp_path_factory):
    """Three 6-frame videos at 768x640 (the 128 px generator frame composited and scaled by 4),
    preprocessed at 512 px with the true landmarks and the true mattes. Without the photometric term
    (its own tests are in test_preprocess_tracking.py): with it the fixture took 40% longer."""
    needs_opencv()
    from dynavatar.preprocess.synthetic_video import make_synthetic_videos

    root = tmp_path_factory.mktemp("track512")
    made = make_synthetic_videos(root / "videos", res=128, frames=6, seed=2, videos=VIDEOS, scale=4.0)
    preprocess("--subject", "s512", "--out", str(root / "datasets"), *video_args(root / "videos"), "--res", "512",
               "--landmarks", str(root / "videos" / "landmarks.json"), "--masks", str(root / "videos" / "masks"),
               "--photometric_weight", "0", cwd=root)
    return root, root / "datasets" / "s512", made


def test_tracking_reprojects_the_true_landmarks_within_1_5_px_at_512(tracked_512, synthetic_flame_paths):
    """Measured independently of the tracker's own report: the written FLAME parameters, through the
    project's FLAME and the dataset camera, land on the given landmarks (mapped into the crop)."""
    root, subject, _ = tracked_512
    check_dataset(subject)
    truth = json.loads((root / "videos" / "landmarks.json").read_text())
    report = json.loads((subject / "preprocess" / "report.json").read_text())
    errors = {}
    sizes = {name: crop.size for name, crop in crops(subject).items()}
    focal = dict(zip(sizes, video_focals(3.0, list(sizes.values()))))  # one camera, each video's crop
    for name, crop in crops(subject).items():
        params = json.loads((subject / "s512" / name / "flame_params.json").read_text())
        flame = FLAME(*synthetic_flame_paths, shape_params=torch.tensor(params["shape_params"]))
        frames = params["frames"]
        out = flame(torch.tensor([f["expression"] for f in frames]), torch.tensor([f["pose"] for f in frames]))
        frame_errors = []
        for k, frame in enumerate(frames):
            camera = imavatar_camera(torch.tensor(frame["world_mat"]), params["intrinsics"], 512, 512)
            pixels, _ = camera.project(out.landmarks[k])  # rasterizer pixel centres at i + 0.5
            given = crop.points_to_crop(np.array(truth[name][str(k)]))  # pixel centres at integers
            frame_errors.append(np.linalg.norm(pixels.numpy() - 0.5 - given, axis=1).mean())
            stored = (np.array(frame["flame_keypoints"]) + 1) / 2 * 512  # IMavatar keypoints -> pixels
            assert np.abs(stored[:68] - (pixels.numpy() - 0.5)).max() < 0.01
        errors[name] = float(np.mean(frame_errors))
        assert abs(errors[name] - report["videos"][name]["reprojection_error_px"]) < 0.05
        assert params["intrinsics"] == pytest.approx([-focal[name], focal[name], 0.5, 0.5])
    assert max(errors.values()) <= 1.5, errors


def test_exact_tracking_in_the_crop_lands_on_the_given_landmarks(tracked_512, synthetic_flame_paths):
    """The reference for the end-to-end test: the generator's tracking re-expressed for the crop
    reprojects onto the given landmarks to a hundredth of a pixel (so the crop arithmetic is right)."""
    from dynavatar.preprocess.synthetic_video import exact_tracking_in_crop

    root, subject, made = tracked_512
    truth = json.loads((root / "videos" / "landmarks.json").read_text())
    for name, crop in crops(subject).items():
        params = exact_tracking_in_crop(made[name], crop)
        flame = FLAME(*synthetic_flame_paths, shape_params=torch.tensor(params["shape_params"]))
        for k in (0, 5):
            frame = params["frames"][k]
            out = flame(torch.tensor([frame["expression"]]), torch.tensor([frame["pose"]]))
            camera = imavatar_camera(torch.tensor(frame["world_mat"]), params["intrinsics"], 512, 512)
            pixels, _ = camera.project(out.landmarks[0])
            given = crop.points_to_crop(np.array(truth[name][str(k)]))
            assert np.abs(pixels.numpy() - 0.5 - given).max() < 0.01
            assert np.abs((np.array(frame["flame_keypoints"]) + 1) / 2 * 512 - given).max() < 0.01


def test_given_mattes_are_cropped_like_the_frames(tracked_512):
    root, subject, _ = tracked_512
    for name, crop in crops(subject).items():
        for k in (0, 5):
            expected = crop.apply(read_external_matte(root / "videos" / "masks", name, k))
            written = read_mask(subject / "s512" / name / "mask" / f"{k + 1}.png")
            assert np.abs(written - expected).max() <= 1 / 255 + 1e-6


@pytest.fixture(scope="module")
def masked_128(tmp_path_factory):
    """Three 8-frame videos at 192x160 (a 128 px generator frame on a textured backdrop), preprocessed
    at 128 px with the true landmarks and the background model; tracked without the photometric term
    (its own tests are in test_preprocess_tracking.py), which the masks depend on only through the
    fitted landmarks they are cut around."""
    needs_opencv()
    from dynavatar.preprocess.synthetic_video import make_synthetic_videos

    root = tmp_path_factory.mktemp("masks128")
    make_synthetic_videos(root / "videos", res=128, frames=8, seed=1, videos=VIDEOS)
    preprocess("--subject", "m128", "--out", str(root / "datasets"), *video_args(root / "videos"), "--res", "128",
               "--landmarks", str(root / "videos" / "landmarks.json"), "--steps", "300", "--photometric_weight", "0",
               cwd=root)
    return root, root / "datasets" / "m128"


def test_background_model_masks_reach_iou_0_95(masked_128):
    root, subject = masked_128
    check_dataset(subject)
    ious = {}
    for name, crop in crops(subject).items():
        frame_ious = []
        for k in range(8):
            truth = crop.apply(read_external_matte(root / "videos" / "masks", name, k)) > 0.5
            ours = read_mask(subject / "m128" / name / "mask" / f"{k + 1}.png")
            frame_ious.append((truth & (ours > 0.5)).sum() / (truth | (ours > 0.5)).sum())
            assert ((ours > 0.05) & (ours < 0.95)).any()  # soft edges
        ious[name] = float(np.mean(frame_ious))
    assert min(ious.values()) >= 0.95, ious


def test_outputs_of_a_run(masked_128):
    root, subject = masked_128
    assert (subject / ".dynavatar-preprocess").is_file()
    assert (subject / "preprocess" / "contact_sheet.png").is_file()
    report = json.loads((subject / "preprocess" / "report.json").read_text())
    assert [v["test"] for v in report["videos"].values()] == [False, False, True]
    assert [v["mask_background"] for v in report["videos"].values()] == ["subject"] * 3  # one scene, pooled
    # The landmark file written back is the one given (a --landmarks file round-trips).
    given = json.loads((root / "videos" / "landmarks.json").read_text())
    written = json.loads((subject / "preprocess" / "landmarks.json").read_text())
    assert np.allclose(np.array(written["train1"]["3"]), np.array(given["train1"]["3"]), atol=1e-3)
    assert not list((root / "datasets").glob(".m128-*"))  # no staging folder left behind


def test_a_clean_plate_is_the_background_of_every_video(masked_128):
    """--background: the empty scene's photo is every video's background model (named in the report),
    and its masks reach IoU 0.95 from three frames a video."""
    root, _ = masked_128
    preprocess("--subject", "plate", "--out", str(root / "datasets"), *video_args(root / "videos"), "--res", "128",
               "--landmarks", str(root / "videos" / "landmarks.json"), "--background",
               str(root / "videos" / "background.png"), "--max_frames", "3", "--steps", "100", "--photometric_weight", "0",
               "--no_contact_sheet", cwd=root)
    subject = root / "datasets" / "plate"
    report = json.loads((subject / "preprocess" / "report.json").read_text())
    assert [v["mask_background"] for v in report["videos"].values()] == ["clean plate"] * 3
    for name, crop in crops(subject).items():
        for k in range(3):
            truth = crop.apply(read_external_matte(root / "videos" / "masks", name, k)) > 0.5
            ours = read_mask(subject / "plate" / name / "mask" / f"{k + 1}.png") > 0.5
            assert (truth & ours).sum() / (truth | ours).sum() >= 0.95, (name, k)


def test_an_existing_subject_is_replaced_only_with_overwrite(masked_128, capsys):
    from dynavatar.cli.preprocess import main

    root, _ = masked_128
    subject = root / "datasets" / "again"
    (subject / "again" / "old_video").mkdir(parents=True)
    (subject / ".dynavatar-preprocess").write_text("an earlier run\n")
    args = ["--subject", "again", "--out", str(root / "datasets"), *video_args(root / "videos", ("train2",)),
            "--landmarks", str(root / "videos" / "landmarks.json"), "--flame", "synthetic", "--res", "64",
            "--max_frames", "2", "--steps", "50", "--no_contact_sheet", "-q"]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (subject / "again" / "old_video").is_dir()
    with pytest.raises(SystemExit) as stop:
        main([*args, "--overwrite"])
    assert stop.value.code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (subject / "again").iterdir()) == ["train2"]
    assert len(list((subject / "again" / "train2" / "image").iterdir())) == 2
    assert not list((root / "datasets").glob(".again-*"))
