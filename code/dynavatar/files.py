"""Files beside an output: temporary files renamed over it when complete, with the permissions a
plain `open()` gives (0666 less the umask), so that a PNG, a video or a .ply reads like the
metrics.json beside it (`tempfile.mkstemp` creates its files 0600, which the rename would carry
over); and a lock file that a second process waits on."""

from __future__ import annotations

import errno
import logging
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None

log = logging.getLogger(__name__)
# flock on a file system that does not support it (some network mounts).
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def temporary_beside(path: Path, suffix: str) -> tuple[int, Path]:
    """A new, empty temporary file in `path`'s folder, hidden and named after it: (open descriptor, its path)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:
            continue


@contextmanager
def waiting_lock(path: Path, waiting_message: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing, never removed: removing a lock file that
    another process has open would let two holders in); a second process waits for it, logging
    `waiting_message` once. Where there is no flock (Windows, some network mounts) nothing is held."""
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s", waiting_message)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in NO_FLOCK:
                raise
        yield
    finally:
        os.close(fd)  # closing drops the flock
