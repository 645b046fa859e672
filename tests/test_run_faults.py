"""A run under faults, as the hostile user meets them: a full disk or a file-size limit during a save,
a second run on the same experiment (and a lock left by a killed one), `--overwrite` with a run that
cannot start, resuming from an earlier checkpoint, an unwritable experiment folder, and a checkpoint
damaged on the disk since its save. Each is one line and exit code 2, or a documented recovery, and
the previous state of the experiment is whole afterwards. On the tiny experiment, on the CPU."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynavatar.cli import exp_runner
from dynavatar.errors import CheckpointError, ExperimentInUseError
from dynavatar.experiment import checkpoints as ckpt
from dynavatar.experiment import lock
from dynavatar.train.trainer import Trainer, TrainOptions
from tiny_experiment import DEMO, REPO, SPLIT, experiment_root, tiny_conf, tiny_overrides


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(data_folder: Path, exps: Path, *args: str) -> None:
    exp_runner.main(["--conf", DEMO, "--no_videos", "--quiet", *args, *tiny_overrides(data_folder, exps)])


def one_line_exit_2(capsys, call) -> str:
    """The command `call` stops with exit code 2 and one error line on stderr (after progress bars,
    no traceback); returns that line."""
    with pytest.raises(SystemExit) as info:
        call()
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert info.value.code == 2 and "Traceback" not in err and last.startswith("error: "), err
    return last


def python_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "code"), "OMP_NUM_THREADS": "1"}


# ---- 1. a full disk, a file-size limit -------------------------------------------------------------

def test_a_failing_write_of_any_kind_during_a_save_is_one_line_and_leaves_no_temporary(data_folder, tmp_path,
                                                                                      monkeypatch, capsys):
    Trainer(tiny_conf(data_folder, tmp_path), TrainOptions(nepoch=1)).run()
    checkpoints = experiment_root(tmp_path) / "train" / "checkpoints"
    before = digest(checkpoints)

    def torch_full_disk(*args, **kwargs):
        """What torch's own file writer raises on a full disk: a RuntimeError whose context is the OSError."""
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    calls = []

    def size_limit_on_second_file(data, path):
        """A file-size limit met part-way through the second file the save writes."""
        calls.append(path)
        path.write_bytes(bytes(data)[:100] if len(calls) == 2 else bytes(data))
        if len(calls) == 2:
            raise OSError(errno.EFBIG, "File too large")
        return hashlib.sha256(data).hexdigest()

    for target, name, failure in ((torch, "save", torch_full_disk), (ckpt, "_write_bytes", size_limit_on_second_file)):
        with monkeypatch.context() as patch:
            patch.setattr(target, name, failure)
            err = one_line_exit_2(capsys, lambda: run_cli(data_folder, tmp_path, "--is_continue", "--nepoch", "2"))
        assert "cannot write the checkpoint of epoch 2" in err and "previous checkpoint is kept" in err, err
        assert ("No space left on device" if name == "save" else "File too large") in err, err
        assert digest(checkpoints) == before and not list(checkpoints.rglob("*.tmp"))


def test_a_real_file_size_limit_during_a_save(data_folder, tmp_path):
    """The operating system's own refusal (RLIMIT_FSIZE, as `ulimit -f` sets) in a real run."""
    Trainer(tiny_conf(data_folder, tmp_path), TrainOptions(nepoch=1)).run()
    checkpoints = experiment_root(tmp_path) / "train" / "checkpoints"
    before = digest(checkpoints)
    # Met in the middle of the model part's tensors (torch's own writer reports that as a RuntimeError);
    # the other files the run writes are far smaller.
    limit = (checkpoints / ckpt.MODEL / "latest.pth").stat().st_size // 2

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run([sys.executable, str(REPO / "scripts" / "exp_runner.py"), "--conf", DEMO, "--quiet",
                             "--no_videos", "--is_continue", "--nepoch", "2", *tiny_overrides(data_folder, tmp_path)],
                            env=python_env(), preexec_fn=limit_file_size, capture_output=True, text=True, timeout=900)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert last.startswith("error: cannot write the checkpoint of epoch 2") and "File too large" in last, last
    assert digest(checkpoints) == before and not list(checkpoints.rglob("*.tmp"))


# ---- 2. one run per experiment ---------------------------------------------------------------------

HOLDER = """
import sys
from dynavatar.experiment import lock
lock.acquire(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
"""


