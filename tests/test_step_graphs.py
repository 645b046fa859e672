"""The per-point work of a training step replayed from CUDA graphs (`model.training_graphs`): the
launched step's gradients, one recording of the networks, the canonical state and the posing kept
while their inputs and parameters stay, recorded again when they change, and never used off the GPU
or without gradients; with recomputation the networks are launched and the posing alone replayed."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from dynavatar.losses.flame_prior import FlamePrior
from dynavatar.model import capture, step_graphs
from dynavatar.model.step_graphs import StepGraphs
from dynavatar.model.recompute import RecomputePolicy

from test_model import make_avatar, step_gradients
from test_pose_graph import cuda, recipes


class FakeRecorder:
    """Stands in for `torch.cuda.make_graphed_callables` on the CPU: the recorded function is the
    call itself; records the first input's shape of each recording and counts the replays."""

    def __init__(self) -> None:
        self.recorded, self.replays = [], 0

    def __call__(self, flat, sample_args, **_):
        self.recorded.append(tuple(sample_args[0].shape))
        flat(*sample_args)  # as the real one warms up

        def replay(*inputs):
            self.replays += 1
            return flat(*inputs)
        return replay


def relative_errors(got: dict, want: dict) -> dict[str, float]:
    assert got.keys() == want.keys() and "points" in got
    return {name: float((got[name] - grad).norm() / grad.norm().clamp_min(1e-12)) for name, grad in want.items()}


def test_the_step_is_one_recording_made_again_when_its_inputs_or_the_points_change(synthetic_flame_paths,
                                                                                    monkeypatch):
    """The dispatch on the CPU, with a recorder that calls the recorded function: the launched step's
    very gradients (the frames' inputs' too), one recording of the whole per-point work for a point
    count and batch, new ones for new points, frames or inputs that take a gradient; with
    recomputation the networks launched and the posing alone recorded; nothing recorded without
    gradients or for a frozen avatar."""
    recorder = FakeRecorder()
    monkeypatch.setattr(step_graphs, "can_record_training", lambda device: torch.is_grad_enabled())
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", recorder)
    torch.manual_seed(0)
    launched = make_avatar(synthetic_flame_paths, "model.training_graphs=false")
    torch.manual_seed(0)
    avatar = make_avatar(synthetic_flame_paths)
    assert isinstance(avatar.training_graphs, StepGraphs) and launched.training_graphs is None
    assert avatar.state_dict().keys() == launched.state_dict().keys()  # checkpoints unchanged

    want = step_gradients(launched, RecomputePolicy("off", 128), frames=3)
    got = step_gradients(avatar, RecomputePolicy("off", 128), frames=3)
    assert all(torch.equal(got[name], grad) for name, grad in want.items())
    assert recorder.recorded == [(3, 50)] and set(avatar.training_graphs._recordings) == {"step"}
    step_gradients(avatar, RecomputePolicy("off", 128), frames=3)  # the same sizes: replayed only
    assert len(recorder.recorded) == 1 and recorder.replays == 2
    step_gradients(avatar, RecomputePolicy("off", 128), frames=2)  # fewer frames: recorded again
    assert recorder.recorded[1:] == [(2, 50)]
    want = step_gradients(launched, RecomputePolicy("off", 128), frames=2, refine_inputs=True)
    got = step_gradients(avatar, RecomputePolicy("off", 128), frames=2, refine_inputs=True)
    assert "expression" in got and all(torch.equal(got[name], grad) for name, grad in want.items())
    assert recorder.recorded[2:] == [(2, 50)]  # the inputs take a gradient now: recorded again

    # the FLAME priors' terms computed inside the step, as training asks: recorded again once, the
    # launched step's very gradients, replayed while the prior's tensors stay where they are
    prior = FlamePrior(avatar.flame, torch.rand(50) + 0.5)
    for _ in range(2):
        got = step_gradients(avatar, RecomputePolicy("off", 128), frames=2, prior_terms=prior)
        want = step_gradients(launched, RecomputePolicy("off", 128), frames=2,
                              prior_terms=FlamePrior(launched.flame, prior.var_expression))
        assert all(torch.equal(got[name], grad) for name, grad in want.items()), relative_errors(got, want)
    assert recorder.recorded[3:] == [(2, 50)] and recorder.replays == 6
    del recorder.recorded[3:]  # the counts below are those of the steps without the priors' terms
    recorder.replays -= 2

    n = avatar.n_points
    avatar.set_points(avatar.points.detach()[: n - 10])  # pruned: recorded again
    launched.set_points(launched.points.detach()[: n - 10])
    errors = relative_errors(step_gradients(avatar, RecomputePolicy("off", 128), frames=2),
                             step_gradients(launched, RecomputePolicy("off", 128), frames=2))
    assert max(errors.values()) == 0.0, errors
    assert recorder.recorded[3:] == [(2, 50)] and recorder.replays == 5

    # networks recomputed in chunks: launched, the posing recorded on its own, then replayed
    for _ in range(2):
        errors = relative_errors(step_gradients(avatar, RecomputePolicy("on", 128), frames=2),
                                 step_gradients(launched, RecomputePolicy("on", 128), frames=2))
        assert max(errors.values()) == 0.0, errors
    assert recorder.recorded[4:] == [(2, 50)] and recorder.replays == 7
    assert set(avatar.training_graphs._recordings) == {"pose"}  # the step's went, with its memory
    before = (len(recorder.recorded), recorder.replays)
    with torch.no_grad():
        avatar.deform(torch.zeros(2, 50), torch.zeros(2, 15))
    for p in avatar.parameters():
        p.requires_grad_(False)
    avatar.deform(torch.zeros(2, 50), torch.zeros(2, 15))  # frozen (fitting test-frame inputs): launched
    assert (len(recorder.recorded), recorder.replays) == before


