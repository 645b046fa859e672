"""Benchmark the rasterizer backends: forward ms, forward+backward ms and peak memory per scene.

Medians over `--repeat` runs after `--warmup` runs (CUDA events on GPU, a wall clock on CPU).
Forward: `rasterize()` with inputs that require grad; forward+backward: that plus the backward of
image.sum() (gradients of means, quaternions, scales, opacities and colours).
Scenes are `KIND:N@WxH` (KIND random or sphere, see dynavatar.render.random_scenes; `@S` means SxS).
Prints a markdown table at the end.

  python scripts/bench_rasterizer.py                                    # defaults for the device
  python scripts/bench_rasterizer.py --device cpu --backends torch --scenes random:2000@64,random:10000@128
  python scripts/bench_rasterizer.py --device cuda --scenes random:100000@512 --json results.json

Peak memory: on CUDA the allocator's peak during one forward+backward, above what was allocated
before it; on CPU the growth of the process's peak resident set (VmHWM, reset before each scene
through /proc/self/clear_refs), so it includes allocator caching.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from ..errors import DynAvatarError
from ..render import available_backends, rasterize, resolve_backend
from ..render.random_scenes import random_scene, sphere_scene

log = logging.getLogger("bench_rasterizer")
CPU_SCENES = "random:2000@64,random:10000@128,sphere:2000@64,sphere:10000@128"
GPU_SCENES = CPU_SCENES + ",random:1000@512,random:10000@512,random:100000@512,sphere:100000@512"


def parse_scene(text: str) -> tuple[str, int, int, int]:
    kind, _, rest = text.rpartition(":")
    kind = kind or "random"
    count, _, size = rest.partition("@")
    width, _, height = size.partition("x")
    numbers_ok = count.isdigit() and width.isdigit() and (not height or height.isdigit())
    if kind not in ("random", "sphere") or not numbers_ok:
        raise SystemExit(f"bad scene {text!r}: expected KIND:N@WxH or KIND:N@S, KIND random or sphere")
    return kind, int(count), int(width), int(height or width)


class Timer:
    """Median milliseconds of a callable: CUDA events on GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, warmup: int, repeat: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def back_to_back(self, fn, warmup: int, repeat: int) -> float:
        """Mean milliseconds of `repeat` calls of fn run one after the other, as a training loop runs
        its steps: the host queues the next call while the device runs this one (one wait at the end)."""
        for _ in range(warmup):
            fn()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(repeat):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / repeat
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - t0) * 1e3 / repeat


def _vm_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_mib(fn, device: torch.device) -> float | None:
    """Peak memory of one call of fn above the memory in use before it (MiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    except OSError:
        return None
    before = _vm_kib("VmRSS")
    fn()
    after = _vm_kib("VmHWM")
    return None if before is None or after is None else (after - before) / 1024


def bench_one(backend: str, kind: str, n: int, width: int, height: int, device: torch.device,
              warmup: int, repeat: int) -> dict:
    make = random_scene if kind == "random" else sphere_scene
    scene = make(n, width, height, seed=0, device=device).detached_leaves()
    timer = Timer(device)

    def forward():
        return rasterize(*scene.args(), backend=backend)

    def forward_backward():
        out = forward()
        out.image.sum().backward()  # an image loss, as in training
        for t in (scene.means, scene.quats, scene.scales, scene.opacities, scene.colors):
            t.grad = None

    forward_backward()  # first call: kernel compilation, caches
    memory = peak_memory_mib(forward_backward, device)
    fwd = timer(forward, warmup, repeat)
    fwd_bwd = timer(forward_backward, warmup, repeat)
    visible = int(forward().visible.sum())
    return dict(backend=backend, scene=f"{kind}:{n}@{width}x{height}", gaussians=n, width=width, height=height,
                visible=visible, forward_ms=fwd, forward_backward_ms=fwd_bwd, peak_mib=memory,
                device=torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"cpu x{torch.get_num_threads()} threads")


def markdown(rows: list[dict]) -> str:
    lines = ["| backend | scene | Gaussians | resolution | forward ms | fwd+bwd ms | peak MiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        mem = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        lines.append(f"| {r['backend']} | {r['scene']} | {r['gaussians']} | {r['width']}x{r['height']} | "
                     f"{r['forward_ms']:.2f} | {r['forward_backward_ms']:.2f} | {mem} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", default="", help="comma-separated (default: all that run on the device)")
    parser.add_argument("--scenes", default="", help=f"comma-separated KIND:N@WxH (default cpu: {CPU_SCENES})")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    scenes = [parse_scene(s) for s in (args.scenes or (GPU_SCENES if device.type == "cuda" else CPU_SCENES)).split(",")]
    names = args.backends.split(",") if args.backends else [
        b for b in available_backends() if b == "torch" or device.type == "cuda"]
    try:
        names = [resolve_backend(b, device) for b in names]
    except DynAvatarError as err:
        log.error("%s", err)
        return 2
    rows = []
    for kind, n, width, height in scenes:
        for backend in names:
            row = bench_one(backend, kind, n, width, height, device, args.warmup, args.repeat)
            log.info("%s %s: forward %.2f ms, fwd+bwd %.2f ms, peak %s MiB", backend, row["scene"],
                     row["forward_ms"], row["forward_backward_ms"],
                     "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.1f}")
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    return 0

