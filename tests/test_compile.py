"""model.compile: the compiled step gives the uncompiled gradients, for every point count and
number of frames, without compiling again when the points are pruned or grown."""

from __future__ import annotations

import pytest
import torch

from dynavatar.config import load_conf
from dynavatar.errors import ConfigError
from dynavatar.metrics.image import ssim_loss
from dynavatar.model import precision as precision_module
from dynavatar.model.compiled import StepCompiler, can_compile
from dynavatar.model.recompute import RecomputePolicy

from test_model import REPO, make_avatar, step_gradients

SMALL = "model.geometry_network.dims=[64, 64, 64, 64]"  # fewer layers: less to trace, the same code


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def assert_same_gradients(eager, compiled, recompute: str, frames: int) -> None:
    want = step_gradients(eager, RecomputePolicy(recompute, 128), frames)
    got = step_gradients(compiled, RecomputePolicy(recompute, 128), frames)
    assert got.keys() == want.keys() and "points" in got
    for name, grad in want.items():
        error = float((got[name] - grad).norm() / grad.norm().clamp_min(1e-12))
        assert error <= 1e-4, (eager.n_points, recompute, name, error)  # the same maths, sums reordered


def test_compiled_step_gives_the_uncompiled_gradients_without_compiling_again(synthetic_flame_paths, monkeypatch):
    """The networks (bfloat16 under autocast, as on a GPU), the posing and the SSIM loss, traced
    with dynamic sizes (backend aot_eager: dynamo's graphs and the compiled autograd, no code
    generation), on 400 points and 3 frames, then on 600 points and 2 frames: the uncompiled
    gradients, and no new graph for the second size (pruning and growing change the point count
    every epoch); with activations recomputed, the same gradients too. (The bfloat16 path is forced:
    a CPU without bfloat16 instructions would run float32.)"""
    monkeypatch.setitem(precision_module._has_bfloat16, ("cpu", None), True)
    torch._dynamo.reset()
    overrides = (SMALL, "model.network_precision=bfloat16")
    torch.manual_seed(0)
    eager = make_avatar(synthetic_flame_paths, *overrides)
    torch.manual_seed(0)
    compiled = make_avatar(synthetic_flame_paths, *overrides, "model.compile=on")
    compiled.compiler = StepCompiler("on", backend="aot_eager")
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints unchanged
    ssim = compiled.compiler("ssim_loss", ssim_loss, torch.device("cpu"))
    graphs = []
    for n, frames in ((400, 3), (600, 2)):
        points = torch.randn(n, 3, generator=torch.Generator().manual_seed(n)) * 0.1
        for avatar in (eager, compiled):
            avatar.set_points(points)
        assert_same_gradients(eager, compiled, "off", frames)
        images = torch.rand(2, frames, 16, 16, 3, generator=torch.Generator().manual_seed(n))
        assert torch.allclose(ssim(*images), ssim_loss(*images), atol=1e-6)
        graphs.append(graphs_compiled())
    assert graphs[0] > 0 and graphs[1] == graphs[0], graphs
    assert_same_gradients(eager, compiled, "on", 2)  # 600 points in chunks of 128


def test_compile_modes():
    cpu = torch.device("cpu")
    assert not StepCompiler("off").enabled(cpu) and StepCompiler("on").enabled(cpu)
    assert not StepCompiler("auto").enabled(cpu) and not can_compile(cpu)  # auto: CUDA only

    def double(x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    assert StepCompiler("off")("double", double, cpu) is double  # off: the function itself
    with pytest.raises(ValueError, match="model.compile"):
        StepCompiler("always")


def test_an_unknown_compile_mode_is_one_conf_error():
    with pytest.raises(ConfigError, match="compile"):
        load_conf(REPO / "confs" / "subject1.conf", ["model.compile=always"])
