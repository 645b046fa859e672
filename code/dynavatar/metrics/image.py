"""Per-image metrics (L1, MSE, PSNR, SSIM) and the differentiable SSIM the training loss uses.

Images are float tensors in [0, 1], channels last: [H,W,3] (one image, metrics are 0-dim tensors)
or [B,H,W,3] (metrics are [B] tensors, one value per image). Metrics are computed and returned in
float64, so per-frame values do not depend on the rendering's dtype.

Protocol (IMavatar / PointAvatar / MonoGaussianAvatar evaluation scripts):
- The ground truth is composited on white with its mask before any metric (`composite`).
- PSNR = -10 log10(MSE) with data range 1. Identical images give +inf (the reference adds 1e-8 to
  the RMSE and so reports 160 dB instead; any other image differs from it by less than 1e-6 dB).
- SSIM: 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1, per channel, mean
  over the windows that lie wholly inside the image ("valid"). This equals the reference's
  `img_ssim` (conv2d with padding 0) and scikit-image's `structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)`, which filters
  with reflected borders and then crops the 5-pixel border strip before averaging.
- Masked pass (`mask`, e.g. cloth excluded): pixels where the mask is 0 are set to `fill` (0,
  black, as the reference does) in BOTH images; every metric is then computed over the whole
  image, so excluded pixels count as exact matches and averages are over all pixels (the
  reference divides its masked error sums by the full pixel count, not the mask area). Soft masks
  blend towards `fill`; with binary masks this reproduces the reference numbers exactly.

The training loss's SSIM uses "same" size with zero padding, like the reference's training loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _batched(image: torch.Tensor) -> torch.Tensor:
    """[H,W,C] or [B,H,W,C] -> [B,H,W,C]."""
    if image.dim() == 3:
        return image.unsqueeze(0)
    if image.dim() == 4:
        return image
    raise ValueError(f"expected an image [H,W,C] or a batch [B,H,W,C], got shape {tuple(image.shape)}")


def _unbatch_like(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] per-image values -> 0-dim when the input was one [H,W,C] image."""
    return values[0] if like.dim() == 3 else values


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def composite(image: torch.Tensor, mask: torch.Tensor, background: float = 1.0) -> torch.Tensor:
    """image [..,H,W,C] over a constant background through mask [..,H,W] or [..,H,W,1] in [0,1]."""
    if mask.dim() < 2 or mask.shape[-2:] != image.shape[-3:-1]:
        if mask.dim() < 3 or mask.shape[-3:] != (*image.shape[-3:-1], 1):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not fit image shape {tuple(image.shape)}")
    else:
        mask = mask.unsqueeze(-1)  # [..,H,W] -> [..,H,W,1]
    mask = mask.to(image.dtype)
    return image * mask + background * (1.0 - mask)


def apply_mask(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None,
               fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Set the excluded pixels (mask 0) of both images to `fill`; no-op when mask is None."""
    if mask is None:
        return a, b
    return composite(a, mask, fill), composite(b, mask, fill)


def l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None,
       fill: float = 0.0) -> torch.Tensor:
    """Mean absolute error per image ([B] or 0-dim)."""
    _check_pair(a, b)
    x, y = apply_mask(_batched(a).double(), _batched(b).double(), mask, fill)
    return _unbatch_like((x - y).abs().flatten(1).mean(1), a)


def mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None,
        fill: float = 0.0) -> torch.Tensor:
    """Mean squared error per image ([B] or 0-dim)."""
    _check_pair(a, b)
    x, y = apply_mask(_batched(a).double(), _batched(b).double(), mask, fill)
    return _unbatch_like((x - y).square().flatten(1).mean(1), a)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None,
         fill: float = 0.0) -> torch.Tensor:
    """PSNR in dB for data range 1 per image; +inf where the images are identical."""
    return -10.0 * torch.log10(mse(a, b, mask, fill))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, *,
                    dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps [size]; the 2-D window is its outer product (separable)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def ssim_map(a: torch.Tensor, b: torch.Tensor, *, valid: bool = False,
             window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
             data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel, per-channel SSIM [B,H',W',C] of images [B,H,W,C] (or [H,W,C] -> [H',W',C]).

    valid=False: output H'=H, W'=W, windows zero-padded at the borders (training loss).
    valid=True: only windows wholly inside the image, H'=H-window+1 (the metric). Differentiable.
    """
    _check_pair(a, b)
    x = _batched(a).permute(0, 3, 1, 2)  # [B,C,H,W]
    y = _batched(b).permute(0, 3, 1, 2)
    channels = x.shape[1]
    if valid and min(x.shape[2], x.shape[3]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window} pixels, got {tuple(a.shape)}")
    taps = gaussian_window(window, sigma, dtype=x.dtype, device=x.device)
    # Filter the five moments in one grouped, separable convolution: [B, 5C, H, W].
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    groups = stack.shape[1]
    pad = 0 if valid else window // 2
    stack = F.conv2d(stack, taps.view(1, 1, window, 1).expand(groups, 1, window, 1).contiguous(),
                     padding=(pad, 0), groups=groups)
    stack = F.conv2d(stack, taps.view(1, 1, 1, window).expand(groups, 1, 1, window).contiguous(),
                     padding=(0, pad), groups=groups)
    mu_x, mu_y, e_xx, e_yy, e_xy = stack.split(channels, dim=1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    s = s.permute(0, 2, 3, 1)  # [B,H',W',C]
    return s[0] if a.dim() == 3 else s


def ssim(a: torch.Tensor, b: torch.Tensor, *, valid: bool = False) -> torch.Tensor:
    """Mean SSIM over all pixels, channels and images: a differentiable scalar (training)."""
    return ssim_map(a, b, valid=valid).mean()


def ssim_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The training term 1 - SSIM (zero-padded "same" windows, as the reference's loss)."""
    return 1.0 - ssim(a, b, valid=False)


def ssim_metric(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None,
                fill: float = 0.0) -> torch.Tensor:
    """Evaluation SSIM per image ([B] or 0-dim), float64, valid windows only."""
    _check_pair(a, b)
    x, y = apply_mask(_batched(a).double(), _batched(b).double(), mask, fill)
    return _unbatch_like(ssim_map(x, y, valid=True).flatten(1).mean(1), a)


def image_metrics(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None,
                  fill: float = 0.0) -> dict[str, torch.Tensor]:
    """L1 (MAE), MSE, PSNR and SSIM of pred vs gt, per image; LPIPS lives in `metrics.lpips`."""
    with torch.no_grad():
        return {
            "l1": l1(pred, gt, mask, fill),
            "mse": mse(pred, gt, mask, fill),
            "psnr": psnr(pred, gt, mask, fill),
            "ssim": ssim_metric(pred, gt, mask, fill),
        }

