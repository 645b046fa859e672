"""VGG16 perceptual loss, as the paper's training uses it (without torchvision).

Reference (MonoGaussianAvatar `model/vgg_feature.py`, `model/loss.py`): ImageNet VGG16 `features`
cut into four blocks ending at relu1_2, relu2_2, relu3_3, relu4_3 (indices [0:4], [4:9], [9:16],
[16:23]); both images are ImageNet-normalised and bilinearly resized to 224x224
(align_corners=False); the loss is the sum over the four blocks of the mean absolute difference
(L1) of the features, each block weighted 1. The training objective adds it times
`loss.vgg_feature_weight` (0.1). The network is frozen; gradients flow to the rendered image only.

Weights: torchvision's `vgg16-397923af.pth` (keys `features.N.weight/bias`) from the torch hub
cache, or the path in `loss.vgg_weights_path`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

log = logging.getLogger(__name__)

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
BLOCK_ENDS = (4, 9, 16, 23)  # features[:4] relu1_2, [4:9] relu2_2, [9:16] relu3_3, [16:23] relu4_3
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)  # up to conv4_3


def vgg16_features_to_relu4_3() -> nn.Sequential:
    """torchvision's VGG16 `features[:23]` (indices match its state_dict keys)."""
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(item)
    assert len(layers) == BLOCK_ENDS[-1]
    return nn.Sequential(*layers)


class VGGPerceptualLoss(nn.Module):
    """forward(pred, gt): images [B,H,W,3] or [H,W,3] in [0,1] -> scalar L1 feature loss."""

    def __init__(self, resize: int | None = 224):
        super().__init__()
        self.resize = resize
        self.features = vgg16_features_to_relu4_3()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        return super().train(False)  # frozen feature extractor: always in eval mode

    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        x = image.unsqueeze(0) if image.dim() == 3 else image
        x = x.permute(0, 3, 1, 2).to(self.mean.dtype)  # [B,3,H,W]
        x = (x - self.mean) / self.std
        if self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return x

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if pred.shape != gt.shape or pred.shape[-1] != 3:
            raise ValueError(f"VGG loss needs two images [..,H,W,3] of one shape, got "
                             f"{tuple(pred.shape)} and {tuple(gt.shape)}")
        x, y = self._prepare(pred), self._prepare(gt)
        loss = x.new_zeros(())
        start = 0
        for end in BLOCK_ENDS:
            block = self.features[start:end]
            x, y = block(x), block(y)
            loss = loss + F.l1_loss(x, y)
            start = end
        return loss


def default_vgg_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def load_vgg_perceptual(weights_path: str | Path | None = None,
                        device: torch.device | str = "cpu") -> VGGPerceptualLoss:
    """The frozen VGG16 loss with ImageNet weights; ConfigError saying how to supply them if absent."""
    path = Path(weights_path) if weights_path else default_vgg_path()
    how = (f"Put {VGG16_FILE} (from {VGG16_URL}) in the torch hub cache {default_vgg_path().parent}, "
           f"or set loss.vgg_weights_path to the file, or set loss.vgg_feature_weight = 0 to train "
           f"without the perceptual loss.")
    if not path.is_file():
        raise ConfigError(f"VGG16 weights not found at '{path}'. {how}")
    model = VGGPerceptualLoss()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        wanted = model.features.state_dict().keys()
        sub = {}
        for key in wanted:
            full = f"features.{key}"
            if full not in state:
                raise KeyError(f"missing key '{full}'")
            sub[key] = state[full]
        model.features.load_state_dict(sub)
    except (OSError, RuntimeError, ValueError, KeyError, AttributeError) as err:
        raise ConfigError(f"VGG16 weights '{path}' could not be loaded (expected torchvision's "
                          f"{VGG16_FILE} layout, keys 'features.N.weight'): {err}. {how}") from err
    log.info("VGG16 perceptual loss weights loaded from %s", path)
    return model.to(device)
