"""One writer per experiment: the lock file `<experiment>.lock` beside the experiment folder.

A run that writes an experiment (training; evaluation, which writes `eval/` and the fitted test
inputs) holds the lock while it does. A second process asking for it gets one line naming the
holder (its process id, host, start time and command). The lock is an `flock` on the file, which
the kernel drops when its process ends however it ends, so a run killed with `kill -9` never leaves
a lock that blocks: its file stays, records a process that no longer holds it, and the next run
takes it over (and says so). Where `flock` is not available, the file is created exclusively and a
holder on this host that is no longer running is detected by its process id.

The lock sits beside the experiment folder, not in it, so that `--overwrite` (which moves the
folder aside) keeps holding it. Within one process the lock is re-entrant: training, the
evaluation that follows it and `quality_vs_time.py`'s evaluations share one hold. The file is
removed when the last hold is released, and so are the folders created for it if they stayed
empty (a run refused before it wrote anything leaves nothing behind).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

from ..errors import ExperimentInUseError, OutputError
from ..files import NO_FLOCK

try:
    import fcntl
except ImportError:  # not on Windows: the exclusive-create fallback
    fcntl = None

log = logging.getLogger(__name__)

SUFFIX = ".lock"


def lock_path(root: Path) -> Path:
    """`<exps>/<subject>/<method>/<split>.lock` for the experiment folder `.../<split>`, its folder
    resolved, so that every spelling of one experiment's path names one lock."""
    root = Path(root)
    return Path(os.path.realpath(root.parent)) / (root.name + SUFFIX)


@dataclass
class _Hold:
    path: Path
    fd: int | None  # the flock'ed descriptor; None for the fallback's exclusive file
    created: list[Path]  # folders made for the lock file, deepest first
    count: int = 1


_held: dict[Path, _Hold] = {}
_guard = threading.Lock()


def _this_holder() -> dict:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else ""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds"),
            "command": command if len(command) <= 120 else command[:117] + "..."}


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process (it has not written its name yet)"
    text = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
    return text + (f" ({holder['command']})" if holder.get("command") else "")


def _read_holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _in_use(root: Path, path: Path, holder: dict | None, hint: str = "") -> ExperimentInUseError:
    return ExperimentInUseError(
        f"experiment {root} is in use by {_describe(holder)}: one run at a time writes an experiment; wait for "
        f"it to end (or stop it), or train into another folder with train.methodname=<name> (lock file "
        f"{path}{hint})")


def _write_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_this_holder()) + "\n").encode(), 0)
    os.fsync(fd)


def _took_over(path: Path, holder: dict | None) -> None:
    if holder and holder.get("pid") != os.getpid():
        log.warning("%s: the lock of %s was left by a run that ended without releasing it (killed?); taken over",
                    path, _describe(holder))


def _make_parents(path: Path) -> list[Path]:
    """Create the lock file's missing folders; returns them, deepest first."""
    missing = []
    folder = path.parent
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    return missing


def _open(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:  # another run's release removed the empty folder just now
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o644)


def _acquire_flock(root: Path, path: Path) -> int | None:
    """The locked descriptor, or None where the file system has no flock."""
    while True:
        fd = _open(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _in_use(root, path, _read_holder(path)) from None
            if exc.errno in NO_FLOCK:  # no flock on this file system: the fallback
                return None
            raise
        # The holder before us may have removed the file between our open and our flock: then we
        # hold a lock on a file nobody else will find; open the path again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            try:
                _took_over(path, _read_holder(path))
                _write_holder(fd)
            except OSError:
                os.close(fd)
                raise
            return fd
        os.close(fd)


def _alive(holder: dict) -> bool:
    """Whether the holder recorded in a lock file may still be running (True when it cannot be told)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def _acquire_exclusive(root: Path, path: Path) -> None:
    """Fallback without flock: create the file exclusively; a holder on this host that no longer
    runs is stale and is taken over."""
    for _ in range(3):
        try:
            fd = _open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            holder = _read_holder(path)
            if holder is not None and not _alive(holder):
                _took_over(path, holder)
                path.unlink(missing_ok=True)
                continue
            raise _in_use(root, path, holder, "; if that run is no longer running, delete it") from None
        try:
            _write_holder(fd)
        except OSError:
            path.unlink(missing_ok=True)  # an empty lock file would block every later run
            raise
        finally:
            os.close(fd)
        return
    raise _in_use(root, path, _read_holder(path))


def acquire(root: Path) -> Path:
    """Hold the lock of the experiment folder `root` (re-entrant within a process); returns the lock
    file. ExperimentInUseError when another process holds it; OutputError when it cannot be created."""
    path = lock_path(root)
    with _guard:
        hold = _held.get(path)
        if hold is not None:
            hold.count += 1
            return path
        created: list[Path] = []
        try:
            created = _make_parents(path)
            fd = _acquire_flock(root, path) if fcntl is not None else None
            if fd is None:
                _acquire_exclusive(root, path)
        except OSError as exc:
            _remove_empty(created)
            raise OutputError(f"cannot create the lock file {path} ({exc.strerror or exc}): make "
                              f"{path.parent} writable, or train into another folder with "
                              f"train.exps_folder=<folder>") from None
        except ExperimentInUseError:
            _remove_empty(created)
            raise
        _held[path] = _Hold(path, fd, created)
        return path


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty: the run wrote into it
            return


def release(root: Path) -> None:
    """Give back one hold of `acquire(root)`; the last one removes the lock file and unlocks it."""
    path = lock_path(root)
    with _guard:
        hold = _held.get(path)
        if hold is None:
            return
        hold.count -= 1
        if hold.count > 0:
            return
        del _held[path]
        try:  # removed while still locked, so that nobody locks a file about to vanish
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the lock file %s (%s); the next run takes it over", path, exc)
        if hold.fd is not None:
            os.close(hold.fd)
        _remove_empty(hold.created)


@contextmanager
def experiment_lock(root: Path) -> Iterator[Path]:
    """`with experiment_lock(root):` the experiment is written by this process only."""
    path = acquire(root)
    try:
        yield path
    finally:
        release(root)