class CyclicRecorder(FakeRecorder):
    """A FakeRecorder whose recording is a reference cycle, as torch's is: the module itself comes
    back, its forward replaced by a function that refers to the module's own; keeps a weak reference
    to each recording."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[weakref.ref] = []

    def __call__(self, flat, sample_args, **_):
        replay = super().__call__(flat.forward, sample_args)  # flat -> its forward -> replay -> flat
        flat.forward = lambda *inputs: replay(*inputs)
        self.made.append(weakref.ref(flat))
        return flat


def test_a_replaced_recording_is_freed_before_the_next_is_made(synthetic_flame_paths, monkeypatch):
    """With Python's automatic collection off, nothing but the explicit collection before each
    recording frees the recordings replaced: each new batch shape leaves one recording per name alive,
    never the earlier ones (on a GPU they hold a memory pool and CUDA graphs)."""
    recorder = CyclicRecorder()
    monkeypatch.setattr(step_graphs, "can_record_training", lambda device: torch.is_grad_enabled())
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", recorder)
    avatar = make_avatar(synthetic_flame_paths)
    gc.collect()
    gc.disable()
    try:
        for frames in (3, 2, 1):
            step_gradients(avatar, RecomputePolicy("off", 128), frames=frames)
            alive = sum(ref() is not None for ref in recorder.made)
            assert alive == len(avatar.training_graphs._recordings) > 0, (frames, alive)
        assert len(recorder.made) > alive  # recordings were replaced, and those are gone
    finally:
        gc.enable()


def test_each_recording_has_cublas_workspaces_of_its_own(synthetic_flame_paths, monkeypatch):
    """Each recording is warmed up, then the cuBLAS workspaces are freed, then it is captured (with no
    warm-up of make_graphed_callables' own, whose side stream can be the capture stream itself), then
    they are freed again: the capture allocates its workspace in its own pool, and leaves none for the
    next (on a GPU about 65 MiB a stream, kept until PyTorch's 32 streams wrap otherwise)."""
    events = []
    recorder = FakeRecorder()
    real_warm_up = step_graphs.warm_up

    def warm_up(fn, inputs, parameters=(), backward=False):
        events.append("warm-up")
        calls = []
        real_warm_up(lambda *x: calls.append(1) or fn(*x), inputs, parameters, backward)
        assert backward and len(calls) == capture.WARMUP_CALLS

    def record(flat, sample_args, **kw):
        assert kw["num_warmup_iters"] == 0
        events.append("record")
        return recorder(flat, sample_args, **kw)

    monkeypatch.setattr(step_graphs, "can_record_training", lambda device: torch.is_grad_enabled())
    monkeypatch.setattr(step_graphs, "warm_up", warm_up)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", record)
    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: events.append("release"), raising=False)
    avatar = make_avatar(synthetic_flame_paths)
    for frames in (3, 3, 2):
        step_gradients(avatar, RecomputePolicy("off", 128), frames=frames)
    assert avatar.training_graphs.recordings == 2
    assert events == ["warm-up", "release", "record", "release"] * 2, events


def test_training_graphs_turn_off_the_accumulator_stream_warning(synthetic_flame_paths, monkeypatch):
    """The warning every replayed step would raise once (a cost measured as none) is turned off
    where the step is recorded, and only there."""
    calls = []
    monkeypatch.setattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", calls.append,
                        raising=False)
    make_avatar(synthetic_flame_paths, "model.training_graphs=false")
    assert calls == []
    make_avatar(synthetic_flame_paths)
    assert calls == [False]


