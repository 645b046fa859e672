"""Training objectives: the photometric loss (L1, SSIM, VGG perceptual) and the FLAME priors."""

from .avatar_loss import AvatarLoss, check_loss_conf
from .vgg import VGGPerceptualLoss, load_vgg_perceptual

__all__ = ["AvatarLoss", "check_loss_conf", "VGGPerceptualLoss", "load_vgg_perceptual"]
