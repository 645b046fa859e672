"""The avatar's deformation path, its networks' initial state, and the point schedule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from dynavatar.config import default_conf, load_conf
from dynavatar.data.batch import FrameBatch
from dynavatar.errors import ConfigError
from dynavatar.flame import FLAME
from dynavatar.model import avatar as avatar_module, networks, precision as precision_module
from dynavatar.model import recompute as recompute_module
from dynavatar.model.avatar import Avatar
from dynavatar.model.linear import Linear, Softplus, fused_linear, linear
from dynavatar.model.networks import CanonicalNetwork, DeformerNetwork, DeformerOutput, GaussianNetwork, heads_together
from dynavatar.model.recompute import RecomputePolicy, activation_bytes, activation_floats, free_memory
from dynavatar.train.strategy import CoarseToFine, prune_and_grow
from dynavatar.train.strategy.coarse_to_fine import initial_radius, noise_size, radius_factor_at, target_points
from point_cloud import PointCloud

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def make_avatar(paths, *overrides: str) -> Avatar:
    """An avatar of the paper's conf (400 points) on the synthetic FLAME model, its deformer's last
    layers moved off zero so that every output depends on the weights."""
    conf = load_conf(REPO / "confs" / "subject1.conf", list(overrides))
    shape = torch.randn(100, generator=torch.Generator().manual_seed(1))
    flame = FLAME(*paths, shape_params=shape)
    expression = torch.randn(50, generator=torch.Generator().manual_seed(2)) * 0.5
    avatar = Avatar(conf.model, flame, shape, expression, 0.4, (32, 32), nearest_chunk=128)
    with torch.no_grad():
        for layer in (avatar.deformer.blendshapes, avatar.deformer.skinning):
            layer.weight.normal_(0.0, 0.05)
    return avatar


@pytest.fixture(scope="module")
def avatar(synthetic_flame_paths):
    return make_avatar(synthetic_flame_paths)


class FlameDeformer(torch.nn.Module):
    """Stands in for the deformer network: FLAME's own blendshapes, correctives and weights (ghost 0)
    for points that are the canonical FLAME vertices, and no offset."""

    def __init__(self, flame: FLAME) -> None:
        super().__init__()
        self.flame, self.num_exp, self.ghostbone = flame, flame.n_exp, True

    def forward(self, points: torch.Tensor) -> DeformerOutput:
        weights = torch.cat([torch.zeros(points.shape[0], 1), self.flame.lbs_weights], dim=1)
        return DeformerOutput(self.flame.shapedirs, self.flame.posedirs, weights, torch.zeros_like(points))


def test_points_at_canonical_flame_vertices_land_on_the_frames_mesh(avatar):
    canonical_vertices, _, _ = avatar.canonical_flame()
    network = avatar.deformer
    try:
        avatar.deformer = FlameDeformer(avatar.flame)
        avatar.set_points(canonical_vertices)
        gen = torch.Generator().manual_seed(4)
        expression = torch.randn(3, 50, generator=gen)
        pose = (torch.rand(3, 15, generator=gen) - 0.5) * 0.6
        gaussians, _ = avatar.deform(expression, pose)
        mesh = avatar.flame(expression, pose).vertices
        assert (gaussians.means - mesh).abs().max().item() <= 1e-4
        assert (mesh - canonical_vertices).abs().max().item() > 0.05  # the frames really differ
    finally:
        avatar.deformer = network


def test_canonical_frame_is_the_jaw_opened_mean_expression(avatar):
    vertices, feature, transforms = avatar.canonical_flame()
    assert transforms.shape == (1, 6, 4, 4)  # ghost bone + 5 FLAME joints
    assert torch.allclose(transforms[0, 0], torch.eye(4))
    assert avatar.canonical_pose[6].item() == pytest.approx(0.4)
    expected = avatar.flame(avatar.canonical_expression[None], avatar.canonical_pose[None]).vertices[0]
    assert torch.allclose(vertices, expected)


def test_deformer_starts_with_no_blendshapes_and_uniform_weights():
    deformer = DeformerNetwork()
    out = deformer(torch.randn(50, 3))
    assert out.shapedirs.abs().max() == 0 and out.posedirs.abs().max() == 0 and out.offset.abs().max() == 0
    assert torch.allclose(out.lbs_weights, torch.full((50, 6), 1 / 6))
    assert out.shapedirs.shape == (50, 3, 50) and out.posedirs.shape == (50, 36, 3)


def test_products_apart_give_the_sliced_products_values_and_gradients(synthetic_flame_paths, monkeypatch):
    """The GPU's form, run here: the deformer's bases from products of their own (the correctives
    coordinate-major, every basis contiguous) and its rows for the priors from a call of their own
    give the values and gradients of one product sliced and one call on both."""
    torch.manual_seed(0)
    avatar = make_avatar(synthetic_flame_paths)
    with torch.no_grad():
        avatar.deformer.blendshapes.bias.normal_(0.0, 0.05)  # a bias in the wrong place shows
    points = torch.randn(40, 3) * 0.1
    sliced, sliced_grads = avatar.deformer(points), step_gradients(avatar, RecomputePolicy("off", 128))
    monkeypatch.setattr(networks, "products_apart", lambda device: True)
    monkeypatch.setattr(avatar_module, "products_apart", lambda device: True)
    apart, apart_grads = avatar.deformer(points), step_gradients(avatar, RecomputePolicy("off", 128))
    for a, b in zip(_fields(apart), _fields(sliced)):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    assert apart.posedirs.transpose(1, 2).is_contiguous() and apart.shapedirs.is_contiguous()
    assert apart_grads.keys() == sliced_grads.keys() and "points" in sliced_grads
    for name, grad in sliced_grads.items():
        assert (apart_grads[name] - grad).norm() <= 1e-5 * grad.norm().clamp_min(1e-12), name


def _fields(out) -> list[torch.Tensor]:
    return [getattr(out, f.name) for f in dataclasses.fields(out)]


@pytest.mark.parametrize("rows", [(7,), (2, 5)], ids=["2d", "3d"])
def test_the_linear_layer_is_torchs_with_its_bias_gradient_as_a_product(rows):
    torch.manual_seed(0)
    ours = Linear(4, 3).double()
    torch.manual_seed(0)
    torchs = torch.nn.Linear(4, 3).double()
    assert torch.equal(ours.weight, torchs.weight) and ours.state_dict().keys() == torchs.state_dict().keys()
    x = torch.randn(*rows, 4, dtype=torch.float64, requires_grad=True)
    assert torch.equal(ours(x), torchs(x))  # on the CPU, torch's own layer
    weights = (x, torchs.weight, torchs.bias)
    for relu in (False, True):  # the GPU's function, run here: torch's values and gradients
        ours_y = fused_linear(*weights, relu=relu)
        torchs_y = torch.nn.functional.linear(*weights)
        torchs_y = torch.relu(torchs_y) if relu else torchs_y
        assert (torchs_y == 0).any() == relu and torch.allclose(ours_y, torchs_y, rtol=1e-12, atol=1e-12)
        # weighted, so that the ReLU's gradient mask shows in every input's gradient
        target = torch.linspace(-1, 2, ours_y.numel(), dtype=torch.float64).reshape(ours_y.shape)
        grads = [torch.autograd.grad((y * target).sum(), weights) for y in (ours_y, torchs_y)]
        for a, b in zip(*grads):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_the_softplus_keeps_its_inputs_type_under_autocast():
    x = torch.linspace(-0.05, 0.05, 101).reshape(1, -1)
    assert torch.equal(Softplus(beta=100)(x), torch.nn.Softplus(beta=100)(x))  # outside autocast, torch's own
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = Softplus(beta=100)(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, torch.nn.functional.softplus(x.bfloat16(), beta=100))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_the_linear_layer_under_autocast_computes_autocasts_product_in_its_type(relu):
    """Under autocast on a GPU the layer's output (and so the next layer's input) is autocast's type;
    values and gradients are those of autocast's own linear layer, to bfloat16's rounding."""
    generator = torch.Generator().manual_seed(0)
    leaves = [(torch.randn(*shape, generator=generator) * scale).cuda().requires_grad_()
              for shape, scale in (((3000, 64), 1.0), ((48, 64), 0.2), ((48,), 0.2))]
    target = torch.randn(3000, 48, generator=generator).cuda()
    results = []
    for ours in (True, False):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if ours:
                y = linear(*leaves, relu=relu)
            else:
                y = torch.nn.functional.linear(*leaves)
                y = torch.relu(y) if relu else y
        assert y.dtype == torch.bfloat16
        results.append((y.float(), torch.autograd.grad((y.float() * target).sum(), leaves)))
    (ours_y, ours_grads), (torchs_y, torchs_grads) = results
    assert (ours_y == 0).any() == relu
    assert (ours_y - torchs_y).abs().max() <= 0.02 * torchs_y.abs().max()
    for name, a, b in zip(("x", "weight", "bias"), ours_grads, torchs_grads):
        assert a.dtype == torch.float32, name  # the leaves' own type
        assert (a - b).norm() <= 0.02 * b.norm(), name


@pytest.mark.parametrize("network", [CanonicalNetwork, GaussianNetwork])
def test_the_heads_run_together_compute_each_heads_output(network):
    """The heads' first layers stacked into one product (and the Gaussian network's last layers into
    one block-diagonal product) give each head's own outputs and gradients."""
    torch.manual_seed(0)
    net = network().double()
    heads = [m for m in net.children() if isinstance(m, torch.nn.Sequential)]
    assert len(heads) == 4
    with torch.no_grad():  # biases off zero, so that a bias in the wrong place shows
        for head in heads:
            for layer in head:
                if isinstance(layer, torch.nn.Linear):
                    layer.bias.normal_()
    features = torch.randn(2, 9, heads[0][0].in_features, dtype=torch.float64, requires_grad=True)
    params = [features] + [p for head in heads for p in head.parameters()]
    together, apart = heads_together(features, heads), [head(features) for head in heads]
    target = [torch.randn(out.shape, dtype=torch.float64) for out in apart]
    grads = [torch.autograd.grad(sum((o * t).sum() for o, t in zip(outs, target)), params)
             for outs in (together, apart)]
    for a, b in zip(together, apart):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_canonical_network_features_vary_across_points():
    torch.manual_seed(0)  # the spread depends on the initialisation: not on what earlier tests drew
    net = CanonicalNetwork()
    points = torch.nn.functional.normalize(torch.randn(200, 3), dim=1) * 0.5
    attrs = net(points)
    assert attrs.color.shape == (200, 3) and attrs.rotation.shape == (200, 4) and attrs.opacity.shape == (200, 1)
    # The reference's SDF-style init of the last trunk layer leaves about 1e-4 of spread (a dead softplus).
    assert attrs.color.std(0).min() > 1e-3


