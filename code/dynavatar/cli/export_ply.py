"""`python scripts/export_ply.py --conf X --out avatar.ply [--frame ID --sub_dir NAME]`: export the
trained avatar (canonical, or as it looks in one frame of a video) as a standard 3DGS .ply."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from ..config import load_conf
from ..errors import DatasetError, DynAvatarError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export_ply.py", description=__doc__.split("\n")[0].strip("`"))
    parser.add_argument("--conf", required=True, help="the experiment's .conf (or its runconf.conf)")
    parser.add_argument("--out", required=True, help="the .ply file to write")
    parser.add_argument("--checkpoint", default="latest", help="latest or an epoch")
    parser.add_argument("--load_path", default="", help="train folder of the experiment (default: the conf's)")
    parser.add_argument("--frame", type=int, default=None, help="frame id to export (default: the canonical avatar)")
    parser.add_argument("--sub_dir", default="", help="video of --frame (default: the conf's first test video)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="conf overrides")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from pathlib import Path

    from ..data.flame_params import read_flame_params
    from ..evaluate.evaluator import EvalOptions, Evaluator
    from ..export.ply import save_gaussians_ply

    conf = load_conf(args.conf, args.overrides)
    tag = args.checkpoint if args.checkpoint == "latest" else str(int(args.checkpoint))
    evaluator = Evaluator(conf, EvalOptions(checkpoint=tag, load_path=args.load_path or None))
    if args.frame is None:
        path = evaluator.export_canonical(Path(args.out))
    else:
        sub_dir = args.sub_dir or str(conf.get("dataset.test.sub_dir")[0])
        folder = Path(conf.get("dataset.data_folder")) / conf.get("dataset.subject_name") / conf.get(
            "dataset.subject_name") / sub_dir
        params = read_flame_params(folder / conf.get("dataset.json_name"))
        if args.frame not in params.frame_ids:
            raise DatasetError(f"frame {args.frame} is not in {params.json_path} "
                               f"(frames {params.frame_ids[0]}..{params.frame_ids[-1]})")
        k = params.frame_ids.index(args.frame)
        g = evaluator.gaussians_of(params.expressions[k], params.poses[k])
        path = save_gaussians_ply(Path(args.out), g.means, g.quats, g.scales, g.opacities, g.colors)
    logging.getLogger(__name__).info("wrote %s (%d Gaussians)", path, evaluator.avatar.n_points)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        sys.exit(run(argv))
    except DynAvatarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
