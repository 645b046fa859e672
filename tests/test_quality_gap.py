"""quality_vs_time's generalisation report: the training frames scored as the test split is, the gap
between them and the test split, the largest fall of test PSNR, and the mean and spread over
synthetic subjects of several seeds (`--seeds`). The clock is a fixed amount per epoch."""

from __future__ import annotations

import csv
import json

import imageio.v2 as imageio
import numpy as np
import pytest

from dynavatar.cli import quality_vs_time
from dynavatar.cli.quality_vs_time import BudgetRow, fit_moved, largest_drop, seeds_drop_line
from dynavatar.errors import ConfigError
from dynavatar.evaluate.training_frames import spread_indices
from tiny_experiment import DEMO, experiment_root, tiny_overrides


def half_a_minute(stats: dict[str, float]) -> float:  # a fake clock: every epoch takes 30 s
    return 30.0


def test_each_evaluation_scores_training_frames_and_the_gap(data_folder, tmp_path):
    out, table = tmp_path / "q.json", tmp_path / "q.csv"
    args = ["--conf", DEMO, "--budgets", "0.5,1", "--nepoch", "2", "--train_frames", "3", "--figure", "2",
            "--json", str(out), "--csv", str(table), *tiny_overrides(data_folder, tmp_path / "exps")]
    assert quality_vs_time.run(args, epoch_seconds=half_a_minute) == 0
    document = json.loads(out.read_text())
    rows = document["rows"]
    assert [r["epochs"] for r in rows] == [1, 2]
    for r in rows:
        assert 5 < r["train_frames_psnr"] < 60
        assert 5 < r["train_frames_fitted_psnr"] < 60
        assert r["gap_db"] == r["train_frames_psnr"] - r["test_psnr"]
        assert r["gap_fitted_db"] == r["train_frames_fitted_psnr"] - r["test_psnr"]
        assert 5 < r["test_psnr_unopened"] < 60 and r["test_psnr_unopened"] != r["test_psnr"]
        assert r["gap_unopened_db"] == r["train_frames_psnr_unopened"] - r["test_psnr_unopened"]
        assert r["test_novelty"]["head_novelty_deg"]["max"] >= r["test_novelty"]["head_novelty_deg"]["mean"] > 0
        assert r["test_fit_change"]["expression_max"] >= r["test_fit_change"]["expression_mean"] > 0
    assert rows[0]["train_frames_psnr"] != rows[1]["train_frames_psnr"]  # each model scored
    assert document["drop_after_min"] == 2.0 and document["largest_drop"] is None  # nothing after 2 min
    lines = list(csv.DictReader(table.open()))
    assert [float(line["gap_db"]) for line in lines] == pytest.approx([r["gap_db"] for r in rows])
    assert [json.loads(line["test_novelty"]) for line in lines] == [r["test_novelty"] for r in rows]
    assert [json.loads(line["test_fit_change"]) for line in lines] == [r["test_fit_change"] for r in rows]
    assert {line["seed"] for line in lines} == {""}
    root = experiment_root(tmp_path / "exps", "demo-quality_vs_time")
    assert "| gap (dB) | gap, fitted |" in (root / "quality_vs_time.md").read_text()
    table_text = (root / "quality_vs_time.md").read_text()
    assert "| test PSNR unopened | gap unopened | ceiling | fit moved expression / jaw |" in table_text
    last = rows[-1]["test_fit_change"]
    assert f"| {last['expression_mean']:.2f} / {last['jaw_deg_mean']:.2f}° |" in table_text
    # Three training frames spread over both training videos, their images as the test split's.
    scored = sorted(p.parent.parent.parent.name for p in (root / "eval" / "training_frames").glob("*/epoch_2/gt/*"))
    assert scored == ["MVI_1810", "MVI_1814", "MVI_1814"]  # frames 0, 6 and 11 of 12
    fitted = (root / "eval" / "training_frames_fitted").glob("*/epoch_2/gt/*")
    assert sorted(p.parent.parent.parent.name for p in fitted) == scored  # the same frames, fitted
    # The figure: two test frames (ground truth above rendering) above two training frames.
    assert imageio.imread(root / "figure_1min.png").shape[:2] == (4 * 32, 2 * 32)