def test_activations_and_shapes(avatar):
    gaussians, shifted = avatar.deform(torch.zeros(2, 50), torch.zeros(2, 15))
    n = avatar.n_points
    assert gaussians.means.shape == (2, n, 3) and shifted.shape == (n, 3)
    assert torch.allclose(gaussians.quats.norm(dim=-1), torch.ones(2, n), atol=1e-5)
    assert (gaussians.scales >= avatar.point_radius).all()
    assert (gaussians.scales <= avatar.point_radius + avatar.max_scale).all()
    assert ((gaussians.opacities > 0) & (gaussians.opacities < 1)).all()


def frame_batch(frames: int) -> FrameBatch:
    """Frames at the zero pose seen as the synthetic subject's camera sees it (IMavatar conventions)."""
    world = torch.eye(4)[:3].expand(frames, 3, 4).clone()
    world[:, 2, 3] = -4.0
    intrinsics = torch.tensor([[-3.0, 3.0, 0.5, 0.5]]).expand(frames, 4).clone()
    return FrameBatch(torch.arange(frames), list(range(frames)), ["v"] * frames, torch.zeros(frames, 50),
                      torch.zeros(frames, 15), world, intrinsics)


def test_forward_keeps_the_rasterizers_statistics(avatar):
    out = avatar(frame_batch(2))
    n = avatar.n_points
    assert out.rgb.shape == (2, 32, 32, 3)
    assert out.raster.means2d.shape == (2, n, 2) and out.raster.radii.shape == (2, n)
    assert torch.equal(out.raster.visible, out.raster.radii > 0) and bool(out.raster.visible.any())
    out.rgb.sum().backward()  # the hook of a gradient-driven densification: dL/d(pixel position) per frame
    assert out.raster.means2d.grad.shape == (2, n, 2) and float(out.raster.means2d.grad.abs().sum()) > 0
    avatar.zero_grad(set_to_none=True)


