"""A run killed with SIGKILL at random moments and resumed with --is_continue after each kill ends
bitwise identical to an uninterrupted run: every parameter, optimiser moment, per-frame input and
RNG state of its final checkpoint. Through the command line, in subprocesses, on the CPU."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dynavatar.experiment import checkpoints as ckpt
from dynavatar.subject_generator import generate_subject

REPO = Path(__file__).resolve().parents[1]
SUBJECT = "killed"
NEPOCH = 15
KILLS = 7


def command(data: Path, exps: Path) -> list[str]:
    """The demo conf on a tiny subject: growth at epochs 2 and 6 and pruning at every epoch, a save
    every epoch (a numbered one every 5), per-frame inputs refined from the start."""
    return [sys.executable, str(REPO / "scripts" / "exp_runner.py"), "--conf", str(REPO / "confs" / "demo.conf"),
            "--is_continue", "--nepoch", str(NEPOCH), "--quiet", "--no_videos",
            f"dataset.data_folder={data}", f"dataset.subject_name={SUBJECT}", "dataset.synthetic=false",
            "dataset.train.img_res=[32, 32]", "dataset.test.img_res=[32, 32]", f"train.exps_folder={exps}",
            "train.plot_freq=1000", "train.save_freq=1", "train.optimize_inputs_after_epoch=0", "train.max_batch=2",
            "model.point_cloud.n_init_points=100", "model.point_cloud.max_points=200",
            "model.point_cloud.schedule_epochs=[2, 6]", "model.point_cloud.schedule_points=[150, 200]",
            "model.point_cloud.radius_factors=[0.75, 0.75]", "evaluation.test_fit_steps=1"]


def runconf(exps: Path) -> Path:
    return exps / SUBJECT / "demo" / "MVI_1810+MVI_1814" / "train" / "runconf.conf"


def start(cmd: list[str]) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), time.time()


def wait_for_training(process: subprocess.Popen, started: float, exps: Path) -> bool:
    """Wait until the run has started training (it writes runconf.conf then); False if it exited first."""
    while process.poll() is None:
        path = runconf(exps)
        if path.is_file() and path.stat().st_mtime >= started - 1:
            return True
        time.sleep(0.02)
    return False


def same(a, b, where: str = "") -> None:
    """Bitwise equality of nested checkpoint contents."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{k}]")
    else:
        assert a == b, where


@pytest.mark.slow
def test_runs_killed_at_random_moments_and_resumed_end_as_an_uninterrupted_run(tmp_path):
    data = tmp_path / "datasets"
    generate_subject(data, SUBJECT, res=32, frames=3, seed=13)
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    process, started = start(command(data, straight))
    assert wait_for_training(process, started, straight), process.communicate()[1][-3000:]
    training_started = time.monotonic()
    assert process.wait(timeout=300) == 0, process.communicate()[1][-3000:]
    epoch_time = (time.monotonic() - training_started) / NEPOCH  # (the final evaluation included: an upper bound)

    rng = random.Random(0)
    record = runconf(killed).parent / "checkpoints" / ckpt.RECORD

    def saved() -> int:
        return json.loads(record.read_text())["epoch"] if record.is_file() else 0

    # Each kill hits the first or the second epoch after the resume (saves, growth and pruning all
    # get hit) at a random moment, and at the latest when that epoch's save appears: a run then
    # advances at most `skip + 1` epochs a kill, however fast the machine, and every kill comes
    # before the last epoch. Each skipped epoch makes the next resume start later.
    skips = [rng.choice([0, 1]) for _ in range(KILLS)]
    assert sum(skips) + KILLS < NEPOCH and sum(skips) >= 2  # the plan itself (seeded): kills fit, resumes differ
    resumed_from: list[int] = []  # the epoch of the checkpoint each kill left
    for skip in skips:
        process, started = start(command(data, killed))
        if not wait_for_training(process, started, killed):
            break
        target = saved() + skip
        while saved() < target and process.poll() is None:
            time.sleep(0.01)
        # A random moment of epoch target + 1, measured from the save of epoch `target`.
        deadline = time.monotonic() + rng.uniform(0.0, 1.0) * epoch_time
        while time.monotonic() < deadline and saved() <= target and process.poll() is None:
            time.sleep(0.005)
        if process.poll() is not None:
            break  # it finished before its kill: nothing left to resume
        process.send_signal(signal.SIGKILL)
        process.wait()
        resumed_from.append(saved())
    process, _ = start(command(data, killed))
    assert process.wait(timeout=300) == 0, process.communicate()[1][-3000:]
    assert len(resumed_from) == KILLS and len(set(resumed_from)) >= 3, resumed_from

    a = straight / SUBJECT / "demo" / "MVI_1810+MVI_1814" / "train" / "checkpoints"
    b = killed / SUBJECT / "demo" / "MVI_1810+MVI_1814" / "train" / "checkpoints"
    for part in ckpt.PARTS:
        x = torch.load(a / part / "latest.pth", weights_only=True)
        y = torch.load(b / part / "latest.pth", weights_only=True)
        assert x["epoch"] == y["epoch"] == NEPOCH
        same(x, y, part)
    assert not list(b.rglob("*.tmp"))
