"""Posing replayed from CUDA graphs (`model.cuda_graphs`): the same Gaussians as launching the
kernels, fresh ones for every call, recorded again whenever the avatar's state changes, and never
used with gradients or off the GPU."""

from __future__ import annotations

import pytest
import torch

from test_model import make_avatar

FIELDS = ("means", "quats", "scales", "opacities", "colors")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
# The paper's recipe, and one with every option that changes the posing (shading, turned Gaussians,
# bfloat16 networks): what the replayed-graph tests run.
recipes = pytest.mark.parametrize("overrides", [(), ("model.shading=true", "model.rotate_gaussians=true",
                                                     "model.network_precision=bfloat16")], ids=["paper", "shaded_bf16"])


def frames(n: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 50, generator=generator).to(device),
            (torch.randn(n, 15, generator=generator) * 0.2).to(device))


def launched(avatar, state, expression, flame_pose):
    avatar.cuda_graphs = False
    try:
        return avatar.pose(state, expression, flame_pose)
    finally:
        avatar.cuda_graphs = True


def assert_same(a, b) -> None:
    for name in FIELDS:
        assert torch.allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6), name


def test_the_cpu_and_a_step_with_gradients_launch_their_kernels(synthetic_flame_paths):
    avatar = make_avatar(synthetic_flame_paths)
    with torch.no_grad():
        avatar.deform(*frames(2, 0, "cpu"))
    avatar.deform(*frames(2, 0, "cpu"))
    assert avatar.cuda_graphs and "pose_graphs" not in avatar.canonical_cache._entries


@cuda
@pytest.mark.gpu
def test_the_posing_is_recorded_with_cublas_workspaces_of_its_own(synthetic_flame_paths, monkeypatch):
    """The cuBLAS workspaces are freed after the warm-up, right before the capture, and after it
    (`dynavatar.model.capture` says why), and the replay still equals the launched posing."""
    events = []
    clear = torch._C._cuda_clearCublasWorkspaces

    def release():
        events.append("release")
        clear()

    class Graph(torch.cuda.graph):
        def __enter__(self):
            events.append("capture")
            return super().__enter__()

    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", release)
    monkeypatch.setattr(torch.cuda, "graph", Graph)
    device = torch.device("cuda")
    avatar = make_avatar(synthetic_flame_paths).to(device)
    with torch.no_grad():
        state = avatar.canonical_state()
        inputs = frames(2, 1, device)
        replayed = avatar.pose(state, *inputs)
        assert events == ["release", "capture", "release"], events
        assert_same(replayed, launched(avatar, state, *inputs))


@cuda
@pytest.mark.gpu
@recipes
def test_replayed_posing_equals_launched_posing(synthetic_flame_paths, overrides):
    device = torch.device("cuda")
    avatar = make_avatar(synthetic_flame_paths, *overrides).to(device)
    with torch.no_grad():
        state = avatar.canonical_state()
        first = avatar.pose(state, *frames(3, 1, device))  # recorded, then replayed
        inputs = frames(3, 2, device)
        second = avatar.pose(state, *inputs)
        assert_same(second, launched(avatar, state, *inputs))
        assert not torch.allclose(first.means, second.means)  # the first call's Gaussians were not overwritten
        assert_same(first, launched(avatar, state, *frames(3, 1, device)))
        one = frames(1, 3, device)  # another number of frames: a graph of its own
        assert_same(avatar.pose(state, *one), launched(avatar, state, *one))
        recorded = avatar.canonical_cache._entries["pose_graphs"][1]
        assert len(recorded._recordings) == 2

        other = make_avatar(synthetic_flame_paths).to(device)
        other.points.mul_(0.9)
        avatar.set_points(other.points)  # a new state: recorded again on its tensors
        state = avatar.canonical_state()
        assert_same(avatar.pose(state, *one), launched(avatar, state, *one))
        assert avatar.canonical_cache._entries["pose_graphs"][1] is not recorded

    avatar.canonical_state()  # a training step's state: the recordings are dropped with the kept state
    assert "pose_graphs" not in avatar.canonical_cache._entries
    gaussians, _ = avatar.deform(*one)  # with gradients: launched, gradients reach the networks
    gaussians.means.sum().backward()
    assert avatar.deformer.blendshapes.weight.grad is not None
    assert "pose_graphs" not in avatar.canonical_cache._entries
