"""`python scripts/viewer.py --load_path <experiment> [--checkpoint N] [--port 8080]`: an interactive
browser viewer of a trained avatar (docs/VIEWER.md). `--benchmark N` renders N frames without a
server and prints the frame rate."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import torch

from ..config import load_conf
from ..errors import ConfigError, DatasetError
from .common import add_checkpoint_arguments, main_with_errors, setup_logging

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="viewer.py", description="View and drive a trained avatar in the browser.")
    add_checkpoint_arguments(parser)
    parser.add_argument("--conf", default="", help="the experiment's conf (default: its train/runconf.conf)")
    parser.add_argument("--port", type=int, default=8080, help="port of the page (http://localhost:PORT)")
    parser.add_argument("--host", default="0.0.0.0", help="address to serve on (127.0.0.1: this machine only)")
    parser.add_argument("--resolution", type=int, default=256, help="rendered image height in pixels (default 256)")
    parser.add_argument("--backend", default="auto", help="rasterizer: auto, torch, gsplat or inria (default auto)")
    parser.add_argument("--device", default="", help="cpu, cuda, cuda:N or auto (default: the conf's train.device)")
    parser.add_argument("--drive", action="append", default=[], metavar="FLAME_PARAMS_JSON",
                        help="another sequence's flame_params.json to offer for playing (repeatable)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for rendering (default: one less than the cores, at least 1)")
    parser.add_argument("--expressions", type=int, default=10, help="expression components with a slider")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate of the sequences when played")
    parser.add_argument("--benchmark", type=int, default=0, metavar="N",
                        help="render N frames (the jaw moving) without a server, print the frame rate, exit")
    parser.add_argument("--measure", type=int, default=0, metavar="N",
                        help="serve, connect a client that speaks the page's protocol, time N jaw-slider moves "
                             "(move to image) and a sequence playing, print the figures, exit")
    parser.add_argument("--play_seconds", type=float, default=5.0, help="how long --measure plays a sequence")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="conf overrides")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    setup_logging()
    from ..experiment import ExperimentPaths
    from ..experiment.checkpoints import checkpoints_dir_of
    from ..model.build import load_avatar
    from ..runtime import flush_denormals_on_cpu, resolve_device
    from ..viewer.camera import stored_view
    from ..viewer.sequences import drive_sequences, subject_sequences
    from ..viewer.state import AvatarScene

    if not args.load_path:
        raise ConfigError("--load_path is required: the experiment's train folder "
                          "(<exps_folder>/<subject>/<methodname>/<train videos>/train)")
    if args.resolution < 8 or args.resolution > 4096:
        raise ConfigError(f"--resolution {args.resolution} is out of range: give a height from 8 to 4096 pixels")
    if args.measure < 0 or args.play_seconds < 0:
        raise ConfigError(f"--measure {args.measure} / --play_seconds {args.play_seconds}: give a number of slider "
                          f"moves of at least 1 and seconds of 0 or more")
    checkpoints = checkpoints_dir_of(args.load_path)
    paths = ExperimentPaths.owning(checkpoints)
    conf_path = Path(args.conf) if args.conf else paths.runconf
    if not conf_path.is_file():
        raise ConfigError(f"no conf at {conf_path}: pass the experiment's conf with --conf")
    conf = load_conf(str(conf_path), args.overrides)
    device = resolve_device(args.device or conf.train.device)
    flush_denormals_on_cpu(device)
    if device.type == "cpu":  # a core is left to the server, the JPEG encoding and the browser
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - 1))
    avatar, epoch = load_avatar(conf, checkpoints, args.checkpoint, device=device)
    log.info("viewing %s checkpoint %s (epoch %d, %d points) on %s", checkpoints, args.checkpoint, epoch,
             avatar.n_points, device)
    sequences = subject_sequences(conf) + drive_sequences(args.drive)
    if not sequences:
        raise DatasetError(f"none of the videos of {conf_path} is found under {conf.dataset.data_folder} and no "
                           f"--drive was given: pass a flame_params.json with --drive (it also sets the camera)")
    scene = AvatarScene(avatar)
    first = sequences[0].params
    start = stored_view(first.world_mats[0], first.intrinsics, torch.from_numpy(scene.canonical_points()[0].mean(axis=0)))
    if args.benchmark:
        return benchmark(scene, start, args.resolution, args.backend, args.benchmark)
    from ..viewer.server import Viewer

    viewer = Viewer(scene, sequences, start, paths.root / "viewer", host=args.host, port=args.port,
                    resolution=args.resolution, backend=args.backend, n_expression=args.expressions, fps=args.fps)
    viewer.start()
    if args.measure:
        return measure(viewer, start, args, sequences[0].name)
    print(f"viewer of {paths.root} at http://localhost:{args.port} (Ctrl-C to stop)", flush=True)
    viewer.wait()
    return 0


def benchmark(scene, start, resolution: int, backend: str, n: int) -> int:
    """Render n frames from the start view, square, the jaw opening and closing (each frame poses and
    rasterizes); print the mean frame rate after one warm-up frame."""
    import math

    from ..viewer.camera import raster_camera, start_as_view
    from ..viewer.controls import JAW, X

    view = start_as_view(start)
    camera = raster_camera(view, resolution, resolution, scene.device)
    scene.render(camera, backend)  # warm-up: the canonical state is computed once here
    begin = time.perf_counter()
    for k in range(n):
        scene.set_entries("pose", (JAW + X,), 0.3 + 0.3 * math.sin(k / 3))
        scene.render(camera, backend)
    seconds = (time.perf_counter() - begin) / n
    print(f"{n} frames at {resolution}x{resolution}, {scene.avatar.n_points} Gaussians, backend {backend}: "
          f"{seconds * 1000:.1f} ms a frame, {1 / seconds:.1f} FPS (pose + rasterize; the camera fixed)")
    return 0


def measure(viewer, start, args, sequence: str) -> int:
    """Time the served viewer from a page's side of the connection (viewer/latency.py), print, stop."""
    from ..viewer.latency import measure as measure_viewer

    try:
        host = "127.0.0.1" if args.host in ("", "0.0.0.0") else args.host
        result = measure_viewer(f"ws://{host}:{args.port}", start, args.resolution, args.resolution,
                                args.measure, sequence, args.fps, args.play_seconds)
    finally:
        viewer.stop()
    print(f"{viewer.scene.avatar.n_points} Gaussians on {viewer.scene.device}, backend {args.backend}", flush=True)
    print(result.summary(), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    main_with_errors(run, argv)


if __name__ == "__main__":
    main()
