"""Temporary files beside an output, renamed over it when complete, with the permissions a plain
`open()` gives (0666 less the umask), so that a PNG, a video or a .ply reads like the metrics.json
beside it: `tempfile.mkstemp` creates its files 0600, which the rename would carry over."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def temporary_beside(path: Path, suffix: str) -> tuple[int, Path]:
    """A new, empty temporary file in `path`'s folder, hidden and named after it: (open descriptor, its path)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:
            continue
