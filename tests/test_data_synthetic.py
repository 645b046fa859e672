"""The synthetic subject generator: layout, camera convention (keypoints), image content, determinism."""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynavatar.cameras import imavatar_camera, pixels_to_keypoints
from dynavatar.subject_generator import face_regions as fr
from dynavatar.data.reader import FaceDataset
from dynavatar.config import load_conf
from dynavatar.subject_generator.subject import (DEFAULT_TEST_VIDEOS, DEFAULT_TRAIN_VIDEOS, ensure_synthetic_subject,
                                              generate_subject)
from dynavatar.errors import DatasetError
from dynavatar.flame import FLAME

RES, FRAMES = 48, 6
REPO = Path(__file__).resolve().parents[1]
VIDEOS = list(DEFAULT_TRAIN_VIDEOS) + list(DEFAULT_TEST_VIDEOS)


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_subject(root, "synth", res=RES, frames=FRAMES, seed=3)
    return root


def _dataset(root, videos, **kwargs):
    return FaceDataset(root, "synth", "flame_params.json", videos, [RES, RES], **kwargs)


def test_layout(subject):
    for video in VIDEOS:
        folder = subject / "synth" / "synth" / video
        for sub in ("image", "mask", "semantic"):
            assert sorted(p.name for p in (folder / sub).iterdir()) == sorted(f"{k}.png" for k in range(1, FRAMES + 1))
        params = json.loads((folder / "flame_params.json").read_text())
        assert len(params["shape_params"]) == 100 and params["intrinsics"][0] < 0
        frame = params["frames"][0]
        assert frame["file_path"] == "./image/1"
        assert len(frame["expression"]) == 50 and len(frame["pose"]) == 15
        assert np.allclose(np.asarray(frame["world_mat"])[:, :3], np.eye(3))
        assert abs(frame["world_mat"][2][3] + 4.0) < 0.2
        assert np.asarray(frame["flame_keypoints"]).shape == (68, 2) and len(frame["bbox"]) == 4


def test_keypoints_match_flame_landmarks_through_the_reader_camera(subject, synthetic_flame_paths):
    """The camera-convention proof: every frame's FLAME landmarks, projected with the reader's camera
    (item world_mat + intrinsics through imavatar_camera), land on flame_keypoints within 0.5 px."""
    dataset = _dataset(subject, VIDEOS, only_json=True)
    flame = FLAME(*synthetic_flame_paths, shape_params=dataset.shape_params)
    worst = 0.0
    for i in range(len(dataset)):
        item = dataset[i]
        record = dataset.frames[i]
        stored = json.loads(record.json_path.read_text())["frames"][record.json_index]["flame_keypoints"]
        with torch.no_grad():
            landmarks = flame(item.expression, item.flame_pose).landmarks[0]
        camera = imavatar_camera(item.world_mat[0], item.intrinsics[0], RES, RES)
        keypoints = pixels_to_keypoints(camera.project(landmarks)[0], RES, RES)
        error_px = ((keypoints - torch.tensor(stored)).abs() * RES / 2).max().item()
        worst = max(worst, error_px)
    assert worst < 0.5, worst


def test_images_masks_and_semantics(subject):
    dataset = _dataset(subject, VIDEOS, use_background=True)
    assert dataset.has_semantic
    yy, xx = np.mgrid[0:RES, 0:RES]
    seen = set()
    for i in range(len(dataset)):
        item = dataset[i]
        rgb, mask, semantic = item.rgb[0].numpy(), item.mask[0].numpy(), item.semantic[0].numpy()
        assert rgb.std() > 0.05  # not blank
        keypoints = json.loads(dataset.frames[i].json_path.read_text())["frames"][dataset.frames[i].json_index][
            "flame_keypoints"]
        pix = np.round((np.asarray(keypoints) + 1) / 2 * RES).astype(int).clip(0, RES - 1)
        assert (mask[pix[:, 1], pix[:, 0]] > 0.5).mean() > 0.95  # the mask covers the face
        centre = pix.mean(0)
        far = np.hypot(xx - centre[0], yy - centre[1]) > 0.6 * RES
        assert far.any() and mask[far].max() < 1e-6  # and is 0 far from it
        assert 0.0 < ((mask > 0) & (mask < 1)).sum() < 0.2 * mask.size  # soft, anti-aliased edges
        assert (semantic[mask < 0.01] == fr.BACKGROUND).all()
        assert semantic[pix[30, 1], pix[30, 0]] == fr.NOSE  # nose tip landmark on the nose label
        seen |= set(np.unique(semantic).tolist())
    for label in (fr.SKIN, fr.NOSE, fr.U_LIP, fr.L_LIP, fr.NECK, fr.CLOTH, fr.HAIR, fr.L_EYE, fr.R_EYE):
        assert label in seen, label


