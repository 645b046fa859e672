"""Videos and evaluation images: mp4 frame count, PNG, erode-dilate, heat maps, panels."""

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from dynavatar.export.images import (colormap, erode_dilate, error_heatmap, save_png, side_by_side,
                                     to_uint8)
from dynavatar.export.video import write_mp4


def test_mp4_frame_count_and_even_padding(tmp_path):
    frames = [np.full((33, 47, 3), 30 * i, np.uint8) for i in range(7)]
    n = write_mp4(tmp_path / "v" / "clip.mp4", iter(frames), fps=10)
    assert n == 7
    reader = imageio.get_reader(tmp_path / "v" / "clip.mp4")
    read = [frame for frame in reader]  # list() trips on the reader's infinite length hint
    assert len(read) == 7 and read[0].shape == (34, 48, 3)
    assert reader.get_meta_data()["fps"] == pytest.approx(10)
    assert abs(int(read[3][:33, :47].mean()) - 90) <= 3  # content survives the encoding
    assert [p.name for p in (tmp_path / "v").iterdir()] == ["clip.mp4"]


def test_mp4_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "a.mp4", [np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="shape"):
        write_mp4(tmp_path / "a.mp4", [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)])
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(tmp_path / "a.mp4", [])
    assert list(tmp_path.iterdir()) == []
    assert write_mp4(tmp_path / "t.mp4", [torch.zeros(16, 16, 3, dtype=torch.uint8)] * 2) == 2


def test_png_round_trip(tmp_path):
    img = torch.rand(12, 10, 3)
    save_png(tmp_path / "a.png", img)
    back = np.asarray(Image.open(tmp_path / "a.png"))
    assert back.shape == (12, 10, 3) and np.array_equal(back, to_uint8(img).numpy())
    assert to_uint8(torch.tensor([0.0, 0.5 / 255 + 1e-6, 1.2, -1.0])).tolist() == [0, 1, 255, 0]


def _brute_opening(img, k=3):
    """min then max over the k x k neighbourhood clipped to the image (cv2's default border)."""
    h, w = img.shape[:2]
    r = k // 2

    def filt(x, op):
        out = np.empty_like(x)
        for i in range(h):
            for j in range(w):
                out[i, j] = op(x[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1], axis=(0, 1))
        return out
    return filt(filt(img, np.min), np.max)


def test_erode_dilate_planted_pattern():
    img = torch.ones(16, 16, 3)            # white background
    img[3:11, 3:11] = 0.2                  # dark head region ...
    img[6, 6] = 1.0                        # ... with a one-pixel hole showing the background
    img[13, 13] = 0.0                      # an isolated dark pixel on the background
    img[0, 0] = 0.5                        # and one in the corner
    out = erode_dilate(img)
    assert out[6, 6].tolist() == pytest.approx([0.2] * 3)        # bright hole filled
    assert torch.equal(out[3:11, 3:11], torch.full((8, 8, 3), 0.2))
    assert out[13, 13].tolist() == [0.0] * 3 and out[0, 0].tolist() == [0.5] * 3  # dark specks kept
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[3:11, 3:11] = False
    mask[13, 13] = mask[0, 0] = False
    assert (out[mask] == 1.0).all()       # the background is unchanged


def test_erode_dilate_matches_brute_force_and_batches():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 9, 13, 3, generator=g)
    out = erode_dilate(img)
    assert out.shape == img.shape
    for b in range(2):
        assert np.array_equal(out[b].numpy(), _brute_opening(img[b].numpy()))
    assert torch.equal(erode_dilate(img[1]), out[1])


def test_error_heatmap():
    a = torch.zeros(4, 5, 3)
    b = a.clone()
    b[0, 0] = 0.3
    heat = error_heatmap(a, b)
    assert heat.shape == (4, 5, 3) and heat.dtype == torch.float32
    assert np.allclose(heat[0, 0].numpy(), colormap(np.array(1.0)))   # largest error: top colour
    assert np.allclose(heat[1, 1].numpy(), colormap(np.array(0.0)))   # no error: bottom colour
    fixed = error_heatmap(a, b, vmax=0.6)
    assert np.allclose(fixed[0, 0].numpy(), colormap(np.array(0.5)))
    assert torch.isfinite(error_heatmap(a, a)).all()
    assert ((heat >= 0) & (heat <= 1)).all()


def test_side_by_side():
    a, b = torch.zeros(6, 4, 3), torch.ones(6, 5, 3)
    out = side_by_side([a, b], gap=2)
    assert out.shape == (6, 11, 3) and torch.equal(out[:, :4], a) and (out[:, 4:] == 1).all()
    with pytest.raises(ValueError):
        side_by_side([a, torch.zeros(5, 4, 3)])
