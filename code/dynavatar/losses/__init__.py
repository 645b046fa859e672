"""Training objectives: the photometric loss (L1, SSIM, VGG perceptual) and the FLAME priors."""

from .avatar_loss import AvatarLoss
from .vgg import VGGPerceptualLoss, load_vgg_perceptual

__all__ = ["AvatarLoss", "VGGPerceptualLoss", "load_vgg_perceptual"]
