"""Image metrics shared by training and evaluation: L1, MSE, PSNR, SSIM (and its loss) and LPIPS."""

from .image import apply_mask, composite, image_metrics, l1, mse, psnr, ssim, ssim_loss, ssim_metric
from .lpips import LPIPS, Unavailable, load_lpips, lpips_metric

__all__ = ["apply_mask", "composite", "image_metrics", "l1", "mse", "psnr", "ssim", "ssim_loss", "ssim_metric",
           "LPIPS", "Unavailable", "load_lpips", "lpips_metric"]
