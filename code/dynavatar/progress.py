"""Progress bars of long loops (tqdm), which a command's `--quiet` turns off with its info messages."""

from __future__ import annotations

from typing import Any, Iterable

from tqdm import tqdm

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Whether bars made from now on stay silent (`--quiet`: warnings and errors only)."""
    global _quiet
    _quiet = bool(quiet)


def progress(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """tqdm(iterable, **kwargs), disabled while quiet."""
    kwargs["disable"] = _quiet or kwargs.get("disable", False)
    return tqdm(iterable, **kwargs)
