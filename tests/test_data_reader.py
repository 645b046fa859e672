"""The IMavatar-format reader: items, compositing, image formats, subsample, expression statistics,
intrinsics formats, errors naming file and frame, conf wiring."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynavatar.config import load_conf
from dynavatar.data.flame_params import read_flame_params
from dynavatar.data.batch import collate
from dynavatar.data.reader import FaceDataset, dataset_from_conf
from dynavatar.data.subsample import select_frames
from dynavatar.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parents[1]
H, W = 6, 8
INTRINSICS = [-3.0, 3.1, 0.5, 0.48]


def write_video(folder: Path, n: int = 5, first_id: int = 1, size=(H, W), image_mode="RGB", mask_mode="L",
                intrinsics=INTRINSICS, semantic=False, seed=0) -> dict:
    """A small video in the IMavatar layout with random images and soft masks; returns its json."""
    rng = np.random.default_rng(seed)
    for sub in ("image", "mask") + (("semantic",) if semantic else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    frames = []
    for k in range(first_id, first_id + n):
        channels = {"RGB": 3, "RGBA": 4, "L": 1}
        img = rng.integers(0, 256, (*size, channels[image_mode]), dtype=np.uint8)
        Image.fromarray(img[..., 0] if image_mode == "L" else img, image_mode).save(folder / "image" / f"{k}.png")
        mask = rng.integers(0, 256, size, dtype=np.uint8)
        if mask_mode == "RGB":
            Image.fromarray(np.stack([mask, 255 - mask, mask // 2], -1), "RGB").save(folder / "mask" / f"{k}.png")
        else:
            Image.fromarray(mask, "L").save(folder / "mask" / f"{k}.png")
        if semantic:
            Image.fromarray(rng.integers(0, 18, size, dtype=np.uint8), "L").save(folder / "semantic" / f"{k}.png")
        frames.append({"file_path": f"./image/{k}",
                       "world_mat": [[1, 0, 0, 0.01 * k], [0, 1, 0, 0], [0, 0, 1, -4]],
                       "expression": (k + 0.01 * np.arange(50)).tolist(),
                       "pose": (0.001 * k * np.ones(15)).tolist(),
                       "bbox": [-0.5, -0.5, 0.5, 0.5],
                       "flame_keypoints": np.zeros((68, 2)).tolist()})
    params = {"frames": frames, "intrinsics": intrinsics, "shape_params": np.linspace(-1, 1, 100).tolist()}
    (folder / "flame_params.json").write_text(json.dumps(params))
    return params


@pytest.fixture
def data(tmp_path):
    """Two videos of subject 'subj': A (frames 1-5) and B (frames 1-4)."""
    root = tmp_path / "datasets"
    write_video(root / "subj" / "subj" / "A", n=5, seed=1)
    write_video(root / "subj" / "subj" / "B", n=4, seed=2)
    return root


def dataset(root, sub_dir=("A", "B"), **kwargs):
    return FaceDataset(root, "subj", "flame_params.json", list(sub_dir), [H, W], **kwargs)


def _png(path):
    return np.asarray(Image.open(path)).astype(np.float32) / 255.0


def test_item_contents_and_white_compositing(data):
    ds = dataset(data)
    assert len(ds) == 9 and ds.img_res == (H, W) and not ds.has_semantic
    assert ds.shape_params.shape == (100,)
    item = ds[6]  # B, frame 2
    assert item.idx.dtype == torch.long and item.idx.tolist() == [6] and len(item) == 1
    assert item.frame_id == [2] and item.sub_dir == ["B"]
    assert item.expression.shape == (1, 50) and item.flame_pose.shape == (1, 15)
    assert item.world_mat.shape == (1, 3, 4) and torch.isclose(item.world_mat[0, 0, 3], torch.tensor(0.02))
    assert torch.allclose(item.intrinsics[0], torch.tensor(INTRINSICS))
    image, mask = _png(data / "subj/subj/B/image/2.png"), _png(data / "subj/subj/B/mask/2.png")
    assert item.rgb.shape == (1, H, W, 3) and item.mask.shape == (1, H, W)
    expected = image * mask[..., None] + (1 - mask[..., None])
    assert np.allclose(item.rgb[0].numpy(), expected, atol=1e-6)
    assert np.allclose(item.mask[0].numpy(), mask)


def test_use_background_keeps_the_raw_image(data):
    gt = dataset(data, use_background=True)[0]
    assert np.allclose(gt.rgb[0].numpy(), _png(data / "subj/subj/A/image/1.png"), atol=1e-6)


def test_rgba_images_rgb_masks_and_grey_images(tmp_path):
    root = tmp_path / "d"
    write_video(root / "subj" / "subj" / "A", n=2, image_mode="RGBA", mask_mode="RGB")
    write_video(root / "subj" / "subj" / "G", n=1, image_mode="L")
    gt = dataset(root, ["A"], use_background=True)[1]
    rgba = _png(root / "subj/subj/A/image/2.png")
    assert np.allclose(gt.rgb[0].numpy(), rgba[..., :3], atol=1e-6)  # alpha dropped, not composited
    assert np.allclose(gt.mask[0].numpy(), _png(root / "subj/subj/A/mask/2.png")[..., 0])  # first channel
    grey = dataset(root, ["G"], use_background=True)[0]
    assert torch.equal(grey.rgb[..., 0], grey.rgb[..., 2])


def test_resize_to_img_res(tmp_path):
    root = tmp_path / "d"
    write_video(root / "subj" / "subj" / "A", n=1, size=(2 * H, 2 * W))
    gt = dataset(root, ["A"])[0]
    assert gt.rgb.shape == (1, H, W, 3) and gt.mask.shape == (1, H, W)
    mask = _png(root / "subj/subj/A/mask/1.png")
    assert abs(gt.mask.mean().item() - mask.mean()) < 0.02  # an area-preserving downsample


@pytest.mark.parametrize("subsample, expected", [
    (1, list(range(9))), (2, [0, 2, 4, 6, 8]), (4, [0, 4, 8]),
    ([3, 7], [3, 4, 5, 6]),  # a [start, end] range over the concatenated frames, end exclusive
    ([0, 5, 8], [0, 5, 8]),  # an explicit list
    ([7, 100], [7, 8]),  # a range end past the last frame is clipped
])
def test_subsample(data, subsample, expected):
    ds = dataset(data, subsample=subsample, load_images=True)
    full = dataset(data)
    assert [(r.sub_dir, r.frame_id) for r in ds.frames] == [(full.frames[i].sub_dir, full.frames[i].frame_id)
                                                            for i in expected]
    # One selection applies to every per-frame list alike.
    for j, i in enumerate(expected):
        item, ref = ds[j], full[i]
        for key in ("expression", "flame_pose", "world_mat", "intrinsics", "rgb", "mask"):
            assert torch.equal(getattr(item, key), getattr(ref, key))


@pytest.mark.parametrize("bad", [0, -1, [5, 2], [], [0, 1, 99], "2", True])
def test_bad_subsample(bad):
    with pytest.raises(DatasetError, match="subsample"):
        select_frames(9, bad)


def test_mean_and_variance_of_the_selected_expressions(data):
    ds = dataset(data, subsample=2, use_mean_expression=True, use_var_expression=True, only_json=True)
    expressions = torch.cat([ds[i].expression for i in range(len(ds))])
    assert ds.mean_expression.shape == (50,) and ds.var_expression.shape == (50,)
    assert torch.allclose(ds.mean_expression, expressions.mean(0))
    assert torch.allclose(ds.var_expression, expressions.var(0))
    off = dataset(data, only_json=True)
    assert torch.equal(off.mean_expression, torch.zeros(50)) and off.var_expression is None


def test_old_pixel_intrinsics_are_normalised(tmp_path):
    root = tmp_path / "d"
    write_video(root / "subj" / "subj" / "A", n=1, intrinsics=[-1539.7, 1508.9, 261.4, 253.2])
    ds = dataset(root, ["A"], only_json=True)
    expected = torch.tensor([-1539.7, 1508.9, 261.4, 253.2]) / 512
    assert torch.allclose(ds[0].intrinsics[0], expected)
    assert torch.allclose(ds[0].intrinsics[0], torch.tensor([-3.0072, 2.9471, 0.5105, 0.4945]), atol=1e-3)
    assert read_flame_params(root / "subj/subj/A/flame_params.json").legacy_intrinsics


def test_read_flame_params_alone(tmp_path):
    params = write_video(tmp_path / "v", n=3, first_id=10)
    for sub in ("image", "mask"):  # reenactment reads a json without any images
        for png in (tmp_path / "v" / sub).iterdir():
            png.unlink()
    fp = read_flame_params(tmp_path / "v" / "flame_params.json")
    assert len(fp) == 3 and fp.frame_ids == [10, 11, 12] and fp.file_paths[0] == "./image/10"
    assert fp.expressions.shape == (3, 50) and fp.poses.shape == (3, 15) and fp.world_mats.shape == (3, 3, 4)
    assert fp.shape_params.shape == (100,) and fp.intrinsics.shape == (4,) and not fp.legacy_intrinsics
    assert fp.frames[0]["bbox"] == params["frames"][0]["bbox"]


def _error(root, **kwargs):
    with pytest.raises(DatasetError) as info:
        dataset(root, **kwargs)
    return str(info.value)


def test_missing_image_or_mask_names_file_and_frame(data):
    (data / "subj/subj/B/image/3.png").unlink()
    message = _error(data)
    assert "B/image/3.png" in message and "frame 3" in message and "image not found" in message
    assert len(dataset(data, only_json=True)) == 9  # only_json needs no images


def test_missing_mask(data):
    (data / "subj/subj/A/mask/4.png").unlink()
    message = _error(data)
    assert "A/mask/4.png" in message and "frame 4" in message and "mask not found" in message


def test_unreadable_image_names_file_and_frame(data):
    (data / "subj/subj/A/image/2.png").write_bytes(b"not a png")
    ds = dataset(data)
    with pytest.raises(DatasetError, match=r"A frame 2: .*A/image/2.png: cannot read the image"):
        ds[1]


def test_bad_json(data):
    (data / "subj/subj/B/flame_params.json").write_text('{"frames": [ {"file_path": ')
    message = _error(data)
    assert "B/flame_params.json" in message and "malformed json" in message


@pytest.mark.parametrize("key, value, wanted", [
    ("expression", [0.0] * 49, "'expression' must be 50"),
    ("pose", [0.0] * 16, "'pose' must be 15"),
    ("world_mat", [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "'world_mat' must be a 3x4"),
])
def test_wrong_lengths_name_file_and_frame(data, key, value, wanted):
    path = data / "subj/subj/A/flame_params.json"
    params = json.loads(path.read_text())
    params["frames"][2][key] = value
    path.write_text(json.dumps(params))
    message = _error(data, only_json=True)
    assert "A/flame_params.json" in message and "frame 3" in message and wanted in message


def test_missing_folder(data):
    message = _error(data, sub_dir=["A", "C"])
    assert "subj/subj/C" in message and "not found" in message


def test_mask_path_replaces_only_the_image_folder(tmp_path):
    root = tmp_path / "image_data" / "images"  # 'image' elsewhere in the path must stay
    write_video(root / "subj" / "subj" / "A", n=2)
    ds = dataset(root, ["A"])
    assert ds.frames[0].mask_path == root / "subj/subj/A/mask/1.png"
    assert ds[1].mask.shape == (1, H, W)


def test_semantic_maps_when_present(tmp_path):
    root = tmp_path / "d"
    write_video(root / "subj" / "subj" / "A", n=2, semantic=True)
    ds = dataset(root, ["A"], load_images=True)
    assert ds.has_semantic
    semantic = ds[1].semantic[0]
    assert semantic.dtype == torch.long and semantic.shape == (H, W)
    assert np.array_equal(semantic.numpy(), np.asarray(Image.open(root / "subj/subj/A/semantic/2.png")))


def test_preloaded_equals_lazy_batches_and_collate(data):
    lazy, loaded = dataset(data), dataset(data, load_images=True)
    for i in (0, 8):
        for name in ("rgb", "mask"):
            assert torch.equal(getattr(lazy[i], name), getattr(loaded[i], name))
    batch = loaded.batch(torch.tensor([0, 1, 2, 3]))
    assert batch.idx.tolist() == [0, 1, 2, 3] and batch.expression.shape == (4, 50)
    assert batch.world_mat.shape == (4, 3, 4) and batch.intrinsics.shape == (4, 4)
    assert batch.sub_dir == ["A"] * 4 and batch.frame_id == [1, 2, 3, 4]
    assert batch.rgb.shape == (4, H, W, 3) and batch.mask.shape == (4, H, W)
    loader = torch.utils.data.DataLoader(lazy, batch_size=4, collate_fn=collate)
    collated = next(iter(loader))
    assert collated.frame_id == batch.frame_id and torch.equal(collated.rgb, batch.rgb)
    assert torch.equal(collated.expression, batch.expression)
    reordered = loaded.batch([3, 0])
    assert torch.equal(reordered.rgb, batch.rgb[[3, 0]]) and reordered.frame_id == [4, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_a_batch_on_the_gpu_is_gathered_without_waiting_for_the_gpu(data):
    """A wait per step would leave the GPU idle while the step after it is launched."""
    loaded = dataset(data, load_images=True).to(torch.device("cuda"))
    expected = loaded.batch(torch.tensor([2, 0, 5]))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any wait for the device raises
    try:
        batch = loaded.batch(torch.tensor([2, 0, 5]))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert batch.idx.is_cuda and batch.idx.tolist() == [2, 0, 5] and torch.equal(batch.rgb, expected.rgb)
    assert batch.frame_id == expected.frame_id and torch.equal(batch.expression, expected.expression)


def test_dataset_from_conf(data):
    overrides = [f"dataset.data_folder={data}", "dataset.subject_name=subj", "dataset.train.sub_dir=[A]",
                 "dataset.test.sub_dir=[B]", f"dataset.train.img_res=[{H}, {W}]",
                 f"dataset.test.img_res=[{H}, {W}]", "dataset.test.subsample=3"]
    conf = load_conf(REPO / "confs" / "subject1.conf", overrides)
    train = dataset_from_conf(conf, "train")
    assert len(train) == 5 and train.var_expression is not None and train.mean_expression.abs().sum() > 0
    # fast.conf's expression prior is undivided: its training data hands the loss no variance.
    fast = dataset_from_conf(load_conf(REPO / "confs" / "fast.conf", overrides), "train")
    assert fast.var_expression is None and torch.equal(fast.mean_expression, train.mean_expression)
    assert [r.frame_id for r in dataset_from_conf(conf, "test").frames] == [1, 4]
    assert len(dataset_from_conf(conf, "test", is_eval=True)) == 4  # evaluation reads every frame
    assert len(dataset_from_conf(conf, "test", subsample=2, only_json=True)) == 2
    with pytest.raises(ConfigError):
        dataset_from_conf(conf, "val")
