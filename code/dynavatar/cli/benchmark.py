"""Measure training and animation throughput of the whole avatar on a generated subject.

For each size `N:B` (N Gaussians, B frames per step) it times, after warm-up, the training step
(batch gathering, deformation, rasterization, photometric loss, FLAME priors, backward, the Adam
step and the per-frame input refinement) and the rendering of one frame without gradients, the
way an animation renders it (frame-independent state computed once). Medians of CUDA events on a
GPU, of a wall clock on the CPU, each call starting on an idle device; the training step is also
timed back to back, `--repeat` steps in a row, as the training loop runs them (it reads the device
once a second, so the host queues a step while the device runs the one before). Peak memory is the
allocator's peak during the training steps: what its tensors took, and what it held on the card
(its memory pools, those of CUDA graphs included).
With --project it also projects the paper's schedule (conf's point schedule and batch rule over
--project-frames frames per epoch) from the measured per-frame times of steps back to back.

  python scripts/benchmark.py                                   # 512 px, the sizes of the paper's schedule
  python scripts/benchmark.py --sizes 400:8,10000:8,100000:1 --json bench.json
  python scripts/benchmark.py --quick                           # a small CPU run (under a minute)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..config import load_conf
from ..model.precision import NetworkPrecision
from ..runtime import resolve_device
from ..train.strategy.coarse_to_fine import radius_for, target_points
from .bench_rasterizer import Timer
from .common import main_with_errors, setup_logging
from .step_profile import ProfileSummary, markdown as profile_markdown, profile_calls

log = logging.getLogger("benchmark")
REPO_CONF = Path(__file__).resolve().parents[3] / "confs" / "subject1.conf"
FULL_SIZES = "400:8,1600:8,10000:8,20000:5,40000:2,100000:1"
RENDER_BATCH = 8  # frames per call when rendering a sequence (reenactment, evaluation videos)
QUICK_SIZES = "400:4,2000:2"


@dataclass
class Row:
    gaussians: int
    batch: int
    train_ms: float  # median time of one training step, the device idle before it
    train_fps: float  # training frames per second of such steps
    loop_ms: float  # mean time of a step among `repeat` run back to back, as the training loop runs them
    loop_fps: float  # training frames per second of those
    peak_gib: float | None  # allocator peak of tensors during training steps (CUDA only)
    reserved_gib: float | None  # allocator peak of what it held on the card (its pools, CUDA graphs' too)
    render_ms: float  # median time to render one frame without gradients
    render_fps: float
    sequence_fps: float  # frames per second rendering a sequence RENDER_BATCH frames per call


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        n, _, b = item.partition(":")
        if not (n.isdigit() and b.isdigit() and int(n) > 0 and int(b) > 0):
            raise SystemExit(f"bad size {item!r}: expected GAUSSIANS:BATCH, e.g. 10000:8")
        sizes.append((int(n), int(b)))
    return sizes


def surface_points(trainer, n: int, radius: float, generator: torch.Generator) -> torch.Tensor:
    """n points [n, 3] near the canonical FLAME surface (as a trained avatar's points lie), jittered by `radius`."""
    vertices, _, _ = trainer.avatar.canonical_flame()
    vertices = vertices.cpu()
    index = torch.randint(0, vertices.shape[0], (n,), generator=generator)
    return vertices[index] + (torch.rand(n, 3, generator=generator) - 0.5) * radius


def prepare(trainer, n: int, batch_size: int) -> tuple[Callable[[], None], Callable[[], None], Callable[[], None]]:
    """`trainer`'s avatar with n points near the canonical surface, and three calls to time: a
    training step of `batch_size` frames (avatar in training mode), a render of one frame and one of
    RENDER_BATCH frames (in evaluation mode)."""
    device = trainer.device
    generator = torch.Generator().manual_seed(n)
    radius = radius_for(trainer.conf.model.point_cloud, n)  # the schedule's radius at this point count
    trainer.avatar.set_points(surface_points(trainer, n, radius, generator))
    trainer.avatar.set_point_radius(radius)
    trainer.reset_optimizer()  # over the new points (the static strategy keeps no per-point state)
    frames = len(trainer.train_data)

    def train_step() -> None:
        indices = torch.randint(0, frames, (batch_size,), generator=generator)
        trainer.train_step(trainer.train_data.batch(indices).to(device), step_inputs=trainer.inputs.enabled)

    one = trainer.train_data.batch([0]).to(device)
    sequence = trainer.train_data.batch(torch.arange(RENDER_BATCH) % frames).to(device)

    @torch.no_grad()
    def render(frames_batch) -> None:
        trainer.avatar(frames_batch)

    return train_step, lambda: render(one), lambda: render(sequence)


def measure(trainer, n: int, batch_size: int, warmup: int, repeat: int) -> Row:
    """Time training steps and renders of `trainer`'s avatar with n points."""
    device = trainer.device
    train_step, render_one, render_sequence = prepare(trainer, n, batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # the sizes before hold no memory now: the peaks are this size's
        torch.cuda.reset_peak_memory_stats(device)
    timer = Timer(device)
    trainer.avatar.train()
    train_ms = timer(train_step, warmup, repeat)
    loop_ms = timer.back_to_back(train_step, 1, repeat)
    # Replayed CUDA graphs allocate nothing: their activations show in what the allocator holds.
    peak = reserved = None
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30
        reserved = torch.cuda.max_memory_reserved(device) / 2 ** 30
    trainer.avatar.eval()
    render_ms = timer(render_one, warmup, repeat)
    sequence_ms = timer(render_sequence, warmup, repeat)
    return Row(n, batch_size, train_ms, batch_size / train_ms * 1e3, loop_ms, batch_size / loop_ms * 1e3, peak,
               reserved, render_ms, 1e3 / render_ms,
               RENDER_BATCH / sequence_ms * 1e3)


def profile_sizes(trainer, sizes: Sequence[tuple[int, int]], warmup: int, repeat: int) -> list[ProfileSummary]:
    """Profiles of `repeat` training steps and one-frame renders per size. Run after every timing:
    on a GPU the profiler leaves its hooks in place, which slows the launches that follow it."""
    profiles = []
    for n, batch_size in sizes:
        train_step, render_one, _ = prepare(trainer, n, batch_size)
        trainer.avatar.train()
        for _ in range(warmup):
            train_step()
        profiles.append(profile_calls(train_step, repeat, trainer.device, f"train {n}:{batch_size}"))
        trainer.avatar.eval()
        profiles.append(profile_calls(render_one, repeat, trainer.device, f"render {n}:1"))
    return profiles


def project_schedule(rows: Sequence[Row], schedule, epochs: int, frames: int) -> float:
    """Seconds for `epochs` epochs of `frames` frames following the point schedule, from the
    per-frame time of training steps back to back (log-log interpolation between measured point counts)."""
    points = sorted((r.gaussians, r.loop_ms / r.batch) for r in rows)

    def per_frame_ms(n: int) -> float:
        if n <= points[0][0]:
            return points[0][1]
        if n >= points[-1][0]:
            return points[-1][1] * n / points[-1][0]  # beyond the largest size: linear in n
        for (n0, t0), (n1, t1) in zip(points, points[1:]):
            if n0 <= n <= n1:
                w = math.log(n / n0) / math.log(n1 / n0)
                return math.exp(math.log(t0) * (1 - w) + math.log(t1) * w)
        raise AssertionError(n)

    return sum(frames * per_frame_ms(target_points(schedule, e)) / 1e3 for e in range(epochs))


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| Gaussians | batch | train step (ms), alone / back to back | train frames/s, alone / back to back "
             "| peak memory (GiB), tensors / held "
             f"| render (ms) | render FPS | sequence FPS ({RENDER_BATCH}/call) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        peak = "n/a" if r.peak_gib is None else f"{r.peak_gib:.2f} / {r.reserved_gib:.2f}"
        lines.append(f"| {r.gaussians:,} | {r.batch} | {r.train_ms:.1f} / {r.loop_ms:.1f} | "
                     f"{r.train_fps:.0f} / {r.loop_fps:.0f} | {peak} | "
                     f"{r.render_ms:.2f} | {r.render_fps:.0f} | {r.sequence_fps:.0f} |")
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    info = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device)}
    if device.type == "cuda":
        info["card"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["card"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conf", default=str(REPO_CONF), help="the recipe to measure (default: confs/subject1.conf)")
    parser.add_argument("--sizes", default=None, help=f"GAUSSIANS:BATCH,... (default {FULL_SIZES})")
    parser.add_argument("--res", type=int, default=512, help="image size in pixels (square), default 512")
    parser.add_argument("--frames", type=int, default=8, help="frames per video of the generated subject")
    parser.add_argument("--data", default="./data/datasets", help="where the benchmark subject is generated")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--backend", default="auto", help="rasterizer: auto | torch | gsplat | inria")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--project", action="store_true",
                        help="also project the conf's schedule over --project-epochs epochs")
    parser.add_argument("--project-epochs", type=int, default=120)
    parser.add_argument("--project-frames", type=int, default=3600, help="training frames per epoch")
    parser.add_argument("--quick", action="store_true",
                        help=f"small CPU run: {QUICK_SIZES} at 64 px, 2 warm-up and 3 timed steps")
    parser.add_argument("--profile", action="store_true",
                        help="also profile --repeat training steps and renders per size: device time, kernel "
                             "launches, host waits and the largest kernels")
    parser.add_argument("--json", default="", help="also write the rows and the environment to this file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="conf overrides")
    return parser


def benchmark_trainer(conf_path: str, res: int, frames: int, data: str, device: torch.device, backend: str,
                      exps: str, overrides: Sequence[str] = ()):
    """A trainer of `conf_path`'s recipe on the generated benchmark subject (made on first use)."""
    from ..subject_generator import ensure_synthetic_subject
    from ..train.trainer import Trainer, TrainOptions

    conf = load_conf(conf_path, [
        f"dataset.data_folder={data}", f"dataset.subject_name=benchmark_{res}px", "dataset.synthetic=true",
        f"dataset.synthetic_frames={frames}", f"dataset.train.img_res=[{res}, {res}]",
        f"dataset.test.img_res=[{res}, {res}]", "dataset.train.load_images=true", "dataset.test.subsample=1000",
        "model.flame_model_path=synthetic", f"model.rasterizer={backend}", f"train.device={device}",
        f"train.exps_folder={exps}", "train.strategy=static", "loss.vgg_feature_weight=0", *overrides])
    ensure_synthetic_subject(conf)
    return Trainer(conf, TrainOptions(nepoch=1))


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # key=value overrides anywhere among the options
    setup_logging(quiet=True)
    if args.quick:
        args.device, args.res, args.frames, args.warmup, args.repeat = "cpu", 64, 2, 2, 3
        args.backend = "torch"
        args.sizes = args.sizes or QUICK_SIZES
    sizes = parse_sizes(args.sizes or FULL_SIZES)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dynavatar-bench-") as exps:
        trainer = benchmark_trainer(args.conf, args.res, args.frames, args.data, device, args.backend, exps,
                                    args.overrides)
        rows = []
        for n, batch in sizes:
            row = measure(trainer, n, batch, args.warmup, args.repeat)
            log.info("%d Gaussians, batch %d: train %.1f ms (%.0f frames/s), back to back %.1f ms, render %.2f ms", n,
                     batch, row.train_ms, row.train_fps, row.loop_ms, row.render_ms)
            rows.append(row)
        profiles = profile_sizes(trainer, sizes, args.warmup, args.repeat) if args.profile else []
    conf = trainer.conf
    info = environment(device)
    # The arithmetic goes with the figures (the same sizes differ by a sixth between float32 and bfloat16
    # networks): as it ran, so TF32 only on a CUDA device and bfloat16 only where the device has it.
    ran_in = NetworkPrecision(conf.model.network_precision).dtype_on(device)
    precision = "float32" if ran_in is None else conf.model.network_precision
    info.update(res=args.res, conf=Path(args.conf).name, backend=args.backend, overrides=list(args.overrides),
                network_precision=precision, tf32=bool(conf.train.tf32 and device.type == "cuda"))
    print(f"{info['card']}, torch {info['torch']}, {args.res}x{args.res}, {info['date']}; {info['conf']}, networks in "
          f"{info['network_precision']}, TF32 {'on' if info['tf32'] else 'off'}")
    print(markdown(rows))
    result = {"environment": info, "rows": [r.__dict__ for r in rows]}
    if profiles:
        print(profile_markdown(profiles))
        result["profile"] = [p.as_dict() for p in profiles]
    if args.project:
        seconds = project_schedule(rows, conf.model.point_cloud, args.project_epochs, args.project_frames)
        result["projection"] = {"epochs": args.project_epochs, "frames": args.project_frames, "minutes": seconds / 60}
        print(f"projected: {args.project_epochs} epochs x {args.project_frames} frames with the conf's point "
              f"schedule: {seconds / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    main_with_errors(run, argv)