def test_white_compositing_and_background(subject):
    composited = _dataset(subject, ["MVI_1810"])
    raw = _dataset(subject, ["MVI_1810"], use_background=True)
    gt, gt_raw = composited[0], raw[0]
    background = gt.mask == 0
    assert torch.allclose(gt.rgb[background], torch.ones(1, 3))
    assert (gt_raw.rgb[background] < 0.9).all()  # the generator's backdrop is not white


def test_test_video_expressions_are_new_but_in_range(subject):
    train = _dataset(subject, list(DEFAULT_TRAIN_VIDEOS), only_json=True)
    test = _dataset(subject, list(DEFAULT_TEST_VIDEOS), only_json=True)
    distance = torch.cdist(test.expressions, train.expressions).min(1).values
    assert (distance > 0.5).all()
    assert test.expressions.abs().max() < 3.0 * train.expressions.abs().max()
    assert (train.flame_poses[:, 6] >= 0).all() and train.flame_poses[:, 6].max() > 0.1  # the jaw talks


def test_deterministic_and_refuses_to_overwrite(subject, tmp_path):
    generate_subject(tmp_path, "synth", res=RES, frames=FRAMES, seed=3, train_videos=["MVI_1810"], test_videos=[])
    a = subject / "synth" / "synth" / "MVI_1810"
    b = tmp_path / "synth" / "synth" / "MVI_1810"
    assert (a / "flame_params.json").read_text() == (b / "flame_params.json").read_text()
    assert np.array_equal(np.asarray(Image.open(a / "image" / "2.png")), np.asarray(Image.open(b / "image" / "2.png")))
    with pytest.raises(DatasetError, match="already exists"):
        generate_subject(tmp_path, "synth", res=RES, frames=2, seed=3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_ensure_synthetic_subject_generates_once(tmp_path):
    overrides = [f"dataset.data_folder={tmp_path}", "dataset.subject_name=demo", "dataset.synthetic_frames=2",
                 "dataset.train.img_res=[16, 16]", "model.flame_model_path=synthetic"]
    conf = load_conf(REPO / "confs" / "subject1.conf", overrides)
    assert ensure_synthetic_subject(conf) is None  # a real dataset: nothing to do
    conf = load_conf(REPO / "confs" / "subject1.conf", [*overrides, "dataset.synthetic=true"])
    target = ensure_synthetic_subject(conf)
    assert target == tmp_path / "demo"
    assert sorted(p.name for p in (target / "demo").iterdir()) == sorted(VIDEOS)
    assert len(list((target / "demo" / "MVI_1812" / "image").iterdir())) == 2
    stamp = (target / "demo" / "MVI_1810" / "flame_params.json").stat().st_mtime_ns
    assert ensure_synthetic_subject(conf) == target  # already there: not generated again
    assert (target / "demo" / "MVI_1810" / "flame_params.json").stat().st_mtime_ns == stamp


_ENSURE_AT_ONCE = """
import logging, sys, time
from pathlib import Path
from dynavatar.config import load_conf
from dynavatar.subject_generator.subject import ensure_synthetic_subject
logging.basicConfig(level=logging.INFO)
conf = load_conf(sys.argv[1], sys.argv[4:])
Path(sys.argv[2]).touch()
while not Path(sys.argv[3]).exists():
    time.sleep(0.005)
ensure_synthetic_subject(conf)
"""


def test_runs_started_at_once_on_one_synthetic_subject_generate_it_once(tmp_path):
    """Two runs (a seed sweep of two recipes) reach the subject's first use at the same moment: one
    generates it, the other waits and reuses it, instead of replacing the folder the first reads."""
    overrides = [f"dataset.data_folder={tmp_path / 'data'}", "dataset.subject_name=both", "dataset.synthetic=true",
                 "dataset.synthetic_frames=3", "dataset.train.img_res=[24, 24]", "model.flame_model_path=synthetic"]
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO / "code")}
    runs = [subprocess.Popen([sys.executable, "-c", _ENSURE_AT_ONCE, str(REPO / "confs" / "subject1.conf"),
                              str(tmp_path / f"ready{k}"), str(go), *overrides],
                             stderr=subprocess.PIPE, text=True, env=env) for k in range(2)]
    for k in range(2):  # both loaded and waiting; the wait bounds only a hang
        for _ in range(60000):
            if (tmp_path / f"ready{k}").exists() or runs[k].poll() is not None:
                break
            time.sleep(0.01)
    go.touch()
    logs = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs
    assert sum(log.count("generating subject both") for log in logs) == 1, logs
    assert sum(log.count("another process is generating it; waiting") for log in logs) <= 1
    dataset = FaceDataset(tmp_path / "data", "both", "flame_params.json", VIDEOS, [24, 24])
    assert len(dataset) == 3 * len(VIDEOS)


