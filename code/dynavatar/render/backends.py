"""Which rasterizer backends exist, which are installed, and what `auto` means."""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch

from ..errors import BackendUnavailableError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "gsplat", "inria")
# Fastest first (H100, 512x512, 100k Gaussians, forward + backward): what `auto` picks on CUDA.
CUDA_PREFERENCE = ("gsplat", "inria")
_MODULES = {"gsplat": "gsplat", "inria": "diff_gaussian_rasterization"}
INSTALL_HINTS = {
    "gsplat": 'install it with `pip install -e ".[gsplat]"` (or `pip install gsplat`; it compiles its '
              "CUDA kernels on first use and needs a CUDA build of PyTorch and nvcc)",
    "inria": "install diff-gaussian-rasterization from source: `git clone --recursive "
             "https://github.com/graphdeco-inria/diff-gaussian-rasterization && "
             'NVCC_APPEND_FLAGS="-include cstdint" pip install --no-build-isolation ./diff-gaussian-rasterization` '
             "(see submodules/README.md)",
}


@functools.lru_cache(maxsize=None)
def is_installed(name: str) -> bool:
    """Whether the backend's package can be found (without importing it)."""
    if name == "torch":
        return True
    return importlib.util.find_spec(_MODULES[name]) is not None


def available_backends() -> list[str]:
    """The installed backends, `torch` first. The CUDA ones also need CUDA tensors at run time."""
    return [name for name in BACKENDS if is_installed(name)]


def resolve_backend(name: str, device: torch.device) -> str:
    """'auto' -> a concrete backend for tensors on `device`; a named one is checked.

    `auto` picks the fastest installed CUDA backend for CUDA tensors, else `torch`. Raises
    BackendUnavailableError, saying how to install it, for a backend that is not installed or
    cannot run on `device`.
    """
    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda":
            for candidate in CUDA_PREFERENCE:
                if is_installed(candidate):
                    return candidate
        return "torch"
    if name not in BACKENDS:
        raise BackendUnavailableError(
            f"unknown rasterizer backend {name!r} (model.rasterizer): choose one of auto, {', '.join(BACKENDS)}")
    if not is_installed(name):
        raise BackendUnavailableError(
            f"rasterizer backend {name!r} (model.rasterizer) is not installed: {INSTALL_HINTS[name]}; "
            "or set model.rasterizer = auto to use what is installed")
    if name != "torch" and device.type != "cuda":
        raise BackendUnavailableError(
            f"rasterizer backend {name!r} (model.rasterizer) runs on CUDA tensors only, but the Gaussians are "
            f"on {device}: use model.rasterizer = torch or auto")
    return name


def import_backend_module(name: str):
    """Import a CUDA backend's package, turning an import failure into BackendUnavailableError."""
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError as err:
        raise BackendUnavailableError(
            f"rasterizer backend {name!r} is installed but does not import ({err}); reinstall it: "
            f"{INSTALL_HINTS[name]}") from err
