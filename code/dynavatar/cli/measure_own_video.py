"""`python scripts/measure_own_video.py`: generated videos, preprocessed as a user's would be (face
detector, FLAME tracking, masks), trained with a recipe (the demo's unless --conf names another) to
its end and evaluated on a held-out test video with head turns beyond ±20°, against the same videos
with exact tracking; prints test PSNR per variant (mean ± std over seeds, and per seed) and the time
of each preprocessing run, and writes json and csv."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from ..preprocess.errors import PreprocessError
from ..preprocess.own_video_gap import (DEMO_CONF, VARIANTS, Setup, check_variants, default_variants, generator_frame,
                                        measure, preprocessing_table, table, write_outputs)
from .common import main_with_errors, setup_logging

log = logging.getLogger(__name__)


def _is_override(value) -> bool:
    """A key=value conf override (no seed or variant name holds "=")."""
    return isinstance(value, str) and "=" in value


def _seed(text: str) -> int | str:
    """A seed; a conf override that --seeds took as one of its values is kept as text (`_SetAside`)."""
    if _is_override(text):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a seed (a whole number) nor a key=value conf "
                                         f"override") from None


class _SetAside(argparse.Action):
    """--seeds and --variants take every word after them, conf overrides too: those are set aside in
    `set_aside`, for `parse_args` to put back among the overrides, and the option keeps the rest."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.set_aside = [*getattr(namespace, "set_aside", []), *(v for v in values if _is_override(v))]
        setattr(namespace, self.dest, [v for v in values if not _is_override(v)])


def build_parser() -> argparse.ArgumentParser:
    defaults = Setup.__dataclass_fields__
    frame_64, scale_64 = generator_frame(64)
    frame_512, scale_512 = generator_frame(512)
    parser = argparse.ArgumentParser(prog="measure_own_video.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", type=Path, default=DEMO_CONF,
                        help="the recipe every variant trains with, included by each variant's conf (default "
                             "confs/demo.conf; confs/fast.conf for 512 px on a GPU)")
    parser.add_argument("--seeds", type=_seed, nargs="+", default=[0, 1, 2], action=_SetAside,
                        help="generated subjects; even seeds on a textured backdrop, odd ones on a white wall "
                             "(default 0 1 2)")
    parser.add_argument("--variants", nargs="+", default=None, metavar="VARIANT", action=_SetAside,
                        help=f"what to train (default all of {' '.join(VARIANTS)}, less 'refined' for a recipe "
                             f"that refines the per-frame inputs itself, as subject1.conf does)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder that keeps videos, datasets and runs; what is found there is read, not made "
                             "or trained again (a run interrupted after a checkpoint is continued from it), so "
                             "that processes for different seeds, or for different variants of a seed once "
                             "--prepare_only has made its datasets, can share it (default: a temporary folder, "
                             "deleted)")
    parser.add_argument("--prepare_only", action="store_true",
                        help="make the videos, datasets and confs the variants need, train nothing")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default: the recipe's train.nepoch, 95 for demo.conf, 45 for fast.conf)")
    parser.add_argument("--refine_after", type=int, default=None,
                        help="'refined': per-frame inputs refined after this epoch (default: the recipe's first "
                             "learning-rate milestone before the last epoch, 60 for demo.conf)")
    parser.add_argument("--frames", type=int, default=defaults["frames"].default,
                        help=f"frames per video (default {defaults['frames'].default})")
    parser.add_argument("--res", type=int, default=defaults["res"].default,
                        help=f"avatar image size (default {defaults['res'].default})")
    parser.add_argument("--generator_res", type=int, default=None,
                        help=f"size of the generated frame (default: 1.25 x --res rounded up to a multiple of 64, "
                             f"at least 128, so that the crop holds at least --res generated pixels and nothing is "
                             f"upsampled: {frame_64} at 64 px, {frame_512} at 512 px)")
    parser.add_argument("--video_scale", type=float, default=None,
                        help=f"the video is the canvas (1.5 x 1.25 generated frames) scaled by this (default: up "
                             f"to 384 px wide, never down: {scale_64:g} at 64 px, {scale_512:g} at 512 px)")
    parser.add_argument("--hair", action="store_true", help="a volume of hair over the crown in the videos")
    parser.add_argument("--steps", type=int, default=None, help="tracking steps (default: preprocess.py's)")
    parser.add_argument("--tracking_args", default="", metavar="'OPTIONS'",
                        help="more preprocess.py options for the tracked variants (silhouette, photometric, "
                             "true_focal, exact_head, exact_face), e.g. --tracking_args='--expression_prior 0.01'; "
                             "use a work folder of their own, since datasets found there are not made again")
    parser.add_argument("--device", default="auto",
                        help="tracking device, preprocess.py's --device: auto (the GPU when there is one), cpu or "
                             "cuda (default auto)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of each preprocessing and training process (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--csv", type=Path, default=None, help="write one line per seed and variant here")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="conf overrides for every training run")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; key=value overrides may stand anywhere among the options, as exp_runner.py
    takes them, also right after --seeds or --variants (which take every word after them)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    args.overrides = in_command_line_order([*getattr(args, "set_aside", []), *args.overrides], argv)
    if not args.seeds:
        parser.error("argument --seeds: give at least one seed before the key=value overrides")
    if args.variants is not None:
        unknown = [v for v in args.variants if v not in VARIANTS]
        if unknown or not args.variants:
            parser.error(f"argument --variants: {' '.join(unknown) or 'no variant before the key=value overrides'}: "
                         f"choose from {', '.join(VARIANTS)}")
    return args