# ---- the canonical cache ---------------------------------------------------------------------------

def count_canonical_runs(avatar: Avatar) -> list:
    """Appends to the returned list each time the canonical network starts to run (a pre-hook: a
    recomputation may stop before the end once it has what the backward pass needs)."""
    runs: list = []
    avatar.canonical_net.register_forward_pre_hook(lambda *args: runs.append(1))
    return runs


def test_a_frozen_avatar_computes_its_canonical_state_once(synthetic_flame_paths):
    avatar = make_avatar(synthetic_flame_paths)
    runs = count_canonical_runs(avatar)
    with torch.no_grad():  # evaluation, animation
        first = avatar.canonical_state()
        avatar.deform(torch.zeros(2, 50), torch.zeros(2, 15))
        avatar(frame_batch(1))
        assert avatar.canonical_state() is first and len(runs) == 1
    for p in avatar.parameters():  # fitting test-frame inputs: gradients on, every parameter frozen
        p.requires_grad_(False)
    assert avatar.canonical_state() is first and len(runs) == 1
    for p in avatar.parameters():
        p.requires_grad_(True)
    avatar.canonical_state()  # training: computed at every call, never kept ...
    avatar.canonical_state()
    assert len(runs) == 3
    with torch.no_grad():  # ... and the kept one is dropped (an optimizer step may follow)
        again = avatar.canonical_state()
    assert again is not first and len(runs) == 4 and torch.equal(again.unposed, first.unposed)


