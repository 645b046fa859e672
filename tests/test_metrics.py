"""Image metrics: exact values, agreement with scikit-image's SSIM, masks, the training SSIM."""

import math

import pytest
import torch
import torch.nn.functional as F

from dynavatar.metrics import image as M


def _pair(shape, seed=0, noise=0.2):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g)
    b = (a + noise * (torch.rand(shape, generator=g) - 0.5)).clamp(0, 1)
    return a, b


def test_identical_images():
    a, _ = _pair((24, 20, 3))
    assert M.psnr(a, a).item() == math.inf
    assert M.ssim_metric(a, a).item() == pytest.approx(1.0, abs=1e-12)
    assert M.l1(a, a).item() == 0.0 and M.mse(a, a).item() == 0.0
    assert M.ssim_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)


def test_constant_offset_psnr_is_exact():
    # Dyadic values: a + c and the differences are exact in floating point.
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 64, (32, 16, 3), generator=g).double() / 128.0
    for c in (0.125, 0.25, 2.0 ** -7):
        assert M.psnr(a + c, a).item() == pytest.approx(-10.0 * math.log10(c * c), rel=1e-14)
        assert M.l1(a + c, a).item() == c
    x, _ = _pair((40, 30, 3))
    x = x * 0.5
    assert M.psnr(x + 0.1, x).item() == pytest.approx(-10.0 * math.log10(0.01), abs=1e-4)


@pytest.mark.parametrize("shape", [(11, 11, 3), (32, 48, 3), (64, 37, 3), (50, 50, 3), (97, 23, 3)])
def test_ssim_matches_scikit_image(shape):
    skm = pytest.importorskip("skimage.metrics")
    a, b = _pair(shape, seed=shape[0])
    ref = skm.structural_similarity(a.numpy(), b.numpy(), channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0)
    assert M.ssim_metric(a, b).item() == pytest.approx(float(ref), abs=1e-4)
    ref64 = skm.structural_similarity(a.double().numpy(), b.double().numpy(), channel_axis=-1,
                                      gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                      data_range=1.0)
    assert M.ssim_metric(a, b).item() == pytest.approx(float(ref64), abs=1e-10)


def test_batch_gives_one_value_per_image():
    a, b = _pair((3, 20, 26, 3))
    for fn in (M.l1, M.mse, M.psnr, M.ssim_metric):
        batched = fn(a, b)
        assert batched.shape == (3,)
        single = torch.stack([fn(a[i], b[i]) for i in range(3)])
        assert torch.allclose(batched, single, rtol=1e-12, atol=1e-12)
    metrics = M.image_metrics(a, b)
    assert set(metrics) == {"l1", "mse", "psnr", "ssim"} and metrics["ssim"].shape == (3,)


def test_training_ssim_equals_zero_padded_2d_window():
    a, b = _pair((2, 30, 25, 3), seed=5)
    taps = torch.tensor([math.exp(-((i - 5) ** 2) / (2 * 1.5 ** 2)) for i in range(11)], dtype=torch.float64)
    w2 = torch.outer(taps, taps) / taps.sum() ** 2
    x, y = a.double().permute(0, 3, 1, 2), b.double().permute(0, 3, 1, 2)
    filt = lambda t: F.conv2d(t, w2.expand(3, 1, 11, 11), padding=5, groups=3)  # noqa: E731
    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx ** 2, filt(y * y) - my ** 2, filt(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ref = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    assert M.ssim(a.double(), b.double()).item() == pytest.approx(ref.mean().item(), abs=1e-12)
    assert M.ssim_map(a, b).shape == a.shape
    assert M.ssim_map(a, b, valid=True).shape == (2, 20, 15, 3)


def test_training_ssim_is_differentiable():
    a, b = _pair((1, 16, 16, 3), seed=7)
    a.requires_grad_(True)
    M.ssim_loss(a, b).backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_mask_excludes_pixels_in_both_images():
    a, b = _pair((20, 24, 3), seed=3)
    mask = torch.zeros(20, 24)
    mask[4:16, 6:18] = 1.0
    c = b.clone()
    c[mask == 0] = torch.rand(int((mask == 0).sum()), 3)  # differences only where excluded
    d = b.clone()
    assert M.l1(c, d, mask).item() == 0.0
    assert M.psnr(c, d, mask).item() == math.inf
    assert M.ssim_metric(c, d, mask).item() == pytest.approx(1.0, abs=1e-12)
    # The reference's normalisation: masked error summed, divided by ALL pixels and channels.
    expected = ((a - b).abs().double() * mask[..., None]).sum() / a.numel()
    assert M.l1(a, b, mask).item() == pytest.approx(expected.item(), rel=1e-12)
    # Excluded pixels are set to the fill (black by default) in both images before SSIM.
    fa, fb = M.apply_mask(a, b, mask)
    assert (fa[mask == 0] == 0).all() and (fb[mask == 0] == 0).all()
    assert M.ssim_metric(a, b, mask).item() == pytest.approx(M.ssim_metric(fa, fb).item(), abs=1e-12)
    assert torch.allclose(M.apply_mask(a, b, mask[..., None], fill=1.0)[0][mask == 0], torch.ones(1))


def test_composite_on_white():
    img = torch.zeros(4, 4, 3)
    mask = torch.zeros(4, 4)
    mask[0, 0] = 1
    out = M.composite(img, mask)
    assert out[0, 0].sum() == 0 and (out[1:] == 1).all()


def test_bad_inputs():
    with pytest.raises(ValueError):
        M.psnr(torch.zeros(8, 8, 3), torch.zeros(8, 9, 3))
    with pytest.raises(ValueError):
        M.ssim_metric(torch.zeros(10, 30, 3), torch.zeros(10, 30, 3))
    with pytest.raises(ValueError):
        M.l1(torch.zeros(8, 3), torch.zeros(8, 3))
