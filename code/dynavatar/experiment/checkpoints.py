"""The experiment folder layout users know from the paper, and checkpoint files that are written as
one commit and read without running code.

<exps_folder>/<subject>/<methodname>/<train sub_dirs joined by +>/
    train/runconf.conf
    train/checkpoints/{ModelParameters, OptimizerParameters, SchedulerParameters,
                       OptimizerInputs, InputParameters, TestInputParameters}/{latest, N}.pth
    train/checkpoints/latest.json       the commit record of `latest`: its epoch, parts and their sha256
    train/checkpoints/<N>.json          the same record of numbered checkpoint N
    train/tensorboard/
    eval/<test sub_dir>/epoch_<N>/

Saving `latest` is one commit: every part is written to `<part>/latest.pth.tmp`, then `latest.json`
is replaced (atomically: that is the commit), then each temporary is renamed over its `latest.pth`.
A kill before the commit leaves the previous `latest` whole; a kill after it leaves temporaries that
complete the new one (read from them, and renamed at the next save). Numbered checkpoints are
written before the commit, the model part last, so an epoch is listed only once all its parts
exist, and a kill before the commit makes the resumed run write them again.

Each record holds the sha256 of every part it lists, and reading verifies them: a file damaged on
the disk since (bit rot, an overwritten byte) is refused like a torn save, and `latest` then falls
back to the newest intact numbered checkpoint. Checkpoints of earlier versions, whose records hold
no checksums (or that have no record), are read unverified.

Any failure while writing (a full disk, a file-size limit, an unwritable folder) removes what the
save wrote, keeps the previous checkpoint and is one CheckpointError.

Reading uses `torch.load(weights_only=True)`: tensors and plain Python values only, so a crafted
file is refused before any of its code can run.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

log = logging.getLogger(__name__)

MODEL = "ModelParameters"
OPTIMIZER = "OptimizerParameters"
SCHEDULER = "SchedulerParameters"
OPTIMIZER_INPUTS = "OptimizerInputs"
INPUTS = "InputParameters"
TEST_INPUTS = "TestInputParameters"
PARTS = (MODEL, OPTIMIZER, SCHEDULER, OPTIMIZER_INPUTS, INPUTS)
LATEST = "latest"
RECORD = "latest.json"
TMP = ".tmp"

# Checkpoints of earlier versions hold numpy's RNG state (a uint32 array) in ModelParameters; these
# are the only globals beyond tensors and plain values that reading them needs (numpy 2 and 1 names).
_NUMPY_RECONSTRUCT = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
LEGACY_GLOBALS = [(_NUMPY_RECONSTRUCT, "numpy._core.multiarray._reconstruct"),
                  (_NUMPY_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
                  (np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
def checkpoints_dir_of(load_path: str | Path) -> Path:
    """Accept an experiment's train folder (as the paper's --load_path), its checkpoints folder, or its split folder."""
    path = Path(load_path)
    for candidate in (path / "checkpoints", path, path / "train" / "checkpoints"):
        if (candidate / MODEL).is_dir():
            return candidate
    raise CheckpointError(f"no checkpoints found under {path}: expected {path / 'checkpoints' / MODEL} "
                          f"(pass the experiment's train folder to --load_path)")


def available_epochs(checkpoints: Path) -> list[int]:
    folder = checkpoints / MODEL
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"(\d+)\.pth", p.name)))


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + TMP)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _serialise(obj: Any) -> memoryview:
    """torch.save into memory: the disk then sees plain writes, whose failures are OSErrors (torch's
    own file writer reports a full disk as a RuntimeError), and a numbered copy is the same bytes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def _write_bytes(data: memoryview, path: Path) -> str:
    """Write `data` to `path`, on the disk (fsync) before returning; returns its sha256."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return _sha256(data)


def _write(obj: Any, path: Path) -> str:
    """torch.save to `path`, on the disk before returning; returns the file's sha256."""
    return _write_bytes(_serialise(obj), path)


def _write_json(obj: Any, path: Path) -> None:
    """A small json file, atomically (temporary, fsync, rename)."""
    with open(_tmp(path), "w") as handle:
        handle.write(json.dumps(obj))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(_tmp(path), path)


