"""Shared fixtures: the synthetic FLAME-format model and the tiny subject (each written once per test
session), and an empty torch hub cache. Each pytest-xdist worker computes on its share of the cores."""

from __future__ import annotations

import os

import pytest
import torch

from dynavatar.flame import synthetic_flame_files
from tiny_experiment import write_tiny_subject


def _share_the_cores() -> None:
    """With pytest-xdist, give each worker (and the commands it starts) cores / workers threads.
    Every worker's torch would otherwise start a thread per core, and OpenMP's waiting threads on
    oversubscribed cores made single tests 10-30 times slower than alone (4 minutes instead of 47 s
    for a handful of training tests on 2 cores)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
        torch.set_num_threads(int(threads))


_share_the_cores()


@pytest.fixture(scope="session")
def synthetic_flame_paths(tmp_path_factory):
    """(model path, landmark path) of the synthetic FLAME-format model."""
    return synthetic_flame_files(tmp_path_factory.mktemp("flame"))


@pytest.fixture(scope="session")
def data_folder(tmp_path_factory):
    """The data folder holding the tiny subject (tiny_experiment.py); tests copy it before changing it."""
    return write_tiny_subject(tmp_path_factory.mktemp("datasets"))


@pytest.fixture
def torch_hub(tmp_path, monkeypatch):
    """The checkpoints folder of an empty torch hub cache in a temporary folder."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "hub" / "checkpoints"