def test_the_generation_lock_holds_nothing_where_the_file_system_has_no_flock(tmp_path, monkeypatch):
    """A data folder on a file system without flock (some network mounts) still generates."""
    from dynavatar import files

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "no locks available")
    monkeypatch.setattr(files.fcntl, "flock", no_flock)
    with files.waiting_lock(tmp_path / "sub" / ".x.generating", "waiting"):
        assert (tmp_path / "sub" / ".x.generating").is_file()
    monkeypatch.undo()
    monkeypatch.setattr(files.fcntl, "flock", lambda fd, operation: (_ for _ in ()).throw(OSError(errno.EIO, "io")))
    with pytest.raises(OSError, match="io"):  # any other failure is not hidden
        with files.waiting_lock(tmp_path / ".y.generating", "waiting"):
            pass


def test_a_folder_not_written_by_the_generator_is_never_replaced(tmp_path):
    from dynavatar.config import load_conf
    from dynavatar.subject_generator.subject import ensure_synthetic_subject, generate_subject
    from dynavatar.errors import DatasetError

    real = tmp_path / "datasets" / "person" / "person" / "MVI_1810"
    real.mkdir(parents=True)
    (real / "flame_params.json").write_text("{}")
    with pytest.raises(DatasetError, match="never replaced"):
        generate_subject(tmp_path / "datasets", "person", res=16, frames=1, overwrite=True)
    conf = load_conf(Path(__file__).resolve().parents[1] / "confs" / "demo.conf",
                     [f"dataset.data_folder={tmp_path / 'datasets'}", "dataset.subject_name=person"])
    with pytest.raises(DatasetError, match="never replaced"):  # a mistyped sub_dir must not wipe real data
        ensure_synthetic_subject(conf)
    assert (real / "flame_params.json").read_text() == "{}"


def test_a_generated_subject_follows_the_conf_when_its_settings_change(tmp_path, caplog):
    """dataset.synthetic_frames / synthetic_seed / the image size changed for a subject that exists:
    it is generated again (deterministic), with a warning, never silently reused."""
    base = [f"dataset.data_folder={tmp_path}", "dataset.subject_name=demo", "dataset.synthetic=true",
            "dataset.synthetic_frames=2", "dataset.train.img_res=[16, 16]", "model.flame_model_path=synthetic"]
    target = ensure_synthetic_subject(load_conf(REPO / "confs" / "subject1.conf", base))
    images = target / "demo" / "MVI_1810" / "image"
    assert len(list(images.iterdir())) == 2
    caplog.set_level("WARNING")
    ensure_synthetic_subject(load_conf(REPO / "confs" / "subject1.conf", [*base, "dataset.synthetic_frames=3"]))
    assert len(list(images.iterdir())) == 3
    assert "generated with frames=2; the conf asks for frames=3: generating it again" in caplog.text
    before = (target / "demo" / "MVI_1810" / "flame_params.json").read_text()
    ensure_synthetic_subject(load_conf(REPO / "confs" / "subject1.conf",
                                       [*base, "dataset.synthetic_frames=3", "dataset.synthetic_seed=1"]))
    assert (target / "demo" / "MVI_1810" / "flame_params.json").read_text() != before
    assert "seed=0; the conf asks for seed=1" in caplog.text


def test_an_unusable_render_device_is_one_message(tmp_path, caplog):
    from dynavatar.cli.make_synthetic_subject import main
    assert main(["--out", str(tmp_path), "--subject", "a", "--res", "16", "--frames", "1", "--device", "tpu"]) == 1
    assert "--device = 'tpu' is not a device" in caplog.text
    assert not any(tmp_path.iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_rendered_on_a_gpu_as_on_the_cpu(subject, tmp_path):
    """The same subject rendered on the GPU: the same parameters, images equal up to rounding."""
    generate_subject(tmp_path, "synth", res=RES, frames=FRAMES, seed=3, device="cuda")
    for video in VIDEOS:
        a = subject / "synth" / "synth" / video
        b = tmp_path / "synth" / "synth" / video
        pa, pb = (json.loads((f / "flame_params.json").read_text()) for f in (a, b))
        for fa, fb in zip(pa["frames"], pb["frames"], strict=True):
            for key in ("world_mat", "expression", "pose", "flame_keypoints", "bbox"):
                assert np.allclose(fa[key], fb[key], atol=1e-5), key
        for k in range(1, FRAMES + 1):
            for sub in ("image", "mask"):
                ia, ib = (np.asarray(Image.open(f / sub / f"{k}.png"), dtype=np.int16) for f in (a, b))
                diff = np.abs(ia - ib)
                assert diff.mean() < 0.05 and (diff > 2).mean() < 0.002, (video, sub, k)
