"""Shared fixtures: the synthetic FLAME-format model and the tiny subject (each written once per test
session), and an empty torch hub cache."""

from __future__ import annotations

import pytest
import torch

from dynavatar.flame import synthetic_flame_files
from tiny_experiment import write_tiny_subject


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
