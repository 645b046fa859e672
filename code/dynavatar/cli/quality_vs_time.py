"""Quality against training time: train a recipe for a wall-clock budget and evaluate it on the test
split at fixed moments, beside its own training frames.

Training time counts the epochs only (data loading before the first epoch and the evaluations are
left out). When the clock passes a budget, the checkpoint of that epoch is written and evaluated
as `--is_eval` would (test inputs fitted by the conf's protocol, no videos); training stops after
the last budget, or at the conf's `--nepoch` when that comes first (later budgets then report the
final model). At each evaluation `--train_frames` evenly spaced training frames are scored the same
way twice: with the inputs training used (its refined ones when it refines them; nothing fitted),
and with their tracked inputs fitted by the test protocol, exactly as the test frames are. The gap,
training-frames PSNR minus test PSNR, is what the avatar fails to generalise; the fitted gap leaves
out what per-frame refinement fits and no new frame gets. One table row per budget: test
PSNR/SSIM/L1, the training frames' PSNR both ways and both gaps, training PSNR (the last epoch's
batches), Gaussians, epochs, and the test PSNR and gap of the renderings without the protocol's
3x3 erode-dilation beside the ground truth's own PSNR through it (at 64 px the opening, not the
avatar, sets most of the error), and how far the test fit moved the test frames' expressions and
jaws from their tracked values; below it the largest fall of test PSNR between consecutive
evaluations from `--drop_after` minutes on.

`--epochs` evaluates after given epochs instead of budgets: for ablations whose runs share a GPU,
where wall-clock time says little.

`--seeds 0,1,2` measures the recipe on one generated synthetic subject per seed (the conf's
subject must be synthetic; subject `<subject_name>-seed<N>`, `dataset.synthetic_seed = N`), one run
after the other, and adds a table of the mean and standard deviation over the seeds per budget.

The run is an experiment of its own, <exps_folder>/<subject>/<name>/<split>/, named by `--name`, else
by a `train.methodname=` override, else `<conf file name>-quality_vs_time` (never the folder of a
normal run of the conf). A folder that already holds a run is never replaced unless `--overwrite`
asks for it (the earlier run is then moved aside, whole, as `exp_runner.py --overwrite` does).

  python scripts/quality_vs_time.py --conf confs/fast.conf --budgets 2,5,10 --json fast.json
  python scripts/quality_vs_time.py --conf confs/subject1.conf --budgets 2,5,10 --name paper
  python scripts/quality_vs_time.py --conf confs/fast.conf --epochs 17,33 --name no_colors model.point_colors=false
  python scripts/quality_vs_time.py --conf confs/demo.conf --seeds 0,1,2 --budgets 2,5,10 --csv demo.csv \
      dataset.synthetic_test_motion=extrapolate dataset.subject_name=demo_extrapolate
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import imageio.v2 as imageio
import numpy as np

from ..config import Conf, load_conf, parse_override
from ..errors import ConfigError
from ..experiment.paths import ExperimentPaths
from .common import main_with_errors, setup_logging

log = logging.getLogger("quality_vs_time")


@dataclass
class BudgetRow:
    budget_min: float | None  # the budget asked for (None when evaluated at a given epoch)
    train_min: float  # training time actually spent when evaluated
    epochs: int
    gaussians: int
    train_psnr: float  # mean over the last epoch's training batches
    train_frames_psnr: float  # training frames scored as the test split is, inputs as trained (evaluate/training_frames.py)
    train_frames_fitted_psnr: float  # the same frames, tracked inputs fitted as the test split's are
    test_psnr: float
    gap_db: float  # train_frames_psnr - test_psnr
    gap_fitted_db: float  # train_frames_fitted_psnr - test_psnr
    test_ssim: float
    test_l1: float
    fitted_inputs: list[str]
    # without the protocol's erode-dilation (evaluate/report.py), whose 3x3 kernel dominates at 64 px
    test_psnr_unopened: float
    train_frames_psnr_unopened: float
    gap_unopened_db: float  # train_frames_psnr_unopened - test_psnr_unopened
    test_psnr_ground_truth_opened: float  # what a perfect rendering scores on the test frames
    # the test frames' distances to the training frames (the same at every evaluation) and their
    # correlation with this evaluation's PSNR: metrics.json's "novelty" (flame/novelty.py)
    test_novelty: dict[str, Any] = field(default_factory=dict)
    # how far the test-time fit moved the test frames' inputs from their tracked ones: metrics.json's
    # "fit_change" (model/frame_inputs.py)
    test_fit_change: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    """One experiment of the measurement: its subject, its seed (with --seeds) and its rows so far."""

    conf: Conf
    seed: int | None
    rows: list[BudgetRow] = field(default_factory=list)

    @property
    def subject(self) -> str:
        return self.conf.dataset.subject_name


def parse_moments(text: str, option: str, kind: type = float) -> list:
    """A comma-separated list of positive budgets (minutes) or epochs, sorted."""
    example = "2,5,10" if kind is float else "17,23,33"
    try:
        moments = sorted(kind(b) for b in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected {kind.__name__} values separated by commas, "
                          f"e.g. {example}") from None
    if not moments or moments[0] <= 0:
        raise ConfigError(f"{option} {text!r}: values must be positive, e.g. {example}")
    return moments


def parse_seeds(text: str) -> list[int]:
    """--seeds: distinct non-negative integers separated by commas, in the order given."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2") from None
    if min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: seeds must be distinct and 0 or more, e.g. 0,1,2")
    return seeds


