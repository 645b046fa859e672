"""The dataset checker: a clean generated subject passes; each kind of planted defect is found and
named by file and frame; all problems are reported at once; the CLI's exit codes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dynavatar.config import load_conf
from dynavatar.data.checker import check_conf, check_path, check_sub_dir
from dynavatar.subject_generator.subject import generate_subject

REPO = Path(__file__).resolve().parents[1]
VIDEOS = ["MVI_1810", "MVI_1814", "MVI_1812"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    generate_subject(root, "subject1", res=24, frames=3, seed=1)
    return root


@pytest.fixture
def data(pristine, tmp_path):
    """A fresh copy of the clean subject to plant defects in; returns the video folder MVI_1810."""
    shutil.copytree(pristine, tmp_path / "datasets")
    return tmp_path / "datasets" / "subject1" / "subject1" / "MVI_1810"


def edit_json(video: Path, edit) -> None:
    path = video / "flame_params.json"
    params = json.loads(path.read_text())
    edit(params)
    path.write_text(json.dumps(params))


def problems_of(video: Path):
    return check_sub_dir(video).problems


def only_problem(video: Path):
    problems = problems_of(video)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def test_clean_subject_passes(pristine):
    for path in (pristine / "subject1", pristine / "subject1" / "subject1", pristine):
        report = check_path(path)
        assert report.clean, [str(p) for p in report.problems]
        assert report.videos == 3 and report.frames == 9
    conf = load_conf(REPO / "confs" / "subject1.conf", [f"dataset.data_folder={pristine}"])
    assert check_conf(conf).clean


def test_missing_video_folder(data):
    shutil.rmtree(data)
    conf = load_conf(REPO / "confs" / "subject1.conf", [f"dataset.data_folder={data.parents[2]}"])
    problems = check_conf(conf).problems
    assert len(problems) == 1 and problems[0].path == str(data) and "not found" in problems[0].message


def test_missing_mask_folder_is_reported_once(data):
    shutil.rmtree(data / "mask")
    problem = only_problem(data)
    assert problem.path == str(data / "mask") and "folder not found" in problem.message


def test_missing_image(data):
    (data / "image" / "2.png").unlink()
    problem = only_problem(data)
    assert problem.path == str(data / "image" / "2.png") and problem.frame == "frame 2"
    assert "image not found" in problem.message


def test_missing_mask(data):
    (data / "mask" / "3.png").unlink()
    problem = only_problem(data)
    assert problem.path == str(data / "mask" / "3.png") and problem.frame == "frame 3"


def test_unreadable_image(data):
    (data / "image" / "1.png").write_bytes(b"\x89PNG garbage")
    problem = only_problem(data)
    assert problem.path == str(data / "image" / "1.png") and problem.frame == "frame 1"
    assert "cannot read the image" in problem.message


def test_truncated_mask(data):
    path = data / "mask" / "2.png"
    path.write_bytes(path.read_bytes()[:60])
    problem = only_problem(data)
    assert problem.path == str(path) and problem.frame == "frame 2" and "cannot read the mask" in problem.message


def test_image_and_mask_of_different_sizes(data):
    Image.new("L", (20, 24), 255).save(data / "mask" / "3.png")
    problem = only_problem(data)
    assert problem.path == str(data / "mask" / "3.png") and problem.frame == "frame 3"
    assert "differs from the image" in problem.message


@pytest.mark.parametrize("key, value, wanted", [
    ("expression", [0.0] * 100, "'expression' must be 50"),
    ("pose", [0.0] * 12, "'pose' must be 15"),
    ("world_mat", [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -4], [0, 0, 0, 1]], "'world_mat' must be a 3x4"),
    ("flame_keypoints", [[1.7, 0.2]] * 68, "'flame_keypoints' out of the image range"),
    ("flame_keypoints", [[0.1, 0.2]] * 5, "'flame_keypoints' must be 68"),
    ("bbox", [0.5, -0.2, -0.5, 0.3], "'bbox'"),
    ("bbox", [-0.5, -0.2, 0.5, 2.3], "'bbox'"),
])
def test_bad_frame_fields(data, key, value, wanted):
    edit_json(data, lambda p: p["frames"][1].__setitem__(key, value))
    problem = only_problem(data)
    assert problem.path == str(data / "flame_params.json") and problem.frame == "frame 2"
    assert wanted in problem.message


def test_duplicate_frame_ids(data):
    edit_json(data, lambda p: p["frames"].append(dict(p["frames"][0])))
    problem = only_problem(data)
    assert "duplicate frame id 1" in problem.message and problem.frame == "frames[3]"


def test_malformed_json(data):
    (data / "flame_params.json").write_text('{"frames": [1, 2,')
    problem = only_problem(data)
    assert problem.path == str(data / "flame_params.json") and "malformed json" in problem.message


def test_missing_json(data):
    (data / "flame_params.json").unlink()
    assert "not found" in only_problem(data).message


def test_bad_intrinsics_and_shape(data):
    edit_json(data, lambda p: p.update(intrinsics=[3.0, 3.0, 0.5, 0.5], shape_params=[0.0] * 50))
    messages = [p.message for p in problems_of(data)]
    assert any("fx must be negative" in m for m in messages) and any("'shape_params'" in m for m in messages)


def test_semantic_label_out_of_range(data):
    Image.new("L", (24, 24), 40).save(data / "semantic" / "1.png")
    problem = only_problem(data)
    assert problem.path == str(data / "semantic" / "1.png") and "label 40" in problem.message


def test_every_problem_at_once(data):
    (data / "image" / "1.png").unlink()
    (data / "mask" / "2.png").write_bytes(b"junk")
    edit_json(data, lambda p: p["frames"][2].__setitem__("pose", [0.0]))
    problems = problems_of(data)
    assert {(Path(p.path).name, p.frame) for p in problems} == {
        ("1.png", "frame 1"), ("2.png", "frame 2"), ("flame_params.json", "frame 3")}


def _cli(*args):
    return subprocess.run([sys.executable, "scripts/check_dataset.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


def test_cli_exit_codes(data):
    clean = _cli("--conf", "confs/subject1.conf", f"dataset.data_folder={data.parents[2]}")
    assert clean.returncode == 0, clean.stderr
    (data / "mask" / "1.png").unlink()
    found = _cli("--path", data.parents[1], "-q")
    assert found.returncode == 1 and "mask" in found.stderr and "frame 1" in found.stderr
    assert "checking " not in found.stderr  # -q: no progress bars
    assert "checking " in _cli("--path", data.parents[1]).stderr
    assert _cli().returncode == 2  # neither --conf nor --path
    assert _cli("--conf", "confs/no_such.conf").returncode == 2