def test_a_second_run_on_an_experiment_is_refused_and_a_killed_runs_lock_is_taken_over(data_folder, tmp_path,
                                                                                      capsys, caplog):
    root = experiment_root(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], env=python_env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        err = one_line_exit_2(capsys, lambda: run_cli(data_folder, tmp_path, "--nepoch", "1"))
        assert f"experiment {root} is in use by process {holder.pid} on " in err and "-c" in err, err
        assert not root.exists()  # nothing of the second run was written
        with pytest.raises(ExperimentInUseError):  # through the API too, --overwrite included
            Trainer(tiny_conf(data_folder, tmp_path), TrainOptions(nepoch=1, overwrite=True))
    finally:
        holder.send_signal(signal.SIGKILL)  # a kill -9: its lock file stays behind
        holder.wait()
    assert lock.lock_path(root).is_file()
    caplog.set_level("WARNING")
    Trainer(tiny_conf(data_folder, tmp_path), TrainOptions(nepoch=1)).run()
    assert f"the lock of process {holder.pid} on" in caplog.text and "taken over" in caplog.text
    assert not lock.lock_path(root).exists() and (root / "train" / "checkpoints" / ckpt.RECORD).is_file()


def test_without_flock_a_lock_file_is_created_exclusively_and_a_dead_holder_detected(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "fcntl", None)
    root = tmp_path / "exps" / "subject" / "method" / "split"
    path = lock.lock_path(root)
    with lock.experiment_lock(root):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists() and not (tmp_path / "exps").exists()  # the folders made for it went too
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for pid, refused in ((int(finished.stdout), False), (os.getppid(), True)):  # a finished process, a running one
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pid": pid, "host": lock.socket.gethostname(), "started": "earlier"}))
        if refused:
            with pytest.raises(ExperimentInUseError, match=f"process {pid} .*if that run is no longer running, "
                                                           f"delete it"):
                lock.acquire(root)
        else:
            lock.acquire(root)
            lock.release(root)
        assert path.exists() == refused


# ---- 4. --overwrite with a run that cannot start ------------------------------------------------------

def test_overwrite_moves_nothing_when_the_new_run_fails_a_check(data_folder, tmp_path, capsys):
    Trainer(tiny_conf(data_folder, tmp_path), TrainOptions(nepoch=1)).run()
    root = experiment_root(tmp_path)
    before = digest(root)
    err = one_line_exit_2(capsys, lambda: run_cli(data_folder, tmp_path, "--overwrite", "--nepoch", "1",
                                                  "model.rasterizer=foo"))
    assert "unknown rasterizer backend 'foo'" in err
    assert digest(root) == before and sorted(p.name for p in root.parent.iterdir()) == [SPLIT]


# ---- 5. resuming from an earlier checkpoint ----------------------------------------------------------

def test_resuming_from_an_earlier_checkpoint_never_replaces_the_later_ones(data_folder, tmp_path, caplog):
    conf = tiny_conf(data_folder, tmp_path, "train.save_freq=1", "train.numbered_save_every=1")
    Trainer(conf, TrainOptions(nepoch=2)).run()
    root = experiment_root(tmp_path)
    before = digest(root)
    with pytest.raises(CheckpointError, match=r"--checkpoint 1: .* holds later checkpoints \(2, latest \(2\)\).*"
                                              r"--load_path .* train.methodname=<name>.*--overwrite"):
        Trainer(conf, TrainOptions(nepoch=3, is_continue=True, checkpoint="1"))
    assert digest(root) == before
    # Asked for: the experiment is moved aside, whole, and the run goes on from epoch 1 in its place.
    trainer = Trainer(conf, TrainOptions(nepoch=2, is_continue=True, checkpoint="1", overwrite=True))
    assert trainer.start_epoch == 1
    aside, = [p for p in root.parent.iterdir() if p.name.startswith(f"{SPLIT}.replaced-")]
    assert digest(aside) == before
    trainer.run()
    assert ckpt.latest_epoch(root / "train" / "checkpoints") == 2
    # Another experiment's checkpoint would replace this one's too.
    with pytest.raises(CheckpointError, match=r"--load_path .*: this run's own experiment .* holds checkpoints"):
        Trainer(conf, TrainOptions(nepoch=3, is_continue=True, load_path=str(aside / "train")))
    # Resumed with the same conf given by another path: nothing to keep aside, no warning.
    earlier = (root / "train" / "runconf.conf").read_text()
    same = tiny_conf(data_folder, tmp_path, "train.save_freq=1", "train.numbered_save_every=1")
    same = dataclasses.replace(same, source=f"./{same.source}")
    caplog.clear()
    Trainer(same, TrainOptions(nepoch=2, is_continue=True)).run()
    assert not list((root / "train").glob("runconf.until-*")) and "another conf" not in caplog.text
    assert (root / "train" / "runconf.conf").read_text() != earlier  # the header names the path given
    # Resumed with another conf, the experiment keeps the conf its earlier epochs were trained with.
    earlier = (root / "train" / "runconf.conf").read_text()
    Trainer(tiny_conf(data_folder, tmp_path, "train.save_freq=1", "train.numbered_save_every=1", "train.plot_n_images=1"),
            TrainOptions(nepoch=2, is_continue=True)).run()
    assert (root / "train" / "runconf.until-epoch-2.conf").read_text() == earlier != \
        (root / "train" / "runconf.conf").read_text()


