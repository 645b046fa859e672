"""RowSparseAdam's Triton kernel against its PyTorch form: through Triton's interpreter on the CPU
(where Triton is installed) and on a GPU. Both forms against torch.optim.SparseAdam: test_reliability.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynavatar.model import row_sparse_adam
from dynavatar.model.row_sparse_adam import RowSparseAdam
from test_pose_graph import cuda

REPO = Path(__file__).resolve().parents[1]

# The per-frame tables' widths (expression, pose, translation), one of a single column, and one wider
# than a power of two; batches with repeated rows, a row named three times, a skipped (non-finite) step.
WIDTHS = (50, 15, 3, 1, 33)
STEPS = [([0, 2, 2, 5], 0.0), ([1, 2], 0.0), ([5, 5, 0], 1.0), ([5, 5, 5, 3], 0.0), ([3], 0.0), ([4, 0, 1], 0.0)]


def run(fused: bool, device: str, maximize: bool = False) -> dict[str, list]:
    """Weights, moments and step counts after STEPS, each step guarded as training guards it (`found_inf`)."""
    torch.manual_seed(0)
    tables = [torch.nn.Embedding.from_pretrained(torch.randn(7, width), freeze=False, sparse=True).to(device)
              for width in WIDTHS]
    initial = [t.weight.detach().cpu().tolist() for t in tables]
    optimizer = RowSparseAdam([t.weight for t in tables], lr=0.05, maximize=maximize, fused=fused)
    for rows, found_inf in STEPS:
        optimizer.zero_grad()
        index = torch.tensor(rows, device=device)
        sum((t(index) ** 3).sum() * (k + 1) for k, t in enumerate(tables)).backward()
        optimizer.found_inf = torch.tensor(found_inf, device=device)
        optimizer.step()
    states = [optimizer.state[t.weight] for t in tables]
    return {"initial": initial, "weights": [t.weight.detach().cpu().tolist() for t in tables],
            "exp_avg": [s["exp_avg"].cpu().tolist() for s in states],
            "exp_avg_sq": [s["exp_avg_sq"].cpu().tolist() for s in states],
            "step": [float(s["step"]) for s in states]}


def check_same(fused: dict, dense: dict) -> None:
    assert fused["step"] == dense["step"] == [5.0] * len(WIDTHS)
    for key, rtol, atol in (("weights", 1e-5, 1e-6), ("exp_avg", 1e-5, 1e-7), ("exp_avg_sq", 1e-5, 1e-9)):
        for ours, theirs in zip(fused[key], dense[key], strict=True):
            assert torch.allclose(torch.tensor(ours), torch.tensor(theirs), rtol=rtol, atol=atol), key
    for result in (fused, dense):  # row 6 is in no batch: unchanged; the others moved
        for before, after in zip(result["initial"], result["weights"], strict=True):
            assert after[6] == before[6] and after[:6] != before[:6]


# Runs in a fresh interpreter: Triton reads TRITON_INTERPRET when the kernel is defined.
INTERPRETED = """
import json, sys
sys.path.insert(0, sys.argv[1])
from test_row_sparse_adam import run
print(json.dumps([run(True, "cpu", maximize) for maximize in (False, True)]))
"""


@pytest.mark.skipif(row_sparse_adam.triton is None, reason="Triton is not installed (its CPU interpreter runs the "
                                                           "kernel here)")
def test_the_interpreted_kernel_updates_as_the_pytorch_form_does():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(REPO / "code"), *sys.path]))
    done = subprocess.run([sys.executable, "-c", INTERPRETED, str(Path(__file__).parent)], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for fused, maximize in zip(results, (False, True), strict=True):
        check_same(fused, run(False, "cpu", maximize))


def test_without_found_inf_or_triton_the_pytorch_form_runs(monkeypatch):
    """The evaluation's fitting steps without a guard: PyTorch's form, its step count a Python int."""
    calls = []
    monkeypatch.setattr(row_sparse_adam, "_fused_step", lambda *args: calls.append(args))
    table = torch.nn.Embedding.from_pretrained(torch.zeros(3, 2), freeze=False, sparse=True)
    optimizer = RowSparseAdam(table.parameters(), lr=0.1, fused=True)
    table(torch.tensor([1])).sum().backward()
    optimizer.step()
    assert not calls and optimizer.state[table.weight]["step"] == 1
    assert not row_sparse_adam.fused_available(torch.device("cpu"))


@cuda
@pytest.mark.gpu
def test_on_a_gpu_the_guarded_step_takes_the_kernel_and_updates_as_the_pytorch_form_does(monkeypatch):
    assert row_sparse_adam.fused_available(torch.device("cuda")), "Triton is missing beside a CUDA build of PyTorch"
    calls = []
    kernel = row_sparse_adam._fused_step
    monkeypatch.setattr(row_sparse_adam, "_fused_step", lambda *args: calls.append(1) or kernel(*args))
    for maximize in (False, True):
        check_same(run(None, "cuda", maximize), run(False, "cuda", maximize))
    assert len(calls) == 2 * len(STEPS) * len(WIDTHS)  # the default took the kernel for every table and step