def test_the_cpu_launches_the_networks(synthetic_flame_paths):
    avatar = make_avatar(synthetic_flame_paths)
    step_gradients(avatar, RecomputePolicy("off", 128), frames=2)
    assert avatar.training_graphs.recordings == 0


@cuda
@pytest.mark.gpu
@recipes
def test_replayed_networks_and_posing_give_the_launched_gradients(synthetic_flame_paths, overrides):
    device = torch.device("cuda")
    torch.manual_seed(0)
    launched = make_avatar(synthetic_flame_paths, "model.training_graphs=false", *overrides).to(device)
    torch.manual_seed(0)
    avatar = make_avatar(synthetic_flame_paths, *overrides).to(device)
    for frames, refine_inputs in ((3, False), (3, False), (2, False), (2, True)):
        errors = relative_errors(step_gradients(avatar, RecomputePolicy("off", 128), frames, refine_inputs),
                                 step_gradients(launched, RecomputePolicy("off", 128), frames, refine_inputs))
        assert max(errors.values()) <= 1e-4, errors
        assert ("expression" in errors) == refine_inputs
    # the step, again for 2 frames and for inputs that take a gradient
    assert avatar.training_graphs.recordings == 3

    for each in (avatar, launched):  # an optimizer moves the weights in place: the recordings stay valid
        optimizer = torch.optim.SGD(each.parameters(), lr=1e-3)
        step_gradients(each, RecomputePolicy("off", 128), 2)
        optimizer.step()
        each.set_points(each.points.detach()[:300] * 1.1)  # pruned: recorded again
    errors = relative_errors(step_gradients(avatar, RecomputePolicy("off", 128), 2),
                             step_gradients(launched, RecomputePolicy("off", 128), 2))
    assert max(errors.values()) <= 1e-4, errors
    assert avatar.training_graphs.recordings == 5  # without input gradients, then for the pruned points

    # the FLAME priors' terms inside the recording, as training asks for them
    var = torch.rand(50, device=device) + 0.5
    priors = FlamePrior(avatar.flame, var), FlamePrior(launched.flame, var)
    for _ in range(2):
        errors = relative_errors(step_gradients(avatar, RecomputePolicy("off", 128), 2, prior_terms=priors[0]),
                                 step_gradients(launched, RecomputePolicy("off", 128), 2, prior_terms=priors[1]))
        assert max(errors.values()) <= 1e-4, errors
    assert avatar.training_graphs.recordings == 6  # recorded once, then replayed


@cuda
@pytest.mark.gpu
def test_replaced_recordings_free_their_graphs_and_memory(synthetic_flame_paths):
    """On a GPU, recorded anew for each point count with Python's automatic collection off (torch's
    recordings are reference cycles): only the recordings in use stay alive, and the memory allocated
    after a step stays that of one set of recordings (neither the dropped recordings' pools nor the
    warm-up streams' cuBLAS workspaces pile up)."""
    avatar = make_avatar(synthetic_flame_paths).to(torch.device("cuda"))
    graphs = avatar.training_graphs
    made, allocated = [], []
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            avatar.set_points(avatar.points.detach()[: avatar.n_points - 10])  # pruned: recorded again
            step_gradients(avatar, RecomputePolicy("off", 128), frames=2)
            made += [weakref.ref(r.replay) for r in graphs._recordings.values()
                     if not any(ref() is r.replay for ref in made)]
            avatar.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            allocated.append(torch.cuda.memory_allocated())
        alive = sum(ref() is not None for ref in made)
    finally:
        gc.enable()
    assert alive == len(graphs._recordings) and len(made) > alive, (alive, len(made))
    assert allocated[-1] <= allocated[1] * 1.1 + 2**20, allocated  # not one more pool per recording


def test_the_constants_a_step_reads_outlive_the_cameras_of_many_batches(synthetic_flame_paths, monkeypatch):
    """A recording reads the constants it was recorded with where they lie, at every replay: none of
    them may be freed while it lives. The cameras of many different batches (their own constants,
    kept for the 256 used last) never push them out of the cache."""
    from dynavatar import runtime

    read = {}
    keep = runtime._kept_constant

    def spy(values, dtype, device):
        read[(values, dtype, device)] = keep(values, dtype, device)
        return read[(values, dtype, device)]

    monkeypatch.setattr(runtime, "_kept_constant", spy)
    step_gradients(make_avatar(synthetic_flame_paths), RecomputePolicy("off", 128), frames=2)
    assert read  # FLAME's joint parents, the axis flip, ...
    monkeypatch.setattr(runtime, "_kept_constant", keep)
    for i in range(600):  # 600 batches of 8 frames whose cameras differ
        runtime.data_constant(tuple((float(i), float(j), 32.0) for j in range(8)), torch.float32, torch.device("cpu"))
    for key, tensor in read.items():
        assert runtime.constant(*key) is tensor, key
