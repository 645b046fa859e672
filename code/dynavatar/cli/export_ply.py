"""`python scripts/export_ply.py --conf X --out avatar.ply [--frame ID --sub_dir NAME]`: export the
trained avatar (canonical, or as it looks in one frame of a video) as a standard 3DGS .ply."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from ..config import load_conf
from ..errors import DatasetError
from .common import add_checkpoint_arguments, main_with_errors, setup_logging

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export_ply.py",
                                     description="Export a trained avatar as a standard 3DGS .ply.")
    parser.add_argument("--conf", required=True, help="the experiment's .conf (or its runconf.conf)")
    parser.add_argument("--out", required=True, help="the .ply file to write")
    add_checkpoint_arguments(parser)
    parser.add_argument("--frame", type=int, default=None, help="frame id to export (default: the canonical avatar)")
    parser.add_argument("--sub_dir", default="", help="video of --frame (default: the conf's first test video)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="conf overrides")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # key=value overrides anywhere among the options
    setup_logging()
    from ..data.reader import dataset_from_conf
    from ..evaluate.animation import save_posed_ply
    from ..model.build import experiment_checkpoints, load_avatar
    from ..runtime import flush_denormals_on_cpu, resolve_device

    conf = load_conf(args.conf, args.overrides)
    device = resolve_device(conf.train.device)
    flush_denormals_on_cpu(device)  # as training and evaluation run
    checkpoints = experiment_checkpoints(conf, args.load_path or None)
    avatar, epoch = load_avatar(conf, checkpoints, args.checkpoint, device=device)
    log.info("exporting %s checkpoint %s (epoch %d, %d points)", checkpoints, args.checkpoint, epoch, avatar.n_points)
    if args.frame is None:
        path = save_posed_ply(avatar, Path(args.out))
    else:
        sub_dir = args.sub_dir or conf.dataset.test.sub_dir[0]
        frames = dataset_from_conf(conf, "test", sub_dir=[sub_dir], subsample=1, only_json=True,
                                   use_mean_expression=False, use_var_expression=False)
        ids = [record.frame_id for record in frames.frames]
        if args.frame not in ids:
            raise DatasetError(f"frame {args.frame} is not in video {sub_dir} (frames {ids[0]}..{ids[-1]})")
        k = ids.index(args.frame)
        path = save_posed_ply(avatar, Path(args.out), frames.expressions[k], frames.flame_poses[k])
    log.info("wrote %s (%d Gaussians)", path, avatar.n_points)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    main_with_errors(run, argv)


if __name__ == "__main__":
    main()
