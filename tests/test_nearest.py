"""The nearest-FLAME-vertex search: the chunked search on the CPU, and the fused kernel through
Triton's interpreter (where Triton is installed) and on a GPU, each against brute force."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynavatar.model import nearest
from dynavatar.model.nearest import nearest_vertex
from test_pose_graph import cuda

REPO = Path(__file__).resolve().parents[1]

# Point and vertex counts that are not multiples of the kernel's blocks, fewer than one block, one of each.
SIZES = [(1000, 300), (5, 70), (1, 1), (130, 64)]


def cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The SIZES, then a vertex set listed twice (every minimum a tie, whose first index must win; 64
    apart, so that both copies meet in one lane of the kernel's block of vertices too)."""
    gen = torch.Generator().manual_seed(0)
    listed = [(torch.randn(n, 3, generator=gen), torch.randn(v, 3, generator=gen)) for n, v in SIZES]
    twice = torch.randn(64, 3, generator=gen)
    return listed + [(torch.randn(300, 3, generator=gen), torch.cat([twice, twice]))]


def check_first_of_ties(vertices: torch.Tensor, found: torch.Tensor) -> None:
    """With the vertex set listed twice, the first copy is named (torch's argmin names the first minimum)."""
    half = vertices.shape[0] // 2
    if half and torch.equal(vertices[:half], vertices[half:]):
        assert int(found.max()) < half


def check_nearest(points: torch.Tensor, vertices: torch.Tensor, found: torch.Tensor) -> None:
    """`found` [N] names a vertex at the smallest distance (to float rounding) of each point."""
    distance = ((points.double()[:, None] - vertices.double()[None]) ** 2).sum(-1)  # [N, V]
    assert found.shape == (points.shape[0],) and found.dtype == torch.long
    gap = distance.gather(1, found[:, None].cpu())[:, 0] - distance.min(dim=1).values
    assert float(gap.max()) <= 1e-5, float(gap.max())


def test_the_chunked_search_matches_brute_force():
    for points, vertices in cases():
        brute = ((points[:, None] - vertices[None]) ** 2).sum(-1).argmin(1)
        assert torch.equal(nearest_vertex(points, vertices, chunk=128), brute)
    assert nearest_vertex(torch.zeros(0, 3), torch.randn(4, 3), chunk=8).shape == (0,)
    assert not nearest.fused_available(torch.device("cpu"))


# Runs in a fresh interpreter: Triton reads TRITON_INTERPRET when the kernel is defined.
INTERPRETED = """
import json, sys, torch
from dynavatar.model import nearest
sys.path.insert(0, sys.argv[1])
from test_nearest import cases
print(json.dumps([nearest._fused(points, vertices).tolist() for points, vertices in cases()]))
"""


@pytest.mark.skipif(nearest.triton is None, reason="Triton is not installed (its CPU interpreter runs the kernel here)")
def test_the_interpreted_kernel_finds_the_nearest_vertex():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(REPO / "code"), *sys.path]))
    done = subprocess.run([sys.executable, "-c", INTERPRETED, str(Path(__file__).parent)], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    for (points, vertices), found in zip(cases(), json.loads(done.stdout.strip().splitlines()[-1]), strict=True):
        found = torch.tensor(found, dtype=torch.long)
        check_nearest(points, vertices, found)
        check_first_of_ties(vertices, found)


@cuda
@pytest.mark.gpu
def test_on_a_gpu_the_fused_kernel_finds_the_nearest_vertex():
    device = torch.device("cuda")
    assert nearest.fused_available(device)
    for points, vertices in cases() + [(torch.randn(20_000, 3), torch.randn(5023, 3) * 0.1)]:
        found = nearest_vertex(points.to(device), vertices.to(device), chunk=4096)
        check_nearest(points, vertices, found)
        check_first_of_ties(vertices, found)
