"""scripts/benchmark.py: the quick CPU run prints its table, its profile and writes its JSON; the schedule
projection adds up per-epoch times correctly."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from dynavatar.cli.benchmark import Row, parse_sizes, project_schedule
from dynavatar.config import default_conf
from dynavatar.model.precision import cpu_bfloat16_instructions

REPO = Path(__file__).resolve().parents[1]


def test_quick_run_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "scripts/benchmark.py", "--quick", "--data", str(tmp_path / "data"),
                             "--project", "--project-epochs", "3", "--project-frames", "10", "--profile", "--json", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| Gaussians | batch | train step (ms)" in result.stdout and "projected: 3 epochs" in result.stdout
    report = json.loads(out.read_text())
    assert [(r["gaussians"], r["batch"]) for r in report["rows"]] == [(400, 4), (2000, 2)]
    for row in report["rows"]:
        assert row["train_ms"] > 0 and row["render_ms"] > 0 and row["sequence_fps"] > 0
        assert row["train_fps"] == pytest.approx(row["batch"] / row["train_ms"] * 1e3)
        assert row["loop_ms"] > 0 and row["loop_fps"] == pytest.approx(row["batch"] / row["loop_ms"] * 1e3)
    assert report["environment"]["device"] == "cpu" and report["projection"]["minutes"] > 0
    # the arithmetic the figures were measured with, in the header and the json
    environment = report["environment"]
    assert (environment["conf"], environment["network_precision"], environment["tf32"]) == ("subject1.conf", "float32", False)
    assert "subject1.conf, networks in float32, TF32 off" in result.stdout
    # --profile: one summary per timed call, after the timings; on the CPU the operators' own time
    assert [p["label"] for p in report["profile"]] == ["train 400:4", "render 400:1", "train 2000:2", "render 2000:1"]
    for summary in report["profile"]:
        assert 0 < summary["busy_ms"] and summary["top"] and summary["launches"] == 0
        assert any(name.startswith("aten::") for name, _, _ in summary["top"])
    assert "| call | wall (ms) | busy (ms)" in result.stdout


def test_the_header_gives_the_arithmetic_as_it_ran(tmp_path):
    """fast.conf asks for TF32 and bfloat16 networks: on a CPU TF32 does nothing, and bfloat16 runs where
    the CPU has bfloat16 instructions (float32 elsewhere)."""
    result = subprocess.run([sys.executable, "scripts/benchmark.py", "--quick", "--sizes", "400:1", "--conf",
                             "confs/fast.conf", "--data", str(tmp_path / "data"), "--warmup", "1", "--repeat", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ran_in = "bfloat16" if cpu_bfloat16_instructions() else "float32"
    assert f"fast.conf, networks in {ran_in}, TF32 off" in result.stdout


def test_projection_follows_the_point_schedule():
    schedule = default_conf().model.point_cloud  # 400 points for epochs 0-4, 800 for 5-9, ...
    # 1 and 2 ms per frame back to back (the steps timed alone, 5 ms more, are not the training loop's pace)
    rows = [Row(400, 8, 13.0, 0, 8.0, 0, None, None, 1, 1, 1), Row(1600, 8, 21.0, 0, 16.0, 0, None, None, 1, 1, 1)]
    seconds = project_schedule(rows, schedule, epochs=10, frames=1000)
    # epochs 0-4 at 400 points: 1 ms a frame; epochs 5-9 at 800: log-log halfway, sqrt(2) ms a frame.
    assert seconds == pytest.approx(5 * 1.0 + 5 * math.sqrt(2.0))


def test_bad_sizes_are_refused():
    assert parse_sizes("400:8,100000:1") == [(400, 8), (100000, 1)]
    with pytest.raises(SystemExit, match="GAUSSIANS:BATCH"):
        parse_sizes("400x8")
