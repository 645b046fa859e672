"""Where and how reproducibly the code runs: the torch device of a conf and its process-wide
settings, seeds, RNG state, and per-epoch random generators."""

from __future__ import annotations

import functools
import random

import numpy as np
import torch

from .errors import ConfigError


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """auto | cpu | cuda | cuda:N -> a usable torch device, or one clear error naming `setting`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{setting} = {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"{setting} = {name!r} but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s): use {setting}=auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{setting} = {name!r}: only cpu and cuda devices are supported")
    return device


def flush_denormals_on_cpu(device: torch.device) -> None:
    """On the CPU, treat denormal floats as zero. The networks' softplus(beta=100) activations and
    their gradients can fall below 1e-38, where float arithmetic is many times slower (a training
    step with fresh networks took 2.9x as long); no result depends on values that small. A
    process-wide CPU setting."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)


def configure_device(device: torch.device, tf32: bool) -> None:
    """Process-wide settings for a run on `device`. On CUDA the fastest convolution algorithms for the
    run's fixed image sizes (SSIM, VGG) are chosen once, and matrix products use TF32 only when
    `tf32` (`train.tf32`) asks for it; on the CPU denormal floats are flushed."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    flush_denormals_on_cpu(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A generator for one epoch and purpose: data order and point growth do not depend on how
    many epochs ran in this process, so a resumed run repeats the uninterrupted one."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


def rng_state() -> dict:
    """Every global RNG's state (torch, CUDA, numpy, Python), for exact resumes: tensors and plain
    values only, so that checkpoints load with `weights_only=True` (numpy's key array as a tensor)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]  # keys: a tensor, or an array (earlier versions)
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant tensor, made once per (values, dtype, device) and kept for the life of the
    process: no host-to-device copy (and so no wait for the device) per call. A CUDA graph recorded
    with it reads it where it lies at every replay, so it must never be freed: use this for the
    fixed set of values the code itself names (FLAME's joint parents, a basis, a background colour),
    and `data_constant` for values that come from the data. Never modify the result in place."""
    if torch.compiler.is_compiling():  # traced by `model.compile`: the graph holds it, no cache needed
        return torch.tensor(values, dtype=dtype, device=device)
    return _kept_constant(values, dtype, device)


def data_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`constant` for values that vary with the data (a batch's cameras): the 256 used last are
    kept, so that a run over many different ones holds no more. Pass the result to a CUDA graph
    recording as an input, never read it inside one: an entry dropped from the cache is freed, and a
    recording that read it in place would then read whatever the memory holds next."""
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device)
    return _recent_constant(values, dtype, device)


@functools.cache
def _kept_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


@functools.lru_cache(maxsize=256)
def _recent_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def to_device_unblocked(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`host` (a CPU tensor) on `device`, without the host waiting for the device: a plain copy to a
    GPU first waits for all queued work, which leaves the GPU idle while the next step is launched.
    The copy goes through page-locked memory, which the allocator keeps until the copy is done."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