# ---- 6. an unwritable experiment folder --------------------------------------------------------------

@pytest.fixture
def permissions(monkeypatch):
    """Make a folder read-only with chmod; where the tests run as root, whom the kernel lets write
    anyway, its refusal to an ordinary user is emulated for the files the package creates (os.open)."""
    if os.geteuid() == 0:
        real_open = os.open

        def refusing_open(path, flags, *args, **kwargs):
            parent = os.path.dirname(os.path.abspath(path))
            if flags & os.O_CREAT and not os.path.exists(path) and not os.stat(parent).st_mode & stat.S_IWUSR:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        real_mkdir = os.mkdir

        def refusing_mkdir(path, *args, **kwargs):
            if not os.stat(os.path.dirname(os.path.abspath(path))).st_mode & stat.S_IWUSR:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)
        monkeypatch.setattr(os, "mkdir", refusing_mkdir)

    def read_only(folder: Path) -> None:
        for path in [folder, *folder.rglob("*")]:
            if path.is_dir():
                path.chmod(0o555)

    yield read_only


def test_an_unwritable_experiment_is_one_line_before_any_work(data_folder, tmp_path, capsys, permissions):
    Trainer(tiny_conf(data_folder, tmp_path), TrainOptions(nepoch=1)).run()
    root = experiment_root(tmp_path)
    before = digest(root)
    permissions(root)
    try:
        err = one_line_exit_2(capsys, lambda: run_cli(data_folder, tmp_path, "--is_continue", "--nepoch", "2"))
        assert err.startswith(f"error: cannot write in {root}") and "Permission denied" in err, err
        assert digest(root) == before
        readonly_exps = tmp_path / "readonly"
        readonly_exps.mkdir()
        permissions(readonly_exps)
        err = one_line_exit_2(capsys, lambda: run_cli(data_folder, readonly_exps, "--nepoch", "1"))
        assert "Permission denied" in err and "train.exps_folder" in err, err
    finally:
        for path in [tmp_path, *tmp_path.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)


# ---- checksums ----------------------------------------------------------------------------------------

def flip_a_byte(path: Path) -> None:
    """Bit rot: one byte in the middle of the file changes (its tensors stay finite, its zip readable)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_checkpoint_damaged_on_the_disk_is_detected_and_older_ones_still_load(data_folder, tmp_path, caplog):
    Trainer(tiny_conf(data_folder, tmp_path), TrainOptions(nepoch=1)).run()
    checkpoints = experiment_root(tmp_path) / "train" / "checkpoints"
    names = [ckpt.MODEL, ckpt.OPTIMIZER]
    records = {tag: json.loads(ckpt.record_path(checkpoints, tag).read_text()) for tag in ("latest", 1)}
    assert set(records["latest"]["sha256"]) == set(records["latest"]["parts"]) and records[1] == records["latest"]
    # Checkpoints of earlier versions: records without checksums, no records of numbered ones.
    ckpt.record_path(checkpoints, 1).unlink()
    ckpt.record_path(checkpoints).write_text(json.dumps({"epoch": 1, "parts": records["latest"]["parts"]}))
    assert ckpt.load_checkpoint(checkpoints, names)[1] == "latest"
    assert ckpt.load_checkpoint(checkpoints, names, 1)[1] == "1"
    for tag, record in records.items():
        ckpt.record_path(checkpoints, tag).write_text(json.dumps(record))
    flip_a_byte(checkpoints / ckpt.MODEL / "latest.pth")
    caplog.set_level("WARNING")
    parts, tag = ckpt.load_checkpoint(checkpoints, names)
    assert tag == "1" and "latest.pth is damaged: its sha256 differs" in caplog.text
    flip_a_byte(checkpoints / ckpt.OPTIMIZER / "1.pth")
    with pytest.raises(CheckpointError, match=r"1.pth is damaged"):
        ckpt.load_checkpoint(checkpoints, names, 1)  # asked for by name: never replaced
    with pytest.raises(CheckpointError, match=r"latest.pth is damaged.*no complete numbered checkpoint"):
        ckpt.load_checkpoint(checkpoints, names)
