"""LPIPS (AlexNet trunk, v0.1 linear heads) without torchvision and without the `lpips` package.

Architecture (Zhang et al. 2018, richzhang/PerceptualSimilarity, net='alex', version='0.1'):
- inputs in [0,1] are mapped to [-1,1], then shifted/scaled per channel (ScalingLayer);
- torchvision's AlexNet `features`; taps after the ReLUs at indices 1, 4, 7, 9, 11
  (channels 64, 192, 384, 256, 256);
- each tap is unit-normalised along channels (eps 1e-10), the two images' taps are subtracted and
  squared, weighted by a 1x1 conv without bias (the learned "lin" head), averaged over space, and
  the five layers are summed.

Weights: the trunk comes from torchvision's ImageNet file `alexnet-owt-7be5be79.pth` (keys
`features.N.weight/bias`, looked up in the torch hub cache), the heads from the lpips package's
`weights/v0.1/alex.pth` (keys `linK.model.1.weight`, found inside an installed `lpips`
distribution without importing it, since it imports torchvision). When either file is missing the
loader returns `Unavailable(reason)`: the metric is then recorded as unavailable, never computed
with random weights.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .image import apply_mask

log = logging.getLogger(__name__)

ALEXNET_FILES = ("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth")  # current, older torchvision
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth"
TAP_CHANNELS = (64, 192, 384, 256, 256)
_TAP_INDICES = (1, 4, 7, 9, 11)  # ReLU outputs of AlexNet `features`
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


@dataclass(frozen=True)
class Unavailable:
    """A metric that cannot be computed here, and why (shown to the user, stored in results)."""

    reason: str


def alexnet_features() -> nn.Sequential:
    """torchvision's AlexNet `features` layout (indices match its state_dict keys)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0
        nn.ReLU(),                                               # 1 -> tap
        nn.MaxPool2d(kernel_size=3, stride=2),                   # 2
        nn.Conv2d(64, 192, kernel_size=5, padding=2),            # 3
        nn.ReLU(),                                               # 4 -> tap
        nn.MaxPool2d(kernel_size=3, stride=2),                   # 5
        nn.Conv2d(192, 384, kernel_size=3, padding=1),           # 6
        nn.ReLU(),                                               # 7 -> tap
        nn.Conv2d(384, 256, kernel_size=3, padding=1),           # 8
        nn.ReLU(),                                               # 9 -> tap
        nn.Conv2d(256, 256, kernel_size=3, padding=1),           # 10
        nn.ReLU(),                                               # 11 -> tap
        nn.MaxPool2d(kernel_size=3, stride=2),                   # 12 (unused by LPIPS)
    )


class _LinHead(nn.Module):
    """1x1 conv to one channel; `model.1` mirrors lpips' (Dropout, Conv) keys (dropout is off in eval)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS distance per image: forward(a, b) with [H,W,3] -> 0-dim or [B,H,W,3] -> [B]; inputs in [0,1]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.features = alexnet_features()
        for k, c in enumerate(TAP_CHANNELS):
            self.add_module(f"lin{k}", _LinHead(c))
        self.requires_grad_(False)
        self.eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAP_INDICES:
                taps.append(x)
            if i == _TAP_INDICES[-1]:
                break
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.dim() not in (3, 4) or a.shape[-1] != 3:
            raise ValueError(f"LPIPS needs two images [H,W,3] or [B,H,W,3] of one shape, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        single = a.dim() == 3
        x = torch.stack([a, b]) if single else torch.cat([a, b])
        x = x.permute(0, 3, 1, 2).to(self.shift.dtype)  # [2B,3,H,W]
        x = ((2.0 * x - 1.0) - self.shift) / self.scale
        n = x.shape[0] // 2
        total = x.new_zeros(n)
        for k, tap in enumerate(self._taps(x)):
            tap = tap / (tap.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            diff = (tap[:n] - tap[n:]).square()
            total = total + getattr(self, f"lin{k}")(diff).mean(dim=(1, 2, 3))
        return total[0] if single else total


def _hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def default_alexnet_path() -> Path | None:
    """torchvision's AlexNet file in the torch hub cache, if present."""
    for name in ALEXNET_FILES:
        path = _hub_checkpoint_dir() / name
        if path.is_file():
            return path
    return None


def default_lin_path() -> Path | None:
    """`weights/v0.1/alex.pth` inside an installed lpips distribution (found, not imported)."""
    spec = importlib.util.find_spec("lpips")  # top-level lookup: does not run the package
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "weights" / "v0.1" / "alex.pth"
        if path.is_file():
            return path
    return None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError("not a state_dict")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def load_lpips(alexnet_path: str | Path | None = None, lin_path: str | Path | None = None,
               device: torch.device | str = "cpu") -> LPIPS | Unavailable:
    """A ready LPIPS(AlexNet, v0.1) module, or Unavailable(reason) naming the missing file and the fix.

    alexnet_path: torchvision `alexnet-owt-7be5be79.pth` (default: the torch hub cache).
    lin_path: lpips `weights/v0.1/alex.pth` (default: inside an installed lpips package).
    """
    hub = _hub_checkpoint_dir()
    trunk = Path(alexnet_path) if alexnet_path else default_alexnet_path()
    if trunk is None or not trunk.is_file():
        where = f"'{trunk}' does not exist" if trunk else f"'{ALEXNET_FILES[0]}' is not in the torch hub cache {hub}"
        return Unavailable(f"LPIPS needs torchvision's ImageNet AlexNet weights: {where}. Download "
                           f"{ALEXNET_URL} into {hub}, or pass its path (alexnet_path).")
    heads = Path(lin_path) if lin_path else default_lin_path()
    if heads is None or not heads.is_file():
        where = f"'{heads}' does not exist" if heads else "no installed 'lpips' package holds weights/v0.1/alex.pth"
        return Unavailable(f"LPIPS needs the v0.1 linear-layer weights alex.pth: {where}. Run "
                           f"'pip install lpips' (only its weight file is read), or download {LIN_URL} "
                           f"and pass its path (lin_path).")
    model = LPIPS()
    try:
        trunk_state = _read_state_dict(trunk)
        model.features.load_state_dict(
            {k.removeprefix("features."): v for k, v in trunk_state.items() if k.startswith("features.")})
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        return Unavailable(f"LPIPS AlexNet weights '{trunk}' could not be loaded "
                           f"(expected torchvision's alexnet-owt-7be5be79.pth layout): {err}")
    try:
        head_state = _read_state_dict(heads)
        head_keys = {f"lin{k}.model.1.weight" for k in range(len(TAP_CHANNELS))}
        missing = sorted(head_keys - head_state.keys())
        if missing:
            raise KeyError(f"missing keys {missing}")
        model.load_state_dict({k: head_state[k] for k in head_keys}, strict=False)
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        return Unavailable(f"LPIPS linear weights '{heads}' could not be loaded "
                           f"(expected lpips weights/v0.1/alex.pth layout): {err}")
    log.info("LPIPS (alex, v0.1) loaded from %s and %s", trunk, heads)
    return model.to(device)


def lpips_metric(model: LPIPS | Unavailable, pred: torch.Tensor, gt: torch.Tensor,
                 mask: torch.Tensor | None = None, fill: float = 0.0) -> torch.Tensor | Unavailable:
    """Per-image LPIPS ([B] or 0-dim), masked like the other metrics; passes Unavailable through."""
    if isinstance(model, Unavailable):
        return model
    device = model.shift.device
    pred, gt = apply_mask(pred.to(device), gt.to(device), None if mask is None else mask.to(device), fill)
    with torch.no_grad():
        return model(pred, gt)
