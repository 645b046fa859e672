"""Shared fixtures: the synthetic FLAME-format model, written once per test session."""

from __future__ import annotations

import pytest

from dynavatar.flame import synthetic_flame_files


@pytest.fixture(scope="session")
def synthetic_flame_paths(tmp_path_factory):
    """(model path, landmark path) of the synthetic FLAME-format model."""
    return synthetic_flame_files(tmp_path_factory.mktemp("flame"))
