"""The rasterizer backends as a registry of records: which exist, which are installed, what `auto` means.

A backend is one adapter module in this package and one `Backend` record in `REGISTRY`. Its
rasterize function takes camera-space Gaussians and one camera:

    rasterize(means_cam [N, 3], quats_cam [N, 4], scales [N, 3], opacities [N], colors [N, 3],
              camera, background [3], depth=True) -> RasterOutput

(the output's depth None without `depth`), and may offer a frames function that draws B frames of
one image size in one call (the same arguments with a leading frame axis and a list of cameras).
A backend that declares `view_matrix` also takes world-space means and quaternions with
`view=world_to_camera` ([4, 4], or [B, 4, 4] for frames) and transforms them itself. Adapters are
imported on first use, so a CUDA backend's package is loaded only when it draws.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import BackendUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """One rasterizer backend and what it can do."""

    name: str  # conf value of model.rasterizer
    rasterize: str  # "module:function" in this package, the one-frame rasterize function
    frames: str | None = None  # "module:function" drawing several frames (one image size) in one call
    package: str | None = None  # the Python package it imports; None: PyTorch alone
    install_hint: str = ""  # how to install that package
    devices: tuple[str, ...] = ("cpu", "cuda")  # device types whose tensors it draws
    preference: int = 0  # `auto` picks the installed backend with the smallest value for the device
    view_matrix: bool = False  # takes world-space Gaussians and `view=` (saves the PyTorch transform's kernels)

    def rasterize_function(self) -> Callable:
        return _resolve(self.rasterize)

    def frames_function(self) -> Callable | None:
        return _resolve(self.frames) if self.frames else None

    def unavailable_reason(self, device: torch.device) -> str | None:
        """Why this backend cannot draw tensors on `device` (None: it can)."""
        if not is_installed(self.name):
            return (f"rasterizer backend {self.name!r} (model.rasterizer) is not installed: {self.install_hint}; "
                    "or set model.rasterizer = auto to use what is installed")
        if device.type not in self.devices:
            return (f"rasterizer backend {self.name!r} (model.rasterizer) runs on {' or '.join(self.devices).upper()} "
                    f"tensors only, but the Gaussians are on {device}: use model.rasterizer = torch or auto")
        return None

    def import_package(self):
        """The backend's package, an import failure turned into BackendUnavailableError."""
        try:
            return importlib.import_module(self.package)
        except ImportError as err:
            raise BackendUnavailableError(
                f"rasterizer backend {self.name!r} is installed but does not import ({err}); reinstall it: "
                f"{self.install_hint}") from err


# Preference: fastest first (H100, 512x512, 100k Gaussians, forward + backward); torch is the fallback.
REGISTRY: tuple[Backend, ...] = (
    Backend("torch", "torch_backend:rasterize_torch", preference=2),
    Backend("gsplat", "gsplat_backend:rasterize_gsplat", frames="gsplat_backend:rasterize_gsplat_frames",
            package="gsplat", devices=("cuda",), preference=0, view_matrix=True,
            install_hint='install it with `pip install -e ".[gsplat]"` (or `pip install gsplat`; it compiles its '
                         "CUDA kernels on first use and needs a CUDA build of PyTorch and nvcc)"),
    Backend("inria", "inria_backend:rasterize_inria", package="diff_gaussian_rasterization", devices=("cuda",),
            preference=1,
            install_hint="install diff-gaussian-rasterization from source: `git clone --recursive "
                         "https://github.com/graphdeco-inria/diff-gaussian-rasterization && "
                         'NVCC_APPEND_FLAGS="-include cstdint" pip install --no-build-isolation '
                         "./diff-gaussian-rasterization` (see submodules/README.md)"),
)
BACKENDS = tuple(b.name for b in REGISTRY)


@functools.lru_cache(maxsize=None)
def _resolve(target: str) -> Callable:
    module, function = target.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


def get_backend(name: str) -> Backend:
    """The record of a concrete backend; BackendUnavailableError naming the choices for another name."""
    for backend in REGISTRY:
        if backend.name == name:
            return backend
    raise BackendUnavailableError(f"unknown rasterizer backend {name!r} (model.rasterizer): choose one of auto, "
                                  f"{', '.join(b.name for b in REGISTRY)}")


@functools.lru_cache(maxsize=None)
def is_installed(name: str) -> bool:
    """Whether the backend's package can be found (without importing it)."""
    package = get_backend(name).package
    return package is None or importlib.util.find_spec(package) is not None


def available_backends() -> list[str]:
    """The installed backends, `torch` first. The CUDA ones also need CUDA tensors at run time."""
    return [b.name for b in REGISTRY if is_installed(b.name)]


def resolve_backend(name: str, device: torch.device) -> str:
    """'auto' -> a concrete backend for tensors on `device`; a named one is checked.

    `auto` picks, among the installed backends that draw on `device`'s type, the one of smallest
    `preference` (on CUDA the fastest installed CUDA backend, else `torch`). Raises
    BackendUnavailableError, saying how to install it, for a backend that is not installed or
    cannot run on `device`.
    """
    device = torch.device(device)
    if name == "auto":
        usable = [b for b in REGISTRY if device.type in b.devices and is_installed(b.name)]
        return min(usable, key=lambda b: b.preference).name if usable else "torch"
    reason = get_backend(name).unavailable_reason(device)
    if reason:
        raise BackendUnavailableError(reason)
    return name