CHANGES = {
    "load_state_dict": lambda avatar, other: avatar.load_state_dict(other.state_dict()),
    "set_points": lambda avatar, other: avatar.set_points(other.points),
    "set_point_radius": lambda avatar, other: avatar.set_point_radius(0.5 * float(avatar.point_radius)),
    "to_float64": lambda avatar, other: avatar.to(torch.float64),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_stale_canonical_state_is_never_served(synthetic_flame_paths, change):
    avatar, other = make_avatar(synthetic_flame_paths), make_avatar(synthetic_flame_paths)
    with torch.no_grad():
        other.points.mul_(0.9)  # other points and (freshly drawn) other weights
        before = avatar.canonical_state()
        avatar.canonical_flame()
    runs = count_canonical_runs(avatar)
    CHANGES[change](avatar, other)
    with torch.no_grad():
        served = avatar.canonical_state()
        dtype = avatar.points.dtype
        gaussians, _ = avatar.deform(torch.zeros(1, 50, dtype=dtype), torch.zeros(1, 15, dtype=dtype))
    assert len(runs) == 1  # computed again, once
    fresh = avatar.canonical_state()  # the training path: computed from the avatar as it is now
    # The same operations on the same inputs; the CPU's matrix products may still round the last bit
    # differently from one allocation to the next, where a stale state would differ far more.
    for name in ("shifted", "unposed"):
        assert getattr(served, name).dtype == dtype
        assert torch.allclose(getattr(served, name), getattr(fresh, name).detach(), rtol=0, atol=1e-12), name
    assert torch.allclose(served.logits.color, fresh.logits.color.detach(), rtol=0, atol=1e-12)
    assert (gaussians.scales >= avatar.point_radius.to(gaussians.scales.dtype)).all()
    if change in ("load_state_dict", "set_points"):
        assert not torch.allclose(served.unposed, before.unposed)
    elif change == "set_point_radius":
        assert torch.equal(served.unposed, before.unposed)  # the same numbers, computed again
    else:
        assert served.unposed.dtype == torch.float64 and avatar.canonical_flame()[0].dtype == torch.float64
        assert avatar.canonical_normals().dtype == torch.float64


# ---- activation recomputation ----------------------------------------------------------------------

def test_the_activation_estimate_counts_each_linear_layers_input_and_output():
    # gaussian network: trunk 3-64-64-64 and four heads 64-64-k (k = 3, 4, 1, 3)
    trunk = (3 + 64) + (64 + 64) + (64 + 64)
    heads = sum((64 + 64) + (64 + k) for k in (3, 4, 1, 3))
    assert activation_floats(GaussianNetwork()) == trunk + heads
    canonical, deformer, gaussian = CanonicalNetwork(), DeformerNetwork(), GaussianNetwork()
    per_point = activation_floats(canonical) + 2 * activation_floats(deformer) + 4 * activation_floats(gaussian)
    assert activation_bytes(1000, 4, True, canonical, deformer, gaussian, 4) == 1000 * 4 * 2 * per_point
    assert (activation_bytes(1000, 4, False, canonical, deformer, gaussian, 4)
            < activation_bytes(1000, 4, True, canonical, deformer, gaussian, 4)
            < activation_bytes(1000, 8, True, canonical, deformer, gaussian, 4))


def test_auto_recomputes_only_when_the_estimate_does_not_fit_in_the_free_memory():
    estimate = 10 ** 9
    assert RecomputePolicy("auto", 20_000, probe=lambda device: estimate // 10).decide(estimate, CPU, 100)
    assert not RecomputePolicy("auto", 20_000, probe=lambda device: estimate * 10).decide(estimate, CPU, 100)
    unknown = RecomputePolicy("auto", 20_000, probe=lambda device: None)  # unreadable: above one chunk
    assert unknown.decide(estimate, CPU, 20_001) and not unknown.decide(estimate, CPU, 20_000)


def test_auto_reads_the_free_memory_again_only_when_the_step_changes_size():
    readings = []

    def probe(device):
        readings.append(device)
        return 10 ** 6 if len(readings) < 3 else 10 ** 12  # plenty of memory from the third reading on
    policy = RecomputePolicy("auto", 20_000, probe)
    assert all(policy.decide(10 ** 9, CPU, 50_000) for _ in range(5)) and len(readings) == 1
    assert policy.decide(2 * 10 ** 9, CPU, 100_000) and len(readings) == 2  # more points: read again
    assert not policy.decide(10 ** 9, CPU, 50_000) and len(readings) == 3  # back: read again, it fits now


def test_on_and_off_do_not_ask_for_the_free_memory():
    def probe(device):
        raise AssertionError("on and off must not read the free memory")
    assert RecomputePolicy("on", 10, probe).decide(1, CPU, 1)
    assert not RecomputePolicy("off", 10, probe).decide(10 ** 15, CPU, 10 ** 6)
    with pytest.raises(ValueError, match="auto, on, off"):
        RecomputePolicy("sometimes", 10)
    with pytest.raises(ConfigError, match="model.recompute"):
        load_conf(REPO / "confs" / "subject1.conf", ["model.recompute=sometimes"])
    with pytest.raises(ConfigError, match="model.recompute_chunk"):
        load_conf(REPO / "confs" / "subject1.conf", ["model.recompute_chunk=0"])


def test_the_free_memory_of_the_cpu_is_read_from_meminfo(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683584 kB\nMemFree:  2000 kB\nMemAvailable:    1024 kB\n")
    monkeypatch.setattr(recompute_module, "MEMINFO", meminfo)
    assert free_memory(CPU) == 1024 * 1024


def training_runs(avatar: Avatar, policy: RecomputePolicy, frames: int = 2) -> int:
    """How often the canonical network runs in one training step (forward and backward)."""
    avatar.recompute = policy
    runs: list = []
    hook = avatar.canonical_net.register_forward_pre_hook(lambda *args: runs.append(1))
    out = avatar(frame_batch(frames), with_prior=True)
    (out.rgb.mean() + out.prior.deformer.lbs_weights.square().mean()).backward()
    avatar.zero_grad(set_to_none=True)
    hook.remove()
    return len(runs)


def test_the_avatar_recomputes_as_the_policy_decides(synthetic_flame_paths):
    avatar = make_avatar(synthetic_flame_paths)  # 400 points: four chunks of 128
    tiny, huge = (lambda device: 1), (lambda device: 1 << 60)
    assert training_runs(avatar, RecomputePolicy("auto", 128, tiny)) == 8  # four chunks, run again backward
    assert training_runs(avatar, RecomputePolicy("auto", 128, huge)) == 1
    assert training_runs(avatar, RecomputePolicy("on", 128, huge)) == 8
    assert training_runs(avatar, RecomputePolicy("off", 128, tiny)) == 1
    avatar.recompute = RecomputePolicy("on", 128, tiny)
    runs = count_canonical_runs(avatar)
    with torch.no_grad():  # nothing to recompute without a backward pass
        avatar(frame_batch(1))
    assert len(runs) == 1


def step_gradients(avatar: Avatar, policy: RecomputePolicy, frames: int = 3,
                   refine_inputs: bool = False, prior_terms=None) -> dict[str, torch.Tensor]:
    """The parameters' gradients of a step's loss; with `refine_inputs`, also the frames' expression
    and pose gradients (as per-frame input refinement takes them). The loss's prior part is computed
    from what the priors compare, or with `prior_terms` (the losses' `FlamePrior`) as training does,
    inside the step."""
    avatar.recompute = policy
    gen = torch.Generator().manual_seed(4)
    expression, pose = torch.randn(frames, 50, generator=gen), (torch.rand(frames, 15, generator=gen) - 0.5) * 0.6
    expression = expression.to(avatar.points.device).requires_grad_(refine_inputs)
    pose = pose.to(avatar.points.device).requires_grad_(refine_inputs)
    if prior_terms is None:
        g, prior = avatar.posed(expression, pose, with_prior=True)
        prior_loss = prior.deformer.lbs_weights.square().sum() + prior.deformer.shapedirs.square().sum()
    else:
        g, _, terms = avatar._posed(expression, pose, False, None, prior_terms)
        prior_loss = sum(terms.values())
    loss = (g.means.square().sum() + g.scales.sum() + g.colors.square().sum() + g.quats[..., 1].sum()
            + g.opacities.sum() + prior_loss)
    avatar.zero_grad(set_to_none=True)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in avatar.named_parameters() if p.grad is not None}
    if refine_inputs:
        grads.update(expression=expression.grad, flame_pose=pose.grad)
    return grads


def test_recomputed_gradients_equal_kept_ones(synthetic_flame_paths):
    avatar = make_avatar(synthetic_flame_paths)
    kept = step_gradients(avatar, RecomputePolicy("off", 128))
    chunked = step_gradients(avatar, RecomputePolicy("on", 128))  # four chunks
    whole = step_gradients(avatar, RecomputePolicy("on", 20_000))  # one chunk
    assert kept.keys() == chunked.keys() == whole.keys() and "points" in kept and len(kept) > 20
    for name, grad in kept.items():
        error = (chunked[name] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert error <= 1e-5, (name, float(error))
        # One chunk repeats the same operations on the same inputs: on the CPU the very same numbers
        # (so whatever `auto` decides, a run of at most recompute_chunk points is unchanged).
        assert torch.equal(whole[name], grad), name


def test_bfloat16_networks_give_float32_outputs_close_to_float32(synthetic_flame_paths, monkeypatch):
    # model.network_precision=bfloat16: the networks' products in bfloat16, everything after them in
    # float32; gradients reach the same parameters and point the same way. (Any CPU computes it; one
    # without bfloat16 instructions only slowly, so the bfloat16 path is forced here.)
    monkeypatch.setitem(precision_module._has_bfloat16, ("cpu", None), True)
    torch.manual_seed(0)  # the same initial networks for both
    exact = step_gradients(make_avatar(synthetic_flame_paths), RecomputePolicy("off", 128))
    torch.manual_seed(0)
    fast_avatar = make_avatar(synthetic_flame_paths, "model.network_precision=bfloat16")
    state = fast_avatar.canonical_state(with_prior=True, frames=1)
    assert all(t.dtype == torch.float32 for t in (state.logits.color, state.deformer.shapedirs, state.unposed))
    fast = step_gradients(fast_avatar, RecomputePolicy("on", 128))
    assert fast.keys() == exact.keys() and "points" in fast
    differs = False
    for name, grad in exact.items():
        error = float((fast[name] - grad).norm() / grad.norm().clamp_min(1e-12))
        assert error <= 0.05, (name, error)
        differs |= error > 1e-4
    assert differs  # the bfloat16 arithmetic was really used


@pytest.mark.parametrize("capability, native", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_bfloat16_networks_fall_back_to_float32_on_a_card_without_bfloat16(monkeypatch, caplog, capability, native):
    """A T4 (7.5) has no bfloat16 arithmetic: the networks run in float32 there, with one warning naming
    the card; Ampere (8.0) and later run bfloat16."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Tesla T4")
    monkeypatch.setattr(precision_module, "_has_bfloat16", {})  # nothing known of any device yet
    with caplog.at_level("WARNING", logger=precision_module.__name__):
        assert precision_module.has_bfloat16("cuda", 0) is native
        assert precision_module.has_bfloat16("cuda", 0) is native
    warnings = [r.getMessage() for r in caplog.records if r.name == precision_module.__name__]
    assert len(warnings) == (0 if native else 1)
    assert native or ("Tesla T4 (compute capability 7.5)" in warnings[0] and "float32" in warnings[0])
    # What the answer does to a network (the CPU standing in for the card): float32 exactly where there
    # is no bfloat16, bfloat16's rounding where there is.
    torch.manual_seed(0)
    net, x = CanonicalNetwork(), torch.randn(64, 3)
    precision_module._has_bfloat16[("cpu", None)] = native
    out = precision_module.NetworkPrecision("bfloat16")(net, x)
    assert torch.equal(out.color, net(x).color) != native and out.color.dtype == torch.float32


@pytest.mark.parametrize("instructions", [False, True])
def test_bfloat16_networks_fall_back_to_float32_on_a_cpu_without_bfloat16(monkeypatch, caplog, instructions):
    """A CPU without bfloat16 instructions (an x86 without AVX-512, by oneDNN's test) would convert every
    operand: the networks run in float32 there, with one warning; one with them runs bfloat16."""
    monkeypatch.setattr(precision_module, "cpu_bfloat16_instructions", lambda: instructions)
    monkeypatch.setattr(precision_module, "_has_bfloat16", {})
    with caplog.at_level("WARNING", logger=precision_module.__name__):
        assert precision_module.has_bfloat16("cpu", None) is instructions
        assert precision_module.has_bfloat16("cpu", None) is instructions
        expected = torch.bfloat16 if instructions else None
        assert precision_module.NetworkPrecision("bfloat16").dtype_on(torch.device("cpu")) is expected
    warnings = [r.getMessage() for r in caplog.records if r.name == precision_module.__name__]
    assert len(warnings) == (0 if instructions else 1)
    assert instructions or ("CPU has no bfloat16 instructions" in warnings[0] and "float32" in warnings[0])


def test_an_unknown_network_precision_is_one_conf_error():
    with pytest.raises(ConfigError, match="network_precision"):
        load_conf(REPO / "confs" / "subject1.conf", ["model.network_precision=float16"])


@pytest.mark.parametrize("network_input", ["posed", "nonrigid"])
def test_the_gaussian_network_sees_the_head_turn_only_with_its_posed_input(synthetic_flame_paths, network_input):
    """model.gaussian_network.input: "posed" (the paper's x_t - x') changes a Gaussian's colour when
    only the head turns; "nonrigid" gives the same colours, scales and opacities for any head pose,
    and still follows the expression."""
    torch.manual_seed(0)
    avatar = make_avatar(synthetic_flame_paths, f"model.gaussian_network.input={network_input}")
    with torch.no_grad():
        for layer in avatar.gaussian_net.layers:  # off the initial near-zero offsets: every input counts
            layer.weight.normal_(0.0, 0.5)
        expression = torch.randn(1, 50, generator=torch.Generator().manual_seed(3)).expand(3, 50).clone()
        expression[2] *= 2.0
        pose = torch.zeros(3, 15)
        pose[1:, 1] = 0.4  # frames 1 and 2: the head turned (global yaw)
        gaussians, _ = avatar.deform(expression, pose)
    def change(attribute: str, a: int, b: int) -> float:  # relative to the attribute's size
        values = getattr(gaussians, attribute)
        return float((values[a] - values[b]).abs().max() / values.abs().max())

    for attribute in ("colors", "scales", "opacities"):
        turned = change(attribute, 1, 0)  # float rounding apart, none when the network does not see the turn
        assert turned > 1e-3 if network_input == "posed" else turned < 1e-6, (attribute, turned)
    assert change("colors", 2, 1) > 1e-3  # the expression still counts


def test_an_unknown_gaussian_network_input_is_one_conf_error():
    with pytest.raises(ConfigError, match="input"):
        load_conf(REPO / "confs" / "subject1.conf", ["model.gaussian_network.input=view"])


class TestSchedule:
    def test_paper_targets_and_radius(self):
        s = default_conf().model.point_cloud
        targets = {e: target_points(s, e) for e in (0, 4, 5, 9, 10, 15, 20, 25, 30, 39, 40, 50, 60, 200)}
        assert targets == {0: 400, 4: 400, 5: 800, 9: 800, 10: 1600, 15: 3200, 20: 6400, 25: 10000,
                           30: 20000, 39: 20000, 40: 40000, 50: 80000, 60: 100000, 200: 100000}
        assert initial_radius(s) == pytest.approx(0.15 * 0.75 ** 2)
        assert [radius_factor_at(s, e) for e in (5, 6, 40, 60, 61, 65, 70)] == [0.75, 1.0, 0.75, 0.9, 1.0, 0.75, 0.75]
        assert noise_size(s, 100, 0.01) == 0.01 and noise_size(s, 101, 0.01) == pytest.approx(0.004)

    def test_prune_and_grow(self):
        gen = torch.Generator().manual_seed(0)
        points = torch.randn(10, 3)
        keep = torch.tensor([True, False] * 5)
        new, source = prune_and_grow(points, keep, 12, 0.1, gen)
        assert new.shape == (12, 3) and source.shape == (12,)
        assert torch.equal(new[:5], points[keep]) and torch.equal(source[:5], torch.tensor([0, 2, 4, 6, 8]))
        assert keep[source].all()  # every new point copies a survivor
        # Each grown point is a survivor plus noise within [-0.05, 0.05].
        offsets = (new[5:, None] - points[keep][None]).abs().amax(-1).min(1).values
        assert (offsets <= 0.05 + 1e-6).all()

    def test_strategy_prunes_invisible_and_shrinks_radius(self):
        schedule = dataclasses.replace(default_conf().model.point_cloud, n_init_points=8, schedule_epochs=(1, 2),
                                       schedule_points=(12, 16), radius_factors=(0.5, 0.5), max_points=14)
        cloud = PointCloud(torch.randn(8, 3), 0.0)
        strategy = CoarseToFine(schedule, 0.1)
        strategy.initialize(cloud)
        assert float(cloud.point_radius) == initial_radius(schedule)
        strategy.observe(torch.tensor([[0.5] * 6 + [0.05] * 2]))  # two points below the prune threshold
        strategy.epoch_start(cloud, 1, torch.Generator().manual_seed(0))
        assert cloud.points.shape == (12, 3)
        assert float(cloud.point_radius) == pytest.approx(initial_radius(schedule) / 2)
        strategy.observe(torch.ones(2, 12))
        strategy.epoch_start(cloud, 2, torch.Generator().manual_seed(0))
        assert cloud.points.shape == (14, 3)  # capped by max_points
        strategy.observe(torch.ones(1, 14))
        before = cloud.points
        strategy.epoch_start(cloud, 3, torch.Generator().manual_seed(0))
        assert cloud.points is before  # nothing to prune or grow: the point set is kept


def test_the_smoothness_term_measures_the_deformer_over_small_displacements(synthetic_flame_paths):
    """loss.smoothness_weight: the deformer's outputs at sampled points against those a jitter away.
    It grows with the jitter, is 0 without one, reaches the deformer's weights and never the points,
    and enters the total with its weight."""
    from dynavatar.losses import AvatarLoss

    avatar = make_avatar(synthetic_flame_paths)

    def term(jitter: float, points: int = 256) -> torch.Tensor:
        conf = load_conf(REPO / "confs" / "subject1.conf", [
            "loss.vgg_feature_weight=0", "loss.smoothness_weight=5", f"loss.smoothness_jitter={jitter}",
            f"loss.smoothness_points={points}"])
        torch.manual_seed(0)
        loss = AvatarLoss(conf.loss, None, None, torch.device("cpu"))
        return loss.smoothness(avatar)["smoothness_loss"], loss

    near, far = term(1e-4)[0], term(0.05)[0]
    assert 0 < float(near.detach()) < 1e-3 * float(far.detach())
    all_points, loss = term(0.05, points=10_000)  # more than there are: every point once
    avatar.zero_grad(set_to_none=True)
    loss.total({"smoothness_loss": all_points}).backward()
    assert avatar.points.grad is None
    assert all(p.grad is not None for p in avatar.deformer.parameters())
    assert float(loss.total({"smoothness_loss": all_points.detach()})) == pytest.approx(5 * float(all_points.detach()))
    with pytest.raises(ConfigError, match="smoothness_jitter"):
        load_conf(REPO / "confs" / "subject1.conf", ["loss.smoothness_jitter=0"])


def test_point_color_size_weighs_only_the_colour_offsets(synthetic_flame_paths):
    """`loss.point_color_weight`: the per-Gaussian colour offsets' mean squared size, added by
    `regularisers` only with a weight above 0, its gradient on the offsets alone; a conf that weighs
    offsets its avatar lacks stops with one line naming both keys."""
    from dynavatar.losses import AvatarLoss, check_loss_conf

    avatar = make_avatar(synthetic_flame_paths, "model.point_colors=true")
    with torch.no_grad():
        avatar.point_color.copy_(torch.randn(avatar.point_color.shape, generator=torch.Generator().manual_seed(3)))
    conf = load_conf(REPO / "confs" / "subject1.conf", ["loss.vgg_feature_weight=0", "model.point_colors=true",
                                                        "loss.point_color_weight=2"])
    check_loss_conf(conf)
    loss = AvatarLoss(conf.loss, None, None, torch.device("cpu"))
    terms = loss.regularisers(avatar)
    assert set(terms) == {"point_color_loss"}
    want = avatar.point_color.detach().square().sum(-1).mean()
    assert torch.allclose(terms["point_color_loss"], want)
    avatar.zero_grad(set_to_none=True)
    loss.total(terms).backward()
    assert torch.allclose(avatar.point_color.grad, 2 * 2 * avatar.point_color.detach() / avatar.n_points)
    assert all(p.grad is None for name, p in avatar.named_parameters() if name != "point_color")

    off = load_conf(REPO / "confs" / "subject1.conf", ["loss.vgg_feature_weight=0"])
    assert AvatarLoss(off.loss, None, None, torch.device("cpu")).regularisers(avatar) == {}
    lacking = load_conf(REPO / "confs" / "subject1.conf", ["loss.point_color_weight=1"])
    with pytest.raises(ConfigError, match="model.point_colors=true.*loss.point_color_weight=0"):
        check_loss_conf(lacking)