def _reason(exc: BaseException) -> str:
    """What went wrong, in a few words: the OSError behind an exception where there is one."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError):
        return cause.strerror or str(cause)
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _write_failed(what: str, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"cannot write {what} ({_reason(exc)}); the previous checkpoint is kept: "
                           f"free disk space (or fix the folder's permissions) and resume with --is_continue")


def atomic_save(obj: Any, path: Path) -> None:
    """Write via a temporary file and rename, so a kill never leaves a broken file; a failed write
    (a full disk) removes the temporary, keeps the previous file and is one CheckpointError."""
    tmp = _tmp(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(obj, tmp)
        os.replace(tmp, path)
    except Exception as exc:  # any failure while writing: nothing half-written stays
        _remove(tmp)
        raise _write_failed(str(path), exc) from None


def has_checkpoint(checkpoints: Path) -> bool:
    """Whether any save of this folder completed (a kill during the first one leaves none)."""
    return ((checkpoints / RECORD).is_file() or (checkpoints / MODEL / f"{LATEST}.pth").is_file()
            or bool(available_epochs(checkpoints)))


def record_path(checkpoints: Path, tag: str | int = LATEST) -> Path:
    """The record of checkpoint `tag`: `latest.json` (the commit of `latest`) or `<N>.json`."""
    return checkpoints / f"{tag}.json"


def latest_epoch(checkpoints: Path) -> int | None:
    """The epoch of `latest` (its record's; for checkpoints of earlier versions its model part's),
    or None when no save completed."""
    try:
        record = _read_record(checkpoints)
    except CheckpointError:
        record = None
    if record is not None:
        return record["epoch"]
    model = checkpoints / MODEL / f"{LATEST}.pth"
    return _epoch_of(model) if model.is_file() else None


def _read_record(checkpoints: Path, tag: str | int = LATEST) -> dict | None:
    """The record of checkpoint `tag` ({"epoch": N, "parts": [...], "sha256": {part: digest}}), or None
    (checkpoints of earlier versions; their records, if any, hold no checksums: "sha256" is then {})."""
    path = record_path(checkpoints, tag)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        digests = record.get("sha256", {})
        return {"epoch": int(record["epoch"]), "parts": [str(p) for p in record["parts"]],
                "sha256": {str(k): str(v) for k, v in digests.items()}}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a checkpoint record ({type(exc).__name__}: {exc})") from None


def _digest_of(checkpoints: Path, part: str, tag: str | int) -> str | None:
    """The sha256 that checkpoint `tag`'s record holds for `part`, or None (nothing to verify against)."""
    try:
        record = _read_record(checkpoints, tag)
    except CheckpointError:
        return None  # a numbered checkpoint with a damaged record: its parts are read unverified
    return None if record is None else record["sha256"].get(part)


