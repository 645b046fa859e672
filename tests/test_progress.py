"""Progress bars: drawn by default, silent under a command's --quiet (with the info messages)."""

from __future__ import annotations

from dynavatar.cli import exp_runner
from dynavatar.cli.common import setup_logging
from dynavatar.progress import progress
from tiny_experiment import DEMO, tiny_overrides


def test_bars_are_drawn_unless_quiet(capsys):
    try:
        setup_logging(quiet=False)
        for _ in progress(range(3), desc="counting"):
            pass
        assert "counting" in capsys.readouterr().err
        setup_logging(quiet=True)
        for _ in progress(range(3), desc="counting"):
            pass
        assert "counting" not in capsys.readouterr().err
    finally:
        setup_logging(quiet=False)


def test_a_quiet_run_trains_and_evaluates_without_bars(data_folder, tmp_path, capsys):
    try:
        code = exp_runner.run(["--conf", DEMO, "--nepoch", "1", "--no_videos", "--quiet",
                               *tiny_overrides(data_folder, tmp_path)])
    finally:
        setup_logging(quiet=False)
    assert code == 0
    err = capsys.readouterr().err
    for bar in ("loading tiny images", "epoch 0", "training", "fitting test frames", "evaluating"):
        assert bar not in err, (bar, err[-2000:])