def measured_seconds(stats: dict[str, float]) -> float:
    """The seconds an epoch counts against the budgets: the wall-clock time the trainer measured for
    its training steps."""
    return stats["epoch_time_s"]


def method_name(conf_path: str, name: str, overrides: Sequence[str]) -> str:
    """The run's train.methodname: `--name`, else a `train.methodname=` override, else
    `<conf file name>-quality_vs_time`, which no normal run of the conf writes to."""
    given = [str(value) for key, value in map(parse_override, overrides) if key == "train.methodname"]
    if name and given and given[-1] != name:
        raise ConfigError(f"--name {name} and train.methodname={given[-1]} name two different runs: give one of them")
    return name or (given[-1] if given else f"{Path(conf_path).stem}-quality_vs_time")


def moment(row: BudgetRow) -> str:
    return f"epoch {row.epochs}" if row.budget_min is None else f"{row.budget_min:g} min"


def largest_drop(rows: Sequence[BudgetRow], after_min: float) -> dict | None:
    """The largest fall of test PSNR between consecutive evaluations, counted from the first
    evaluation at or after `after_min` minutes of training: {"drop_db" (0 when it never fell),
    "from", "to"}, or None with fewer than two such evaluations."""
    late = [r for r in rows if r.train_min >= after_min]
    if len(late) < 2:
        return None
    falls = [(a.test_psnr - b.test_psnr, a, b) for a, b in zip(late, late[1:])]
    drop, a, b = max(falls, key=lambda f: f[0])
    return {"drop_db": max(drop, 0.0), "from": moment(a), "to": moment(b)}


def fall_heading(after_min: float) -> str:
    return f"largest test-PSNR fall between evaluations from {after_min:g} min on"


def drop_line(drop: dict | None, after_min: float) -> str:
    if drop is None:
        return f"{fall_heading(after_min)}: - (fewer than two evaluations)"
    where = f" ({drop['from']} -> {drop['to']})" if drop["drop_db"] > 0 else " (it never fell)"
    return f"{fall_heading(after_min)}: {drop['drop_db']:.2f} dB{where}"


def fit_moved(change: dict[str, float]) -> str:
    """The table's cell for metrics.json's fit_change: mean expression / jaw change, '-' when a part
    was not fitted."""
    expression, jaw = change.get("expression_mean"), change.get("jaw_deg_mean")
    return (f"{'-' if expression is None else f'{expression:.2f}'} / "
            f"{'-' if jaw is None else f'{jaw:.2f}°'}")