def test_the_fit_moved_cell_says_what_was_not_fitted():
    assert fit_moved({"expression_mean": 0.123, "jaw_deg_mean": 1.0}) == "0.12 / 1.00°"
    assert fit_moved({"expression_mean": 0.5}) == "0.50 / -"  # expressions fitted, pose not
    assert fit_moved({}) == "- / -"  # nothing fitted


def test_the_largest_fall_counts_from_the_first_evaluation_after_two_minutes():
    def row(minutes: float, psnr: float) -> BudgetRow:
        return BudgetRow(minutes, minutes, 1, 100, 30.0, 30.0, 30.0, psnr, 30.0 - psnr, 30.0 - psnr, 0.9, 0.01, [],
                         psnr, 30.0, 30.0 - psnr, 35.0)

    rows = [row(1, 25.0), row(2.5, 21.0), row(5, 20.5), row(10, 20.9), row(20, 20.6)]
    assert largest_drop(rows, 2.0) == {"drop_db": pytest.approx(0.5), "from": "2.5 min", "to": "5 min"}
    assert largest_drop(rows, 0.5)["drop_db"] == pytest.approx(4.0)  # the fall from 1 to 2.5 min counts now
    assert largest_drop([row(2, 20.0), row(5, 21.0)], 2.0)["drop_db"] == 0.0  # it never fell
    assert largest_drop(rows, 15.0) is None
    assert spread_indices(10, 3).tolist() == [0, 4, 9] and spread_indices(2, 20).tolist() == [0, 1]
    # Per seed: a seed that ended before its second evaluation from 2 minutes on is said to have none.
    drops = [largest_drop(rows, 2.0), largest_drop(rows, 15.0)]
    assert seeds_drop_line(drops, 2.0).endswith(": 0.50 dB, - (largest 0.50 dB; -: fewer than two evaluations)")
    assert seeds_drop_line([None], 2.0).endswith(": - (-: fewer than two evaluations)")


def test_seeds_measure_one_generated_subject_each_with_mean_and_spread(tmp_path, capsys):
    out, table = tmp_path / "q.json", tmp_path / "q.csv"
    synthetic = [f"dataset.data_folder={tmp_path / 'datasets'}", "dataset.synthetic=true", "dataset.subject_name=s",
                 "dataset.synthetic_frames=3", "dataset.synthetic_test_motion=extrapolate"]
    args = ["--conf", DEMO, "--epochs", "1", "--seeds", "0,1", "--train_frames", "2", "--json", str(out),
            "--csv", str(table), *tiny_overrides(tmp_path / "unused", tmp_path / "exps"), *synthetic]
    assert quality_vs_time.run(args, epoch_seconds=half_a_minute) == 0
    document = json.loads(out.read_text())
    runs = document["runs"]
    assert [(r["seed"], r["subject"]) for r in runs] == [(0, "s-seed0"), (1, "s-seed1")]
    for seed in (0, 1):
        marker = json.loads((tmp_path / "datasets" / f"s-seed{seed}" / ".dynavatar-synthetic").read_text())
        assert (marker["seed"], marker["test_motion"]) == (seed, "extrapolate")
    assert runs[0]["rows"][0]["test_psnr"] != runs[1]["rows"][0]["test_psnr"]  # two subjects
    (entry,) = document["summary"]
    assert entry["seeds"] == 2 and entry["epochs"] == [1, 1]
    for column in ("train_frames_psnr", "train_frames_fitted_psnr", "test_psnr", "gap_db", "gap_fitted_db"):
        values = [r["rows"][0][column] for r in runs]
        assert entry[column]["mean"] == pytest.approx(np.mean(values))
        assert entry[column]["std"] == pytest.approx(np.std(values, ddof=1))
    assert entry["gap_db"]["mean"] == pytest.approx(entry["train_frames_psnr"]["mean"] - entry["test_psnr"]["mean"])
    assert [line["subject"] for line in csv.DictReader(table.open())] == ["s-seed0", "s-seed1"]
    printed = capsys.readouterr().out
    assert "mean ± standard deviation over 2 subjects (seeds 0, 1)" in printed and "seed 1**" in printed
    # A conf of a real subject has no seeds to draw.
    with pytest.raises(ConfigError, match="--seeds needs a synthetic subject"):
        quality_vs_time.run([*args[:-len(synthetic)], "--name", "other"], epoch_seconds=half_a_minute)
    with pytest.raises(ConfigError, match="--seeds"):
        quality_vs_time.run([*args, "--seeds", "1,1"], epoch_seconds=half_a_minute)
