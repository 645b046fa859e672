"""Where a step's time goes: PyTorch's profiler over repeated calls, summarised per call.

`benchmark.py --profile` uses it for the training step and the one-frame render. The summary says
whether a call is bound by the device (its kernels' time close to the wall time) or by the host
(many launches, waits for the device), and names the kernels (operators on the CPU) that take the
most time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
TOP = 12


@dataclass
class ProfileSummary:
    label: str
    calls: int
    wall_ms: float  # per call, the device synchronised after the calls
    busy_ms: float  # per call: the kernels' time on the device (CPU: the operators' own time)
    launches: float  # per call: kernels launched (CUDA graph replays count one)
    waits: float  # per call: the host waiting for the device
    top: list[tuple[str, float, float]] = field(default_factory=list)  # (name, ms per call, calls per call)

    def as_dict(self) -> dict:
        return asdict(self)


def profile_calls(fn: Callable[[], object], calls: int, device: torch.device, label: str) -> ProfileSummary:
    """Run `fn` `calls` times under the profiler (after one unprofiled call) and summarise per call."""
    cuda = device.type == "cuda"
    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
        wall = (time.perf_counter() - start) * 1e3 / calls
    averages = prof.key_averages()
    kind = DeviceType.CUDA if cuda else DeviceType.CPU
    busy = [(a.key, a.self_device_time_total if cuda else a.self_cpu_time_total, a.count) for a in averages
            if a.device_type == kind and not a.is_user_annotation]  # annotations span kernels counted already
    busy = [(name, us / 1e3 / calls, count / calls) for name, us, count in busy if us > 0]
    busy.sort(key=lambda row: -row[1])
    counts = {a.key: a.count for a in averages}
    return ProfileSummary(label, calls, wall, sum(ms for _, ms, _ in busy),
                          sum(counts.get(k, 0) for k in LAUNCHES) / calls,
                          sum(counts.get(k, 0) for k in WAITS) / calls, busy[:TOP])


def markdown(summaries: list[ProfileSummary]) -> str:
    """A table of the summaries, then each one's largest kernels (operators on the CPU)."""
    lines = ["| call | wall (ms) | busy (ms) | kernel launches | host waits |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {s.label} | {s.wall_ms:.2f} | {s.busy_ms:.2f} | {s.launches:.0f} | {s.waits:.1f} |"
              for s in summaries]
    for s in summaries:
        lines += ["", f"{s.label}, largest per call (ms, calls):"]
        lines += [f"- {ms:.3f} ms x{count:.0f}  {_short(name)}" for name, ms, count in s.top]
    return "\n".join(lines)


def _short(name: str, width: int = 110) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."
