"""`python scripts/exp_runner.py --conf X [...]`: train (then evaluate), resume, evaluate, reenact.

The flags are the paper's (`--conf`, `--is_continue`, `--nepoch`, `--checkpoint`, `--load_path`,
`--is_eval`, `--only_json`) plus `--drive` for reenactment and `key=value` conf overrides.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from ..config import load_conf
from ..errors import DynAvatarError

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exp_runner.py", description="Train and evaluate a DynAvatar Gaussian head avatar.",
        epilog="Example: python scripts/exp_runner.py --conf confs/demo.conf")
    parser.add_argument("--conf", required=True, help="the experiment's .conf file")
    parser.add_argument("--is_continue", action="store_true", help="resume training from a checkpoint")
    parser.add_argument("--nepoch", type=int, default=None,
                        help="train until this many epochs are done (default: the conf's train.nepoch, 600)")
    parser.add_argument("--checkpoint", default="latest", help="checkpoint to resume or evaluate: latest or an epoch")
    parser.add_argument("--load_path", default="", help="train folder of another experiment to load from")
    parser.add_argument("--is_eval", action="store_true", help="only evaluate a checkpoint on the test split")
    parser.add_argument("--only_json", action="store_true",
                        help="evaluation without ground-truth images: render the test split from its json")
    parser.add_argument("--drive", default="", help="a flame_params.json whose expressions and poses to reenact")
    parser.add_argument("--no_videos", action="store_true", help="skip writing mp4 videos at evaluation")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="conf overrides, e.g. train.max_batch=4")
    return parser


def _checkpoint_tag(text: str) -> str:
    return text if text == "latest" else str(int(text))


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # Heavy imports after argument parsing, so that --help is instant.
    from ..data.synthetic_subject import ensure_synthetic_subject
    from ..evaluate.evaluator import EvalOptions, Evaluator
    from ..train.trainer import Trainer, TrainOptions

    conf = load_conf(args.conf, args.overrides)
    tag = _checkpoint_tag(args.checkpoint)
    load_path = args.load_path or None
    eval_options = EvalOptions(checkpoint=tag, load_path=load_path, only_json=args.only_json,
                               drive=args.drive or None, videos=not args.no_videos)
    if args.is_eval or args.drive:
        evaluator = Evaluator(conf, eval_options)
        if args.drive:
            evaluator.reenact(args.drive)
        else:
            ensure_synthetic_subject(conf)
            evaluator.evaluate()
        return 0
    ensure_synthetic_subject(conf)
    nepoch = args.nepoch if args.nepoch is not None else int(conf.get("train.nepoch"))
    trainer = Trainer(conf, TrainOptions(nepoch=nepoch, is_continue=args.is_continue, checkpoint=tag,
                                         load_path=load_path))
    if trainer.run():  # evaluate the checkpoint just written, in this experiment's folder
        eval_options.checkpoint, eval_options.load_path = "latest", None
    Evaluator(conf, eval_options).evaluate()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        sys.exit(run(argv))
    except DynAvatarError as exc:  # the user's input is at fault: one message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the last completed epoch's checkpoint is kept (resume with --is_continue)",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

