"""SSIM's fused kernels (`loss.fused_ssim`): the loss and the gradient of PyTorch's form, on the CPU
through Triton's interpreter (where Triton is installed) and on a GPU; the loss picks them only
where they run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynavatar.config import load_conf
from dynavatar.losses.avatar_loss import AvatarLoss
from dynavatar.metrics import fused_ssim
from dynavatar.metrics.image import ssim_loss
from test_pose_graph import cuda

REPO = Path(__file__).resolve().parents[1]

# Sizes that are not multiples of the kernels' tiles, one channel and three, images smaller than
# the window, and one [H,W,C] image.
SHAPES = [(1, 20, 37, 3), (2, 9, 5, 1), (17, 33, 1)]

# Runs in a fresh interpreter: Triton reads TRITON_INTERPRET when the kernels are defined.
INTERPRETED = """
import json, sys, torch
from dynavatar.metrics.fused_ssim import fused_ssim_loss
from dynavatar.metrics.image import ssim_loss
results = []
for i, shape in enumerate(json.loads(sys.argv[1])):
    generator = torch.Generator().manual_seed(i)
    x = torch.rand(shape, dtype=torch.float64, generator=generator)
    y = (x + 0.2 * torch.randn(shape, dtype=torch.float64, generator=generator)).clamp(0, 1)
    fused_x = x.float().requires_grad_()
    fused = fused_ssim_loss(fused_x, y.float())
    fused.backward()
    again = fused_ssim_loss(x.float().requires_grad_(), y.float())  # no grad wanted: no derivatives
    with torch.no_grad():
        no_grad = fused_ssim_loss(x.float(), y.float())
    reference_x = x.clone().requires_grad_()
    reference = ssim_loss(reference_x, y)
    reference.backward()
    results.append({"loss": fused.item(), "reference": reference.item(),
                    "again_equal": again.item() == fused.item() and no_grad.item() == fused.item(),
                    "grad_error": (fused_x.grad.double() - reference_x.grad).abs().max().item(),
                    "grad_scale": reference_x.grad.abs().max().item()})
print(json.dumps(results))
"""


@pytest.mark.skipif(not fused_ssim.interpreter_available(), reason="Triton is not installed (its CPU interpreter "
                                                                    "runs the kernels here)")
def test_interpreted_kernels_give_pytorchs_loss_and_gradient():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(REPO / "code"), *sys.path]))
    done = subprocess.run([sys.executable, "-c", INTERPRETED, json.dumps(SHAPES)], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    for shape, result in zip(SHAPES, json.loads(done.stdout.strip().splitlines()[-1])):
        assert result["loss"] == pytest.approx(result["reference"], abs=1e-6), shape
        assert result["grad_error"] <= 1e-5 * result["grad_scale"], shape
        assert result["again_equal"], shape  # deterministic, with or without the derivatives


def make_loss(*overrides: str, device: torch.device) -> AvatarLoss:
    conf = load_conf(REPO / "confs" / "demo.conf", list(overrides))
    return AvatarLoss(conf.loss, None, None, device, perceptual=False)


def test_the_cpu_uses_pytorchs_form(monkeypatch):
    def refuse(*args):
        raise AssertionError("the fused kernels were called on the CPU")
    monkeypatch.setattr(fused_ssim, "fused_ssim_loss", refuse)
    x, y = torch.rand(2, 2, 16, 16, 3).unbind(0)
    loss = make_loss(device=torch.device("cpu"))
    assert not fused_ssim.available(torch.device("cpu"))
    assert torch.equal(loss.ssim(x, y), ssim_loss(x, y))


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(8, 512, 512, 3), (1, 300, 257, 3)])
def test_gpu_kernels_give_pytorchs_loss_and_gradient(shape):
    device = torch.device("cuda")
    assert fused_ssim.available(device), "Triton is missing beside a CUDA build of PyTorch"
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(shape, generator=generator, dtype=torch.float64).to(device)
    y = (x + 0.2 * torch.randn(shape, generator=generator, dtype=torch.float64).to(device)).clamp(0, 1)
    fused_x, reference_x = x.float().requires_grad_(), x.clone().requires_grad_()
    fused, reference = make_loss(device=device).ssim(fused_x, y.float()), ssim_loss(reference_x, y)
    (3.0 * fused).backward()
    (3.0 * reference).backward()
    assert fused.item() == pytest.approx(reference.item(), abs=1e-6)
    assert (fused_x.grad.double() - reference_x.grad).abs().max() <= 1e-5 * reference_x.grad.abs().max()
    # Off by the conf key, the step uses PyTorch's form: the same value within float32's rounding.
    unfused = make_loss("loss.fused_ssim=false", device=device).ssim(x.float(), y.float())
    assert unfused.item() == pytest.approx(fused.item(), abs=1e-6)
    assert torch.equal(make_loss(device=device).ssim(x.float(), y.float()), fused.detach())  # deterministic
