"""Quality against training time: train a recipe for a wall-clock budget and evaluate it on the test
split at fixed moments.

Training time counts the epochs only (data loading before the first epoch and the evaluations are
left out). When the clock passes a budget, the checkpoint of that epoch is written and evaluated
as `--is_eval` would (test inputs fitted by the conf's protocol, no videos); training stops after
the last budget, or at the conf's `--nepoch` when that comes first (later budgets then report the
final model). One table row per budget: test PSNR/SSIM/L1, training PSNR, Gaussians, epochs.

`--epochs` evaluates after given epochs instead of budgets: for ablations whose runs share a GPU,
where wall-clock time says little.

The run is an experiment of its own, <exps_folder>/<subject>/<name>/<split>/, named by `--name`, else
by a `train.methodname=` override, else `<conf file name>-quality_vs_time` (never the folder of a
normal run of the conf). A folder that already holds a run is never replaced unless `--overwrite`
asks for it (the earlier run is then moved aside, whole, as `exp_runner.py --overwrite` does).

  python scripts/quality_vs_time.py --conf confs/fast.conf --budgets 2,5,10 --json fast.json
  python scripts/quality_vs_time.py --conf confs/subject1.conf --budgets 2,5,10 --name paper
  python scripts/quality_vs_time.py --conf confs/fast.conf --epochs 17,33 --name no_colors model.point_colors=false
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import imageio.v2 as imageio
import numpy as np

from ..config import load_conf, parse_override
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
    test_psnr: float
    test_ssim: float
    test_l1: float
    fitted_inputs: list[str]


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


def markdown(rows: Sequence[BudgetRow], title: str) -> str:
    lines = [f"**{title}**", "",
             "| budget (min) | trained (min) | epochs | Gaussians | train PSNR | test PSNR | test SSIM | test L1 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        budget = "-" if r.budget_min is None else f"{r.budget_min:g}"
        lines.append(f"| {budget} | {r.train_min:.1f} | {r.epochs} | {r.gaussians:,} | {r.train_psnr:.2f} | "
                     f"{r.test_psnr:.2f} | {r.test_ssim:.4f} | {r.test_l1:.4f} |")
    return "\n".join(lines)


def contact_sheet(folder: Path, frames: int) -> np.ndarray:
    """Ground truth above rendering for the first `frames` test frames of an evaluation folder."""
    names = sorted((p.name for p in (folder / "gt").glob("*.png")), key=lambda n: int(Path(n).stem))[:frames]
    columns = [np.concatenate([imageio.imread(folder / "gt" / n)[..., :3], imageio.imread(folder / "rgb" / n)[..., :3]])
               for n in names]
    return np.concatenate(columns, axis=1)


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
    parser.add_argument("--figure", type=int, default=0,
                        help="also write figure_<budget>.png: ground truth above rendering for this many test frames")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="conf overrides")
    return parser


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
    from ..evaluate.evaluator import EvalOptions, Evaluator
    from ..subject_generator import ensure_synthetic_subject
    from ..train.trainer import Trainer, TrainOptions

    name = method_name(args.conf, args.name, args.overrides)
    conf = load_conf(args.conf, [*args.overrides, f"train.methodname={name}", "train.save_freq=1000000",
                                 "train.plot_freq=1000000"])
    root = ExperimentPaths.from_conf(conf).root
    if not args.overwrite and root.is_dir() and any(root.iterdir()):
        raise ConfigError(f"{root} already holds a run: pass --overwrite to replace it (it is moved aside, whole), "
                          f"or train.methodname=<another name> to measure beside it")
    ensure_synthetic_subject(conf)
    nepoch = args.nepoch if args.nepoch is not None else conf.train.nepoch
    if at_epochs:
        nepoch = min(nepoch, at_epochs[-1])
    trainer = Trainer(conf, TrainOptions(nepoch=nepoch, overwrite=args.overwrite))
    rows: list[BudgetRow] = []
    clock = {"seconds": 0.0}

    def evaluate(done: int, stats: dict, budget: float | None) -> None:
        trainer.save(done, numbered=True)
        folders = Evaluator(conf, EvalOptions(checkpoint=str(done), videos=False)).evaluate()
        folder = next(iter(folders.values()))
        report = json.loads((folder / "metrics.json").read_text())
        metrics = report["metrics"]["all"]
        rows.append(BudgetRow(budget, clock["seconds"] / 60, done, trainer.avatar.n_points, stats["psnr"],
                              metrics["psnr"], metrics["ssim"], metrics["l1"], report["fitted_inputs"]))
        moment = f"epoch_{done}" if budget is None else f"{budget:g}min"
        log.info("%s: epoch %d, test PSNR %.2f", moment, done, metrics["psnr"])
        write_results()  # after every evaluation, so that an interrupted run keeps what it measured
        if args.figure:
            imageio.imwrite(trainer.paths.root / f"figure_{moment}.png", contact_sheet(folder, args.figure))
        trainer.avatar.train()

    def after_epoch(done: int, stats: dict) -> bool:
        clock["seconds"] += epoch_seconds(stats)
        if at_epochs:
            if done in at_epochs or done == nepoch:  # a recipe shorter than the last epoch asked: its end
                evaluate(done, stats, None)
            return done >= nepoch
        while len(rows) < len(budgets) and clock["seconds"] >= budgets[len(rows)] * 60:
            evaluate(done, stats, budgets[len(rows)])
        if done == nepoch:  # the recipe ended before the last budget: its final model stands for the rest
            while len(rows) < len(budgets):
                evaluate(done, stats, budgets[len(rows)])
        return len(rows) == len(budgets)

    def write_results() -> str:
        table = markdown(rows, f"{name} ({Path(args.conf).name})")
        (trainer.paths.root / "quality_vs_time.md").write_text(table + "\n")
        if args.json:
            Path(args.json).write_text(json.dumps({"conf": args.conf, "name": name, "overrides": args.overrides,
                                                   "rows": [asdict(r) for r in rows]}, indent=1))
        return table

    trainer.run(after_epoch)
    print(write_results())
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    main_with_errors(run, argv)
