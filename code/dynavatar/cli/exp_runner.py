"""`python scripts/exp_runner.py --conf X [...]`: train (then evaluate), resume, evaluate, reenact.

The flags are the paper's (`--conf`, `--is_continue`, `--nepoch`, `--checkpoint`, `--load_path`,
`--is_eval`, `--only_json`) plus `--drive` for reenactment and `key=value` conf overrides.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from ..config import load_conf
from ..errors import ConfigError
from ..experiment import ExperimentPaths
from ..experiment.lock import experiment_lock
from .common import add_checkpoint_arguments, main_with_errors, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exp_runner.py", description="Train and evaluate a DynAvatar Gaussian head avatar.",
        epilog="Example: python scripts/exp_runner.py --conf confs/demo.conf")
    parser.add_argument("--conf", required=True, help="the experiment's .conf file")
    parser.add_argument("--is_continue", action="store_true", help="resume training from a checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="start training again in an experiment folder that already holds checkpoints")
    parser.add_argument("--nepoch", type=int, default=None,
                        help="train until this many epochs are done (default: the conf's train.nepoch, 600)")
    add_checkpoint_arguments(parser)
    parser.add_argument("--is_eval", action="store_true", help="only evaluate a checkpoint on the test split")
    parser.add_argument("--only_json", action="store_true",
                        help="evaluation without ground-truth images: render the test split from its json")
    parser.add_argument("--drive", default="", help="a flame_params.json whose expressions and poses to reenact")
    parser.add_argument("--no_videos", action="store_true", help="skip writing mp4 videos at evaluation")
    parser.add_argument("--quiet", action="store_true", help="log warnings only, no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="conf overrides, e.g. train.max_batch=4")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    # key=value overrides may stand anywhere among the options (`a=1 --nepoch 10 b=2`)
    args = build_parser().parse_intermixed_args(argv)
    if args.nepoch is not None and args.nepoch < 1:  # before anything is created
        raise ConfigError(f"--nepoch {args.nepoch}: the number of epochs to train must be at least 1")
    setup_logging(args.quiet)
    # Heavy imports after argument parsing, so that --help is instant.
    from ..subject_generator.subject import ensure_synthetic_subject
    from ..evaluate.evaluator import EvalOptions, Evaluator
    from ..train.trainer import Trainer, TrainOptions

    conf = load_conf(args.conf, args.overrides)
    load_path = args.load_path or None
    eval_options = EvalOptions(checkpoint=args.checkpoint, load_path=load_path, only_json=args.only_json,
                               videos=not args.no_videos)
    if args.drive:
        Evaluator(conf, eval_options).reenact(args.drive)
        return 0
    ensure_synthetic_subject(conf)
    if args.is_eval:
        Evaluator(conf, eval_options).evaluate()
        return 0
    nepoch = args.nepoch if args.nepoch is not None else conf.train.nepoch
    # One hold of the experiment's lock over training and its evaluation: no other run comes in between.
    with experiment_lock(ExperimentPaths.from_conf(conf).root):
        trainer = Trainer(conf, TrainOptions(nepoch=nepoch, is_continue=args.is_continue, checkpoint=args.checkpoint,
                                             load_path=load_path, overwrite=args.overwrite))
        if trainer.run():  # evaluate the checkpoint just written, in this experiment's folder
            eval_options.checkpoint, eval_options.load_path = "latest", None
        Evaluator(conf, eval_options).evaluate()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    main_with_errors(run, argv)


if __name__ == "__main__":
    main()
