"""`python scripts/measure_own_video.py`: generated videos, preprocessed as a user's would be (face
detector, FLAME tracking, masks), trained with the demo recipe to its end and evaluated on a held-out
test video with head turns beyond ±20°, against the same videos with exact tracking; prints test
PSNR per variant (mean ± std over seeds, and per seed) and writes json and csv."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Sequence

from ..preprocess.errors import PreprocessError
from ..preprocess.own_video_gap import VARIANTS, Setup, measure, table, write_outputs
from .common import main_with_errors, setup_logging

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    defaults = Setup()
    parser = argparse.ArgumentParser(prog="measure_own_video.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="generated subjects; even seeds on a textured backdrop, odd ones on a white wall "
                             "(default 0 1 2)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help=f"what to train (default all: {' '.join(VARIANTS)})")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder that keeps videos, datasets and runs; a finished run found there is read, not "
                             "trained again (default: a temporary folder, deleted)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help=f"training epochs (default "
                        f"{defaults.epochs}, the demo's)")
    parser.add_argument("--refine_after", type=int, default=defaults.refine_after,
                        help=f"'refined': per-frame inputs refined after this epoch (default {defaults.refine_after})")
    parser.add_argument("--frames", type=int, default=defaults.frames, help=f"frames per video (default {defaults.frames})")
    parser.add_argument("--res", type=int, default=defaults.res, help=f"avatar image size (default {defaults.res})")
    parser.add_argument("--hair", action="store_true", help="a volume of hair over the crown in the videos")
    parser.add_argument("--steps", type=int, default=None, help="tracking steps (default: preprocess.py's)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--csv", type=Path, default=None, help="write one line per seed and variant here")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="conf overrides for every training run")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet)
    if args.epochs < 1 or args.frames < 2:
        raise PreprocessError(f"--epochs {args.epochs}, --frames {args.frames}: at least 1 epoch and 2 frames")
    setup = Setup(res=args.res, frames=args.frames, epochs=args.epochs, refine_after=args.refine_after,
                  hair=args.hair, tracking_steps=args.steps, overrides=list(args.overrides))
    if args.work is not None:
        results = measure(args.seeds, args.work, args.variants, setup)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = measure(args.seeds, Path(tmp), args.variants, setup)
    write_outputs(results, args.json, args.csv)
    print(f"test PSNR after {args.epochs} epochs at {args.res} px (demo recipe):")
    print(table(results))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    main_with_errors(run, argv)