def in_command_line_order(overrides: Sequence[str], argv: Sequence[str]) -> list[str]:
    """The overrides in the order they stand in argv (the last of one key wins), each matched to a word
    of its own: the word itself, or the end of `--seeds=key=value`."""
    used: set[int] = set()

    def position(override: str) -> int:
        index = next((i for i, word in enumerate(argv)
                      if i not in used and (word == override or word.endswith("=" + override))), len(argv))
        used.add(index)
        return index

    return [o for _, o in sorted((position(o), o) for o in overrides)]


def run(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(quiet=args.quiet)
    if (args.epochs is not None and args.epochs < 1) or args.frames < 2 or args.threads < 1:
        raise PreprocessError(f"--epochs {args.epochs}, --frames {args.frames}, --threads {args.threads}: at least "
                              f"1 epoch, 2 frames and 1 thread")
    if not args.conf.is_file():
        raise PreprocessError(f"--conf {args.conf}: no such file")
    setup = Setup(res=args.res, frames=args.frames, epochs=args.epochs, refine_after=args.refine_after,
                  generator_res=args.generator_res, scale=args.video_scale, hair=args.hair,
                  tracking_steps=args.steps, tracking_args=shlex.split(args.tracking_args),
                  overrides=list(args.overrides), recipe=str(args.conf), device=args.device, threads=args.threads)
    variants = default_variants(setup) if args.variants is None else args.variants
    try:
        check_variants(variants, setup)
    except ValueError as exc:  # e.g. "refined" with a recipe that refines the inputs itself
        raise PreprocessError(str(exc)) from None
    if args.work is not None:
        results = measure(args.seeds, args.work, variants, setup, train=not args.prepare_only)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = measure(args.seeds, Path(tmp), variants, setup, train=not args.prepare_only)
    write_outputs(results, args.json, args.csv)
    if not args.prepare_only:
        print(f"test PSNR after {setup.epochs} epochs at {setup.res} px ({Path(setup.recipe).name}):")
        print(table(results))
    print(f"preprocessing (generated frame {setup.generator_res} px, video scale {setup.scale:g}):")
    print(preprocessing_table(results))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    main_with_errors(run, argv)