def _epoch_of(path: Path, digest: str | None = None) -> int | None:
    """The epoch a part file holds, or None when it cannot be read (a temporary cut short by a kill)
    or differs from `digest`."""
    try:
        return int(_load(path, "cpu", digest)["epoch"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None


def _roll_forward(checkpoints: Path) -> None:
    """Rename the temporaries of a committed save that a kill interrupted over their `latest.pth`;
    delete the temporaries of a save that never committed (numbered ones included). Runs before a
    save writes its own."""
    try:
        record = _read_record(checkpoints)
    except CheckpointError:
        record = None  # this save writes a new one
    for part in PARTS:
        for tmp in (checkpoints / part).glob(f"*.pth{TMP}"):  # numbered ones: always of a save never committed
            if (tmp.name == f"{LATEST}.pth{TMP}" and record is not None and part in record["parts"]
                    and _epoch_of(tmp, record["sha256"].get(part)) == record["epoch"]):
                os.replace(tmp, tmp.with_name(f"{LATEST}.pth"))
            else:
                _remove(tmp)
    for tmp in checkpoints.glob(f"*.json{TMP}"):  # records of saves that never committed
        _remove(tmp)


def save_checkpoint(checkpoints: Path, epoch: int, parts: dict[str, dict], numbered: bool) -> None:
    """Write the parts as `latest` in one commit (see the module's docstring) and, when `numbered`,
    as `<epoch>.pth`. Any failure before the commit (a full disk, a file-size limit) removes what
    the save wrote and keeps the previous checkpoint; any failure is one CheckpointError."""
    pending: list[Path] = []  # the temporaries of `latest`, renamed after the commit
    written: list[Path] = []  # what else this save created before its commit, removed if it fails
    try:
        payloads = {part: _serialise({"epoch": epoch, **state}) for part, state in parts.items()}
        _roll_forward(checkpoints)
        digests = {}
        for part, data in payloads.items():
            tmp = _tmp(checkpoints / part / f"{LATEST}.pth")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            pending.append(tmp)
            digests[part] = _write_bytes(data, tmp)
        record = {"epoch": epoch, "parts": sorted(payloads), "sha256": digests}
        if numbered:  # before the commit, so that a kill in between makes the resumed run write them again
            for part, data in payloads.items():
                written.append(_tmp(checkpoints / part / f"{epoch}.pth"))
                _write_bytes(data, written[-1])
            # An epoch is listed once its model part exists: that comes last, after the record.
            for part in sorted(payloads, key=lambda name: name == MODEL):
                if part == MODEL:
                    numbered_record = record_path(checkpoints, epoch)
                    if not numbered_record.exists():
                        written.append(numbered_record)
                    _write_json(record, numbered_record)
                path = checkpoints / part / f"{epoch}.pth"
                if not path.exists():
                    written.append(path)
                os.replace(_tmp(path), path)
        _write_json(record, checkpoints / RECORD)  # the commit
    except Exception as exc:  # any failure while writing: nothing of this save stays, the previous one is whole
        for path in [*pending, *written, _tmp(checkpoints / RECORD), _tmp(record_path(checkpoints, epoch))]:
            _remove(path)
        raise _write_failed(f"the checkpoint of epoch {epoch} to {checkpoints}", exc) from None
    try:
        for tmp in pending:
            os.replace(tmp, tmp.with_name(f"{LATEST}.pth"))
    except OSError as exc:  # committed: the temporaries left complete it (`load_checkpoint`, `_roll_forward`)
        raise CheckpointError(f"cannot rename the checkpoint files of epoch {epoch} in {checkpoints} "
                              f"({exc.strerror or exc}); they are complete: resume with --is_continue") from None


def _unsafe_global(exc: Exception) -> str | None:
    """The global a weights-only load refused (torch's message names it as 'GLOBAL module.name')."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return found.group(1) if found else None


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {first_line}); it may be "
                           f"truncated or not a DynAvatar checkpoint")


def _load(path: Path, map_location: Any, digest: str | None = None) -> dict:
    """torch.load of tensors and plain values only (and the numpy RNG state of earlier versions),
    after checking the file's sha256 against `digest` (the one its save recorded) when given."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None
    if digest is not None and _sha256(data) != digest:
        raise CheckpointError(f"checkpoint {path} is damaged: its sha256 differs from the one recorded when it was "
                              f"saved (the file changed on the disk since)")
    source = io.BytesIO(data)
    try:
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals(LEGACY_GLOBALS):
                payload = torch.load(source, map_location=map_location, weights_only=True)
        else:  # torch < 2.5: tensors and plain values only
            payload = torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        name = _unsafe_global(exc)
        if name is not None:
            raise CheckpointError(f"checkpoint {path} refers to '{name}', which is neither a tensor nor a plain "
                                  f"value: it was not loaded (a checkpoint never runs code; this file may have "
                                  f"been crafted)") from None
        raise _unreadable(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise _unreadable(path, exc) from None
    if not isinstance(payload, dict) or "epoch" not in payload:
        raise CheckpointError(f"{path} is not a DynAvatar checkpoint (no 'epoch' entry)")
    return payload


def load_part(checkpoints: Path, part: str, tag: str | int, map_location: Any = "cpu") -> dict:
    """Read one checkpoint part file; a missing file is one clear error listing the epochs that exist."""
    path = checkpoints / part / f"{tag}.pth"
    if not path.is_file():
        epochs = available_epochs(checkpoints)
        have = ", ".join(str(e) for e in epochs) or "none"
        latest = " and latest" if (checkpoints / part / f"{LATEST}.pth").is_file() else ""
        raise CheckpointError(f"checkpoint {path} not found; epochs available: {have}{latest} "
                              f"(choose one with --checkpoint)")
    return _load(path, map_location, _digest_of(checkpoints, part, tag))


def _load_latest(checkpoints: Path, names: list[str], map_location: Any) -> dict[str, dict]:
    """The parts of the committed `latest`, completed from the temporaries of an interrupted save."""
    record = _read_record(checkpoints)
    parts = {}
    for name in names:
        tmp = _tmp(checkpoints / name / f"{LATEST}.pth")
        if record is not None and name in record["parts"] and tmp.is_file():
            try:
                payload = _load(tmp, map_location, record["sha256"].get(name))
                if int(payload["epoch"]) == record["epoch"]:
                    parts[name] = payload
                    continue
            except CheckpointError:
                pass  # a temporary of a save that never committed
        parts[name] = load_part(checkpoints, name, LATEST, map_location)
    if record is not None:
        stale = {name: int(p["epoch"]) for name, p in parts.items() if int(p["epoch"]) != record["epoch"]}
        if stale:
            raise CheckpointError(f"the 'latest' checkpoint in {checkpoints} is incomplete: {RECORD} commits epoch "
                                  f"{record['epoch']} but {stale} hold other epochs")
    check_same_epoch(parts, checkpoints, LATEST)
    return parts


def load_checkpoint(checkpoints: Path, names: list[str], tag: str | int = LATEST,
                    map_location: Any = "cpu") -> tuple[dict[str, dict], str]:
    """The parts `names` of checkpoint `tag`, all of one epoch, and the tag they were read from.

    A `latest` that is incomplete anyway (a file damaged, or a save of an earlier version
    interrupted between parts) is replaced by the newest complete numbered checkpoint, with a
    warning; a numbered checkpoint asked for by name is never replaced.
    """
    if str(tag) != LATEST:
        parts = {name: load_part(checkpoints, name, tag, map_location) for name in names}
        check_same_epoch(parts, checkpoints, tag)
        return parts, str(tag)
    try:
        return _load_latest(checkpoints, names, map_location), LATEST
    except CheckpointError as problem:
        for epoch in reversed(available_epochs(checkpoints)):
            try:
                parts = {name: load_part(checkpoints, name, epoch, map_location) for name in names}
                check_same_epoch(parts, checkpoints, epoch)
            except CheckpointError:
                continue
            log.warning("%s; using the newest complete checkpoint instead: epoch %d", problem, epoch)
            return parts, str(epoch)
        raise CheckpointError(f"{problem}; no complete numbered checkpoint to fall back to "
                              f"(epochs available: {available_epochs(checkpoints) or 'none'})") from None


def check_same_epoch(parts: dict[str, dict], checkpoints: Path, tag: str | int) -> None:
    """Parts of one checkpoint must come from one epoch (an interrupted save can mix them)."""
    epochs = {part: int(state["epoch"]) for part, state in parts.items()}
    if len(set(epochs.values())) > 1:
        raise CheckpointError(f"the '{tag}' checkpoint parts in {checkpoints} come from different epochs {epochs} "
                              f"(an interrupted save?); resume from a numbered one with --checkpoint N "
                              f"(available: {available_epochs(checkpoints)})")


def load_model_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """load_state_dict with one clear error when names or shapes do not fit the model of the conf."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        details = "; ".join(filter(None, [
            f"missing {missing[:5]}" if missing else "",
            f"unexpected {unexpected[:5]}" if unexpected else "",
            f"wrong sizes {mismatched[:5]}" if mismatched else "",
        ]))
        raise CheckpointError(f"{source} does not fit the model described by the conf ({details}); "
                              f"use the runconf.conf the checkpoint was trained with")
    module.load_state_dict(state)