def markdown(rows: Sequence[BudgetRow], title: str, after_min: float) -> str:
    lines = [f"**{title}**", "",
             "| budget (min) | trained (min) | epochs | Gaussians | train PSNR | train-frames PSNR | fitted | test PSNR | "
             "gap (dB) | gap, fitted | test SSIM | test L1 | test PSNR unopened | gap unopened | ceiling | "
             "fit moved expression / jaw |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        budget = "-" if r.budget_min is None else f"{r.budget_min:g}"
        lines.append(f"| {budget} | {r.train_min:.1f} | {r.epochs} | {r.gaussians:,} | {r.train_psnr:.2f} | "
                     f"{r.train_frames_psnr:.2f} | {r.train_frames_fitted_psnr:.2f} | {r.test_psnr:.2f} | "
                     f"{r.gap_db:.2f} | {r.gap_fitted_db:.2f} | {r.test_ssim:.4f} | "
                     f"{r.test_l1:.4f} | {r.test_psnr_unopened:.2f} | {r.gap_unopened_db:.2f} | "
                     f"{r.test_psnr_ground_truth_opened:.2f} | {fit_moved(r.test_fit_change)} |")
    return "\n".join([*lines, "", TABLE_NOTE, "", drop_line(largest_drop(rows, after_min), after_min)])


TABLE_NOTE = ("PSNR, SSIM and L1 are the paper's protocol: the rendering erode-dilated by a 3x3 kernel. "
              "'unopened' scores the rendering itself; 'ceiling' is the ground truth put through the same "
              "opening, what a perfect rendering scores by the protocol at this resolution. 'fit moved': how "
              "far the test fit took the test frames' expressions (length of the coefficients' change) and "
              "jaws from their tracked values, on average (metrics.json's fit_change).")


SUMMARY_COLUMNS = ("train_frames_psnr", "train_frames_fitted_psnr", "test_psnr", "gap_db", "gap_fitted_db",
                   "test_psnr_unopened", "gap_unopened_db")


def summary(runs: Sequence[Run]) -> list[dict]:
    """Per evaluation moment: the mean and standard deviation (ddof 1; 0 for one seed) over the runs
    that reached it of the training frames' PSNR (both ways), the test PSNR and both gaps, and the
    test PSNR and gap without the protocol's erode-dilation."""
    out = []
    for index in range(max(len(r.rows) for r in runs)):
        rows = [r.rows[index] for r in runs if len(r.rows) > index]
        entry = {"budget_min": rows[0].budget_min, "epochs": [r.epochs for r in rows], "seeds": len(rows)}
        for name in SUMMARY_COLUMNS:
            values = np.array([getattr(r, name) for r in rows])
            entry[name] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
        out.append(entry)
    return out


def summary_markdown(runs: Sequence[Run], title: str, after_min: float) -> str:
    subjects = "1 subject" if len(runs) == 1 else f"{len(runs)} subjects"
    lines = [f"**{title}: mean ± standard deviation over {subjects} (seeds "
             f"{', '.join(str(r.seed) for r in runs)})**", "",
             "| budget (min) | epochs | seeds | train-frames PSNR | fitted | test PSNR | gap (dB) | gap, fitted | "
             "test PSNR unopened | gap unopened |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in summary(runs):
        budget = "-" if e["budget_min"] is None else f"{e['budget_min']:g}"
        epochs = "/".join(str(n) for n in e["epochs"])
        cells = " | ".join(f"{e[c]['mean']:.2f} ± {e[c]['std']:.2f}" for c in SUMMARY_COLUMNS)
        lines.append(f"| {budget} | {epochs} | {e['seeds']} | {cells} |")
    lines += ["", seeds_drop_line([largest_drop(r.rows, after_min) for r in runs], after_min)]
    return "\n".join(lines)


def seeds_drop_line(drops: Sequence[dict | None], after_min: float) -> str:
    """The largest fall per seed (`largest_drop`'s, None where a seed had fewer than two evaluations)."""
    known = [d["drop_db"] for d in drops if d is not None]
    per_seed = ", ".join("-" if d is None else f"{d['drop_db']:.2f} dB" for d in drops)
    notes = ([f"largest {max(known):.2f} dB"] if known else []) + (
        ["-: fewer than two evaluations"] if len(known) < len(drops) else [])
    return f"{fall_heading(after_min)}, per seed: {per_seed}" + (f" ({'; '.join(notes)})" if notes else "")


def frame_names(folder: Path) -> list[str]:
    return sorted((p.name for p in (folder / "gt").glob("*.png")), key=lambda n: int(Path(n).stem))


def contact_sheet(folders: Sequence[Path], frames: int) -> np.ndarray:
    """Ground truth above rendering for the first `frames` frames of evaluation folders, in order."""
    found = [(folder, name) for folder in folders for name in frame_names(folder)][:frames]
    columns = [np.concatenate([imageio.imread(f / "gt" / n)[..., :3], imageio.imread(f / "rgb" / n)[..., :3]])
               for f, n in found]
    return np.concatenate(columns, axis=1)


def stacked(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """`top` above `bottom` [H, W, 3] uint8, the narrower one padded with white on the right."""
    width = max(top.shape[1], bottom.shape[1])
    pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
    return np.concatenate([pad(top), pad(bottom)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quality_vs_time.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conf", required=True, help="the recipe (e.g. confs/fast.conf)")
    parser.add_argument("--budgets", default="2,5,10,20", help="minutes of training at which to evaluate")
    parser.add_argument("--epochs", default="",
                        help="evaluate after these epochs instead of at budgets (e.g. 17,23,33)")
    parser.add_argument("--nepoch", type=int, default=None, help="stop after this many epochs (default: the conf's)")
    parser.add_argument("--name", default="", help="train.methodname of the run (default: a train.methodname= "
                                                   "override, else <conf file name>-quality_vs_time)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run of the same name (moved aside, whole, before training)")
    parser.add_argument("--train_frames", type=int, default=20,
                        help="evenly spaced training frames scored at each evaluation, for the gap (default 20)")
    parser.add_argument("--drop_after", type=float, default=2.0,
                        help="minutes of training from which the largest fall of test PSNR is counted (default 2)")
    parser.add_argument("--seeds", default="",
                        help="measure on one generated synthetic subject per seed (e.g. 0,1,2): mean and spread")
    parser.add_argument("--figure", type=int, default=0,
                        help="also write figure_<budget>.png: ground truth above rendering for this many test "
                             "frames, and below them as many training frames")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument("--csv", default="", help="also write the rows to this file, one line per evaluation")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="conf overrides")
    return parser


def seed_overrides(conf: Conf, seed: int | None) -> list[str]:
    """The overrides that give seed `seed` its own generated subject (none without --seeds)."""
    if seed is None:
        return []
    if not conf.dataset.synthetic:
        raise ConfigError(f"--seeds needs a synthetic subject (dataset.synthetic = true); {conf.source} names the "
                          f"dataset {conf.dataset.subject_name}: drop --seeds, or use a synthetic conf such as "
                          f"confs/demo.conf")
    return [f"dataset.synthetic_seed={seed}", f"dataset.subject_name={conf.dataset.subject_name}-seed{seed}"]


def write_tables(path: str, runs: Sequence[Run]) -> None:
    """One CSV line per evaluation of every run: its seed and subject, then the row."""
    names = [f.name for f in fields(BudgetRow)]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seed", "subject", *names])
        for run in runs:
            for row in run.rows:
                values = asdict(row)
                values["fitted_inputs"] = "+".join(values["fitted_inputs"])
                for name in ("test_novelty", "test_fit_change"):
                    values[name] = json.dumps(values[name])
                writer.writerow(["" if run.seed is None else run.seed, run.subject, *(values[n] for n in names)])


def run(argv: Sequence[str] | None = None,
        epoch_seconds: Callable[[dict[str, float]], float] = measured_seconds) -> int:
    """The command; `epoch_seconds(stats)` is the clock: the training time each epoch counts (tests
    pass a fixed amount, so that which epoch passes a budget does not depend on the machine)."""
    args = build_parser().parse_intermixed_args(argv)  # key=value overrides anywhere among the options
    setup_logging()
    budgets = parse_moments(args.budgets, "--budgets")
    at_epochs = parse_moments(args.epochs, "--epochs", int) if args.epochs else []
    if args.nepoch is not None and args.nepoch < 1:
        raise ConfigError(f"--nepoch {args.nepoch}: the number of epochs to train must be at least 1")
    if args.train_frames < 1:
        raise ConfigError(f"--train_frames {args.train_frames}: score at least 1 training frame (default 20)")
    seeds: list[int | None] = parse_seeds(args.seeds) if args.seeds else [None]

    name = method_name(args.conf, args.name, args.overrides)
    overrides = [*args.overrides, f"train.methodname={name}", "train.save_freq=1000000", "train.plot_freq=1000000"]
    base = load_conf(args.conf, overrides)
    runs = [Run(load_conf(args.conf, [*overrides, *seed_overrides(base, seed)]), seed) for seed in seeds]
    for r in runs:  # every run's folder is checked before the first one trains
        root = ExperimentPaths.from_conf(r.conf).root
        if not args.overwrite and root.is_dir() and any(root.iterdir()):
            raise ConfigError(f"{root} already holds a run: pass --overwrite to replace it (it is moved aside, "
                              f"whole), or train.methodname=<another name> to measure beside it")
    title = f"{name} ({Path(args.conf).name})"

    def write_results() -> None:
        """The files asked for, after every evaluation, so that an interrupted run keeps what it measured."""
        if args.json:
            document = {"conf": args.conf, "name": name, "overrides": args.overrides, "drop_after_min": args.drop_after}
            if seeds == [None]:
                document.update(rows=[asdict(r) for r in runs[0].rows],
                                largest_drop=largest_drop(runs[0].rows, args.drop_after))
            else:
                document.update(runs=[{"seed": r.seed, "subject": r.subject, "rows": [asdict(row) for row in r.rows],
                                       "largest_drop": largest_drop(r.rows, args.drop_after)} for r in runs if r.rows],
                                summary=summary([r for r in runs if r.rows]))
            Path(args.json).write_text(json.dumps(document, indent=1))
        if args.csv:
            write_tables(args.csv, runs)

    tables = []
    for r in runs:
        if r.seed is not None:
            log.info("seed %d: subject %s", r.seed, r.subject)
        measure(r, args, budgets, at_epochs, epoch_seconds, title, write_results)
        tables.append(markdown(r.rows, title if r.seed is None else f"{title}, seed {r.seed}", args.drop_after))
    if seeds != [None]:
        tables.append(summary_markdown(runs, title, args.drop_after))
    print("\n\n".join(tables))
    return 0


def measure(r: Run, args: argparse.Namespace, budgets: list[float], at_epochs: list[int],
            epoch_seconds: Callable[[dict[str, float]], float], title: str, written: Callable[[], None]) -> None:
    """Train run `r` and evaluate it at the budgets (or `at_epochs`), appending to `r.rows`; its
    quality_vs_time.md and figures go to its experiment folder, `written()` after each evaluation."""
    from ..evaluate.evaluator import EvalOptions, Evaluator
    from ..subject_generator import ensure_synthetic_subject
    from ..train.trainer import Trainer, TrainOptions

    conf = r.conf
    ensure_synthetic_subject(conf)
    nepoch = args.nepoch if args.nepoch is not None else conf.train.nepoch
    if at_epochs:
        nepoch = min(nepoch, at_epochs[-1])
    trainer = Trainer(conf, TrainOptions(nepoch=nepoch, overwrite=args.overwrite))
    clock = {"seconds": 0.0}
    table_title = title if r.seed is None else f"{title}, seed {r.seed}"

    def evaluate(done: int, stats: dict, budget: float | None) -> None:
        trainer.save(done, numbered=True)
        evaluator = Evaluator(conf, EvalOptions(checkpoint=str(done), videos=False))
        folder = next(iter(evaluator.evaluate().values()))
        report = json.loads((folder / "metrics.json").read_text())
        metrics, opening = report["metrics"]["all"], report["opening"]
        train_frames, train_folders = evaluator.score_training_frames(args.train_frames)
        fitted, _ = evaluator.score_training_frames(args.train_frames, inputs_from="fitted")
        r.rows.append(BudgetRow(budget, clock["seconds"] / 60, done, trainer.avatar.n_points, stats["psnr"],
                                train_frames["psnr"], fitted["psnr"], metrics["psnr"],
                                train_frames["psnr"] - metrics["psnr"], fitted["psnr"] - metrics["psnr"],
                                metrics["ssim"], metrics["l1"], report["fitted_inputs"],
                                opening["psnr_unopened"], train_frames["psnr_unopened"],
                                train_frames["psnr_unopened"] - opening["psnr_unopened"],
                                opening["psnr_ground_truth_opened"], report.get("novelty", {}),
                                report.get("fit_change", {})))
        label = f"epoch_{done}" if budget is None else f"{budget:g}min"
        log.info("%s: epoch %d, test PSNR %.2f, training frames %.2f (gap %.2f dB), fitted as the test frames %.2f "
                 "(gap %.2f dB)", label, done, metrics["psnr"], train_frames["psnr"], r.rows[-1].gap_db,
                 fitted["psnr"], r.rows[-1].gap_fitted_db)
        (trainer.paths.root / "quality_vs_time.md").write_text(markdown(r.rows, table_title, args.drop_after) + "\n")
        written()
        if args.figure:
            figure = stacked(contact_sheet([folder], args.figure),
                             contact_sheet(list(train_folders.values()), args.figure))
            imageio.imwrite(trainer.paths.root / f"figure_{label}.png", figure)
        trainer.avatar.train()

    def after_epoch(done: int, stats: dict) -> bool:
        clock["seconds"] += epoch_seconds(stats)
        if at_epochs:
            if done in at_epochs or done == nepoch:  # a recipe shorter than the last epoch asked: its end
                evaluate(done, stats, None)
            return done >= nepoch
        while len(r.rows) < len(budgets) and clock["seconds"] >= budgets[len(r.rows)] * 60:
            evaluate(done, stats, budgets[len(r.rows)])
        if done == nepoch:  # the recipe ended before the last budget: its final model stands for the rest
            while len(r.rows) < len(budgets):
                evaluate(done, stats, budgets[len(r.rows)])
        return len(r.rows) == len(budgets)

    trainer.run(after_epoch)


def main(argv: Sequence[str] | None = None) -> None:
    main_with_errors(run, argv)
