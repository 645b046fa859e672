"""The synthetic subjects' test motions: near (the default, unchanged), extrapolate (beyond the
training videos in amplitude, in combinations and in pose) and expressions (beyond them in
expression only), checked on the motions themselves."""

import json
from pathlib import Path

import numpy as np
import pytest

from dynavatar.cli import make_synthetic_subject
from dynavatar.config import load_conf
from dynavatar.errors import ConfigError, DatasetError
from dynavatar.subject_generator.motion import (EXTRAPOLATION, HEAD, JAW, LEADING, NEVER_TOGETHER, subject_motions,
                                                video_motion)
from dynavatar.subject_generator.subject import SYNTHETIC_MARKER, ensure_synthetic_subject

REPO = Path(__file__).resolve().parents[1]
BASE = np.array([0.0, -0.1, -4.0])


def split(seed: int, frames: int = 100, kind: str = "extrapolate") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(training expressions, training poses, test expressions, test poses) of a subject of test motion `kind`."""
    motions = subject_motions(kind, frames, seed, BASE, n_train=2, n_test=1)
    train, test = motions[:2], motions[2:]
    return (np.concatenate([m.expressions.numpy() for m in train]), np.concatenate([m.poses.numpy() for m in train]),
            np.concatenate([m.expressions.numpy() for m in test]), np.concatenate([m.poses.numpy() for m in test]))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["extrapolate", "expressions"])
def test_an_extrapolating_test_goes_beyond_the_training_videos(seed, kind):
    train_e, train_p, test_e, test_p = split(seed, kind=kind)
    # Leading expression components, head pitch and yaw, and the jaw: 1.5 times the training extremes.
    train_peak, test_peak = np.abs(train_e).max(0), np.abs(test_e).max(0)
    assert np.allclose(test_peak[list(LEADING)], EXTRAPOLATION * train_peak[list(LEADING)], rtol=1e-5)
    if kind == "extrapolate":
        assert test_peak[0] > train_peak[0]  # mouth open follows the wider jaw
        for axis in (*HEAD, JAW):
            assert np.abs(test_p[:, axis]).max() == pytest.approx(EXTRAPOLATION * np.abs(train_p[:, axis]).max(), rel=1e-5)
    else:
        # The head's turns and the jaw stay within the training extremes (a near test video's random
        # turns reach 2.1 times them on seed 2), the eyes are the near test video's, and the training
        # videos are those of an extrapolating subject.
        near = subject_motions("near", 100, seed, BASE, n_train=2, n_test=1)[2].poses.numpy()
        for axis in (*HEAD, JAW):
            assert np.abs(test_p[:, axis]).max() <= np.abs(train_p[:, axis]).max() * (1 + 1e-6)
            assert np.corrcoef(test_p[:, axis], near[:, axis])[0, 1] > 0.999  # the near curve, scaled at most
        assert np.array_equal(test_p[:, 9:], near[:, 9:])
        assert np.array_equal(train_e, split(seed)[0]) and np.array_equal(train_p, split(seed)[1])
    for a, b in NEVER_TOGETHER:
        # Training never moves both of a pair at once (a component at rest is exactly neutral) ...
        assert not np.any((train_e[:, a] != 0) & (train_e[:, b] != 0))
        assert np.any(train_e[:, a] != 0) and np.any(train_e[:, b] != 0)  # ... though it shows each of them
        # ... the test drives both beyond their training extremes in the same frame.
        together = (np.abs(test_e[:, a]) > train_peak[a]) & (np.abs(test_e[:, b]) > train_peak[b])
        assert together.any()


def test_motions_are_deterministic_and_the_near_default_is_unchanged():
    first, again = split(4), split(4)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not np.array_equal(split(5)[2], first[2])
    # The near kind is the motion subjects were generated with before test kinds existed: video i
    # draws from the generator seeded [seed, 100 + i] (values pinned from that generator).
    near = subject_motions("near", 30, 0, BASE, n_train=2, n_test=1)
    same = video_motion(30, np.random.default_rng([0, 102]), BASE, test=True)
    assert np.array_equal(near[2].expressions.numpy(), same.expressions.numpy())
    assert near[0].expressions[0, :3].tolist() == pytest.approx([-0.27956295, -1.42172360, -1.69044840], rel=1e-6)
    assert near[2].poses[5, [0, 1, 6]].tolist() == pytest.approx([-0.16338614, -0.32456201, 0.10521475], rel=1e-6)
    with pytest.raises(DatasetError, match="near, extrapolate, expressions"):
        subject_motions("far", 30, 0, BASE, n_train=2, n_test=1)
    for kind in ("extrapolate", "expressions"):
        with pytest.raises(DatasetError, match="at least one"):
            subject_motions(kind, 30, 0, BASE, n_train=0, n_test=1)


def test_a_conf_asks_for_an_extrapolating_subject_and_never_reuses_a_near_one(tmp_path, caplog):
    base = [f"dataset.data_folder={tmp_path}", "dataset.subject_name=s", "dataset.synthetic=true",
            "dataset.synthetic_frames=2", "dataset.train.img_res=[16, 16]", "model.flame_model_path=synthetic"]
    near = ensure_synthetic_subject(load_conf(REPO / "confs" / "demo.conf", base))
    marker = near / SYNTHETIC_MARKER
    # A subject written before test motions had kinds (no key in its marker) is a near one: reused.
    recorded = json.loads(marker.read_text())
    assert recorded.pop("test_motion") == "near"
    marker.write_text(json.dumps(recorded))
    test_json = near / "s" / "MVI_1812" / "flame_params.json"
    before = test_json.read_text()
    ensure_synthetic_subject(load_conf(REPO / "confs" / "demo.conf", base))
    assert test_json.read_text() == before
    caplog.set_level("WARNING")
    ensure_synthetic_subject(load_conf(REPO / "confs" / "demo.conf", [*base, "dataset.synthetic_test_motion=extrapolate"]))
    assert "test_motion='near'; the conf asks for test_motion='extrapolate'" in caplog.text
    assert json.loads(marker.read_text())["test_motion"] == "extrapolate"
    assert test_json.read_text() != before
    with pytest.raises(ConfigError, match="synthetic_test_motion"):
        load_conf(REPO / "confs" / "demo.conf", [*base, "dataset.synthetic_test_motion=far"])


@pytest.mark.parametrize("kind", ["extrapolate", "expressions"])
def test_the_command_line_writes_an_extrapolating_subject(tmp_path, kind):
    args = ["--out", str(tmp_path), "--subject", "x", "--res", "16", "--frames", "2", "--test_motion", kind]
    assert make_synthetic_subject.main(args) == 0
    assert json.loads((tmp_path / "x" / SYNTHETIC_MARKER).read_text())["test_motion"] == kind
