"""Input a hostile user gives, found before any work and named in one line: a truncated PNG in the
test split, a mask of another size than its image, a NaN in flame_params.json, an empty video folder
under a checked subject, a synthetic subject named with '/' or reached through a link, files that
are not videos (or a folder) given to preprocessing, and network or point settings that cannot run.
Also: outputs are written with the permissions of ordinary files."""

from __future__ import annotations

import json
import math
import shutil
import stat
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from dynavatar.cli import check_dataset, exp_runner
from dynavatar.config import load_conf
from dynavatar.errors import ConfigError, DatasetError
from dynavatar.data.flame_params import read_flame_params
from dynavatar.export.images import save_png
from dynavatar.export.ply import save_gaussians_ply
from dynavatar.export.video import write_mp4
from dynavatar.preprocess.errors import PreprocessError
from dynavatar.preprocess.frames import probe_video
from dynavatar.subject_generator.subject import ensure_synthetic_subject
from dynavatar.train.trainer import Trainer, TrainOptions
from tiny_experiment import DEMO, SUBJECT, tiny_conf


@pytest.fixture
def data(data_folder, tmp_path) -> Path:
    """A copy of the tiny subject's data folder, to damage."""
    shutil.copytree(data_folder, tmp_path / "datasets")
    return tmp_path / "datasets"


def video(data: Path, name: str) -> Path:
    return data / SUBJECT / SUBJECT / name


def test_a_truncated_png_in_the_test_split_stops_the_run_before_training(data, tmp_path):
    png = video(data, "MVI_1812") / "image" / "4.png"  # not among the plotted frames (1 and 5)
    png.write_bytes(png.read_bytes()[: png.stat().st_size * 2 // 3])
    with pytest.raises(DatasetError, match=r"MVI_1812/image/4.png \(MVI_1812 frame 4\): cannot read the image "
                                           r"\(.*truncated"):
        Trainer(tiny_conf(data, tmp_path / "exps", "dataset.test.subsample=4"), TrainOptions(nepoch=1))
    assert not (tmp_path / "exps").exists()


@pytest.mark.parametrize("video_name, frame", [("MVI_1810", 2), ("MVI_1812", 4)])  # preloaded; read per frame
def test_a_mask_of_another_size_than_its_image_is_refused_not_resized(data, tmp_path, video_name, frame):
    mask = video(data, video_name) / "mask" / f"{frame}.png"
    Image.open(mask).resize((16, 16)).save(mask)
    with pytest.raises(DatasetError, match=rf"{video_name}/mask/{frame}.png.*mask size 16x16 differs from the "
                                           rf"image's 32x32"):
        Trainer(tiny_conf(data, tmp_path / "exps", "dataset.test.subsample=4"), TrainOptions(nepoch=1))


def test_a_nan_in_flame_params_is_named_as_such(data):
    path = video(data, "MVI_1810") / "flame_params.json"
    content = json.loads(path.read_text())
    content["frames"][1]["expression"][7] = math.nan  # json.dump writes NaN, json.load reads it
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=r"\(frame 2\): 'expression' must be 50 finite numbers, got nan at index 7$"):
        read_flame_params(path)


def test_checking_a_subject_reports_an_empty_video_folder(data, caplog):
    subject = data / SUBJECT
    assert check_dataset.main(["--path", str(subject), "-q"]) == 0
    (subject / SUBJECT / "MVI_1816").mkdir()
    assert check_dataset.main(["--path", str(subject), "-q"]) == 1
    assert "MVI_1816: empty folder among the videos" in caplog.text


def synthetic_conf(data_folder: Path, subject: str, frames: int = 1):
    return load_conf(DEMO, [f"dataset.data_folder={data_folder}", f"dataset.subject_name={subject}",
                            "dataset.synthetic=true", f"dataset.synthetic_frames={frames}",
                            "dataset.train.img_res=[8, 8]", "dataset.test.img_res=[8, 8]"])


def test_a_synthetic_subject_named_with_a_slash_or_reached_through_a_link(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        exp_runner.main(["--conf", DEMO, f"dataset.data_folder={tmp_path}", "dataset.subject_name=a/b",
                         "dataset.synthetic=true"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err == ("error: subject name 'a/b' must be one folder name, without '/' "
                                            "(dataset.subject_name)")
    assert not list(tmp_path.iterdir())
    # A linked subject is generated again where the link points, the link kept.
    real = ensure_synthetic_subject(synthetic_conf(tmp_path / "elsewhere", "person"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "person").symlink_to(real, target_is_directory=True)
    assert ensure_synthetic_subject(synthetic_conf(tmp_path / "data", "person", frames=2)) == tmp_path / "data" / "person"
    assert (tmp_path / "data" / "person").is_symlink()
    assert len(list((real / "person" / "MVI_1812" / "image").iterdir())) == 2


def test_preprocessing_names_a_file_that_is_no_video_in_a_few_words(tmp_path):
    audio_only = tmp_path / "talk.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "anullsrc=r=8000:cl=mono", "-t", "0.2", str(audio_only)], check=True)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    for path, reason in ((audio_only, "no video stream"), (text, "Invalid data found when processing input")):
        with pytest.raises(PreprocessError) as info:
            probe_video(path)
        message = str(info.value)
        assert "\n" not in message and len(message) < 250 and reason in message and "ffmpeg version" not in message
    with pytest.raises(PreprocessError, match="is a folder, not a video file"):
        probe_video(tmp_path)


@pytest.mark.parametrize("override, key", [
    ("model.geometry_network.dims=[]", "model.geometry_network.dims"),
    ("model.deformer_network.dims=[]", "model.deformer_network.dims"),
    ("model.geometry_network.skip_in=[0]", "model.geometry_network.skip_in"),
    ("model.prune_thresh=2", "model.prune_thresh"), ("model.prune_thresh=1", "model.prune_thresh"),
    ("model.point_cloud.max_points=300", "model.point_cloud.max_points"),  # below the demo's 400 initial points
])
def test_settings_that_cannot_run_are_refused_at_load(override, key):
    with pytest.raises(ConfigError, match=rf"key '{key}' (must|\()"):
        load_conf(DEMO, [override])


def test_outputs_have_the_permissions_of_ordinary_files(tmp_path):
    reference = tmp_path / "metrics.json"
    reference.write_text("{}")
    wanted = stat.S_IMODE(reference.stat().st_mode)
    image = torch.rand(16, 16, 3)
    written = [save_png(tmp_path / "a.png", image), tmp_path / "a.mp4", tmp_path / "a.ply"]
    write_mp4(written[1], [np.zeros((16, 16, 3), np.uint8)] * 2)
    n = 4
    save_gaussians_ply(written[2], torch.zeros(n, 3), torch.tensor([[1.0, 0, 0, 0]] * n), torch.ones(n, 3) * 0.01,
                       torch.full((n,), 0.5), torch.rand(n, 3))
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: wanted for p in written}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
