"""One background model per subject (preprocess/background.py), on generated videos with true mattes.

The subject has a volume of hair of the set's dark colour over the crown, before a lit panel on a
dark set; it drifts sideways
over its training videos, and its test clip is 4 frames long (the head barely moves).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_preprocess_units import needs_opencv

NAMES = ("train1", "train2", "test1")


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    needs_opencv()
    from dynavatar.preprocess.synthetic_video import make_synthetic_videos

    folder = tmp_path_factory.mktemp("background") / "videos"
    make_synthetic_videos(folder, res=128, frames=40, seed=1, videos=NAMES, scale=1.5, backdrop="dark",
                          lengths={"test1": 4}, hair=True, sway=0.2)
    return folder


def test_short_clip_keeps_its_hair_with_the_subjects_background(short_clip):
    """Learnt from the short clip alone, its background misses what lies behind the head (the
    colour model decides there); pooled over the subject's videos, the clip's masks are at least as
    good, and with the pooled background and with the clean plate every video's reach IoU 0.95."""
    from dynavatar.preprocess.mask_accuracy import video_ious

    ious = video_ious(short_clip, NAMES, 128)
    assert ious["subject"]["test1"] >= ious["video"]["test1"], ious
    assert min(ious["subject"].values()) >= 0.95, ious
    assert min(ious["plate"].values()) >= 0.95, ious


def test_masks_for_a_small_output_are_made_at_128_px(short_clip, monkeypatch):
    """At 64 px the masks are made at 128 px of the crop's source and area-averaged: every video's
    IoU at least 0.97 and above that of masks made at 64 px (measured 0.976 / 0.979 / 0.988 against
    0.965 / 0.971 / 0.979; on 27 videos of three backdrops every one gained)."""
    from dynavatar.preprocess import masks
    from dynavatar.preprocess.mask_accuracy import video_ious

    made_at_128 = video_ious(short_clip, NAMES, 64, kinds=("subject",))["subject"]
    monkeypatch.setattr(masks, "MASK_MIN_RES", 0)  # masks made at the output size
    made_at_64 = video_ious(short_clip, NAMES, 64, kinds=("subject",))["subject"]
    assert min(made_at_128.values()) >= 0.97, made_at_128
    assert all(made_at_128[name] > made_at_64[name] for name in NAMES), (made_at_128, made_at_64)


def sampled_videos(folder, dimmed: str | None = None) -> list:
    """Every 4th frame of each video as the background step samples it (64 px crops); the video
    `dimmed` lit at 60 %."""
    from dynavatar.preprocess.background import VideoSample
    from dynavatar.preprocess.crop import square_crop
    from dynavatar.preprocess.frames import FrameSelection, iter_frames, probe_video

    marks = json.loads((folder / "landmarks.json").read_text())
    samples = []
    for name in NAMES:
        info = probe_video(folder / f"{name}.mp4")
        frames = [frame for _, frame in iter_frames(info, FrameSelection())][::4]
        points = np.array([marks[name][str(k)] for k in range(0, 4 * len(frames), 4)][:len(frames)])
        crop = square_crop(points, info.width, info.height, 64)
        windows = np.stack([crop.window(f) for f in frames])
        if name == dimmed:
            windows = (windows * 0.6).astype(np.uint8)
        samples.append(VideoSample(name, crop, (info.width, info.height), windows, crop.points_to_crop(points)))
    return samples


def test_a_video_of_another_scene_keeps_its_own_background(short_clip, caplog):
    """A video whose backdrop differs (here: lit at 60 %) is not pooled with the others: it keeps a
    background of its own, named in a warning; the others still share theirs."""
    from dynavatar.preprocess.background import subject_backgrounds

    result = subject_backgrounds(sampled_videos(short_clip, dimmed="train2"))
    assert result.kinds == ["subject", "video", "subject"]
    assert len(result.warnings) == 1 and result.warnings[0].startswith("train2:")
    assert "train2:" in caplog.text


def test_frames_segmented_on_several_threads_give_the_masks_of_one(short_clip):
    """The background models made with frames segmented three at a time equal those made one frame
    after the other, and a frame's mask does not depend on the frames segmented before it (GrabCut's
    random start is seeded per frame)."""
    from dynavatar.preprocess.background import subject_backgrounds
    from dynavatar.preprocess.masks import MaskOptions, map_frames, segment

    samples = sampled_videos(short_clip)
    one, three = (subject_backgrounds(samples, MaskOptions(workers=w)) for w in (1, 3))
    for a, b in zip(one.models, three.models):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.seen, b.seen)
    frames, points, model = samples[0].frames(), samples[0].points, one.models[0]
    first = segment(frames[2], points[2], model, MaskOptions())
    segment(frames[0], points[0], model, MaskOptions())
    assert np.array_equal(segment(frames[2], points[2], model, MaskOptions()), first)
    assert list(map_frames(lambda k: k * k, range(20), 4)) == [k * k for k in range(20)]


def test_clean_plate_must_have_the_videos_size(tmp_path):
    needs_opencv()
    from dynavatar.data.images import write_rgb
    from dynavatar.preprocess.background import read_clean_plate
    from dynavatar.preprocess.errors import PreprocessError

    write_rgb(tmp_path / "plate.png", np.full((40, 60, 3), 0.5))
    assert read_clean_plate(tmp_path / "plate.png", (60, 40)).shape == (40, 60, 3)
    with pytest.raises(PreprocessError, match="60x40, the videos 64x48"):
        read_clean_plate(tmp_path / "plate.png", (64, 48))
