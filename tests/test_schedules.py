"""The paper's numbers that steer training: learning rate, FLAME-prior weight, batch size, priors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dynavatar.config import load_conf
from dynavatar.flame import FLAME
from dynavatar.model.networks import DeformerOutput
from dynavatar.losses import AvatarLoss
from dynavatar.runtime import flush_denormals_on_cpu, resolve_device
from dynavatar.errors import ConfigError
from dynavatar.data.batch import frames_per_step
from dynavatar.train.schedule import learning_rate_at, warmup_factor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def conf():
    return load_conf(REPO / "confs" / "subject1.conf", ["loss.vgg_feature_weight=0"])


def test_learning_rate_halves_at_80_and_100(conf):
    assert [learning_rate_at(conf.train, e) for e in (0, 79, 80, 99, 100, 500)] == pytest.approx([1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 2.5e-5])


def test_the_warmup_rises_linearly_step_by_step_then_leaves_the_schedule_alone(conf):
    # 2 epochs of 4 steps: 1/8, 2/8, ... 8/8 of the rate, then the rate itself.
    assert [warmup_factor(2, e, s, 4) for e in (0, 1, 2) for s in range(4)] == pytest.approx(
        [1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1, 1, 1, 1, 1])
    assert warmup_factor(0, 0, 0, 20) == 1.0  # no warm-up: the full rate from the first step (the paper)
    warm = dataclasses.replace(conf.train, warmup_epochs=3, sched_milestones=(1, 80))  # a milestone inside it
    assert learning_rate_at(warm, 0, 0, 10) == pytest.approx(1e-4 / 30)
    assert learning_rate_at(warm, 1, 4, 10) == pytest.approx(0.5e-4 * 15 / 30)  # the halving applies as well
    assert learning_rate_at(warm, 2) == pytest.approx(0.5e-4)  # no step given: the epoch's last step
    assert learning_rate_at(warm, 3, 0, 10) == pytest.approx(0.5e-4)  # after it, the schedule alone


def test_lbs_weight_halves_at_20_30_50_70(conf):
    loss = AvatarLoss(conf.loss, None, None, torch.device("cpu"))
    weights = []
    for epoch in (0, 19, 20, 30, 49, 50, 70, 300):
        loss.set_epoch(epoch)
        weights.append(loss.lbs_weight)
    assert weights == [10, 10, 5, 2.5, 2.5, 1.25, 0.625, 0.625]


def test_vgg_term_is_never_silently_dropped():
    paper = load_conf(REPO / "confs" / "subject1.conf")  # vgg_feature_weight 0.1
    with pytest.raises(ValueError, match="VGG"):
        AvatarLoss(paper.loss, None, None, torch.device("cpu"))


def test_batch_size_rule(conf):
    # max_points_training 102400, max_batch 8
    assert [frames_per_step(conf.train, n) for n in (400, 12800, 20000, 40000, 100000, 200000)] == [8, 8, 5, 2, 1, 1]


def flame_own_outputs(flame: FLAME, nearest: torch.Tensor) -> DeformerOutput:
    """Deformer outputs equal to FLAME's at each point's nearest vertex (a ghost-bone weight of 0)."""
    n = nearest.shape[0]
    return DeformerOutput(flame.shapedirs[nearest], flame.posedirs[nearest],
                          torch.cat([torch.zeros(n, 1), flame.lbs_weights[nearest]], dim=1), torch.zeros(n, 3))


def test_prior_weights_and_targets(conf, synthetic_flame_paths):
    flame = FLAME(*synthetic_flame_paths)
    loss = AvatarLoss(conf.loss, torch.full((50,), 2.0), None, torch.device("cpu"))
    nearest = torch.tensor([0, 5, 100])
    exact = flame_own_outputs(flame, nearest)
    terms = loss.flame_prior(exact, nearest, flame)
    assert all(v.item() == pytest.approx(0.0, abs=1e-12) for v in terms.values())  # FLAME's own values: no penalty
    off = DeformerOutput(exact.shapedirs + 0.01, exact.posedirs + 0.02, exact.lbs_weights, exact.offset)
    terms = loss.flame_prior(off, nearest, flame)
    assert terms["posedirs_loss"].item() == pytest.approx((10 * 0.02) ** 2)
    assert terms["shapedirs_loss"].item() == pytest.approx((10 * 0.01) ** 2 / (2.0 * 50))  # / (var x 50)
    total = loss.total({"rgb_loss": torch.tensor(0.0), **terms})
    assert total.item() == pytest.approx(10 * 10 * (terms["posedirs_loss"] + terms["shapedirs_loss"]).item())
    # A ghost-bone weight is pulled towards 0 and skinning errors weigh lbs_weight x 0.1.
    ghost = DeformerOutput(exact.shapedirs, exact.posedirs,
                           torch.tensor([[1.0, 0, 0, 0, 0, 0]]).expand(3, 6), exact.offset)
    lbs = loss.flame_prior(ghost, nearest, flame)["lbs_loss"]
    assert lbs.item() > 0 and loss.total({"lbs_loss": lbs}).item() == pytest.approx(lbs.item() * 10 * 0.1)


def test_fast_conf_weighs_every_expression_component_alike_where_the_paper_divides_by_its_variance(
        conf, synthetic_flame_paths):
    """subject1.conf divides each blendshape component's error by 50 x its variance over the training
    frames; fast.conf hands the prior no variance, so a component the video moves much is held as
    firmly as one it never moves."""
    fast = load_conf(REPO / "confs" / "fast.conf", ["loss.vgg_feature_weight=0"])
    assert conf.dataset.use_var_expression and not fast.dataset.use_var_expression
    flame = FLAME(*synthetic_flame_paths)
    nearest = torch.tensor([0, 5, 100])
    exact = flame_own_outputs(flame, nearest)
    moved = exact.shapedirs.clone()
    moved[:, :, 0] += 0.01  # only the first component is off
    off = DeformerOutput(moved, exact.posedirs, exact.lbs_weights, exact.offset)
    variance = torch.full((50,), 0.01)
    variance[0] = 4.0  # the first component varies most over the training frames
    divided = AvatarLoss(conf.loss, variance, None, torch.device("cpu")).flame_prior(off, nearest, flame)
    undivided = AvatarLoss(fast.loss, None, None, torch.device("cpu")).flame_prior(off, nearest, flame)
    share = 1 / 50  # one component of 50 is off
    assert undivided["shapedirs_loss"].item() == pytest.approx((10 * 0.01) ** 2 * share)
    assert divided["shapedirs_loss"].item() == pytest.approx((10 * 0.01) ** 2 * share / (4.0 * 50))


def test_zero_expression_variance_does_not_divide_by_zero(conf, synthetic_flame_paths):
    flame = FLAME(*synthetic_flame_paths)
    loss = AvatarLoss(conf.loss, torch.zeros(50), None, torch.device("cpu"))
    nearest = torch.tensor([0, 1])
    out = DeformerOutput(flame.shapedirs[nearest] + 0.01, flame.posedirs[nearest],
                         torch.full((2, 6), 1 / 6), torch.zeros(2, 3))
    assert torch.isfinite(loss.flame_prior(out, nearest, flame)["shapedirs_loss"])


def test_every_term_of_a_step_comes_from_its_output_and_the_mask_term_only_with_a_weight(conf, synthetic_flame_paths):
    flame = FLAME(*synthetic_flame_paths)
    generator = torch.Generator().manual_seed(0)
    rgb, gt = torch.rand(2, 4, 4, 3, generator=generator), torch.rand(2, 4, 4, 3, generator=generator)
    alpha, mask = torch.rand(2, 4, 4, generator=generator), (torch.rand(2, 4, 4, generator=generator) > 0.5).float()
    nearest = torch.tensor([0, 5])
    prior = SimpleNamespace(deformer=DeformerOutput(flame.shapedirs[nearest] + 0.01, flame.posedirs[nearest],
                                                    torch.full((2, 6), 1 / 6), torch.zeros(2, 3)), nearest=nearest)
    out = SimpleNamespace(rgb=rgb, alpha=alpha, prior=prior, prior_terms={})
    batch = SimpleNamespace(rgb=gt, mask=mask)
    plain = AvatarLoss(conf.loss, None, None, torch.device("cpu"))
    terms = plain.terms(out, batch, flame)
    assert list(terms) == ["rgb_loss", "ssim_loss", "lbs_loss", "posedirs_loss",
                           "shapedirs_loss"]  # the paper's: no mask term
    assert list(plain.terms(out, batch)) == ["rgb_loss", "ssim_loss"]  # no FLAME, no priors
    # the priors' terms as a training step computes them (inside its recording): taken as they are
    in_step = plain.prior_terms(flame)(prior.deformer, nearest)
    step_out = SimpleNamespace(rgb=rgb, alpha=alpha, prior=None, prior_terms=dict(zip(plain.prior_terms(flame).names,
                                                                                      in_step)))
    assert plain.terms(step_out, batch) == terms
    masked = load_conf(REPO / "confs" / "subject1.conf", ["loss.vgg_feature_weight=0", "loss.mask_weight=0.5"])
    loss = AvatarLoss(masked.loss, None, None, torch.device("cpu"))
    terms = loss.terms(out, batch, flame)
    assert terms["mask_loss"].item() == pytest.approx((alpha - mask).abs().mean().item())
    assert loss.total({"mask_loss": terms["mask_loss"]}).item() == pytest.approx(0.5 * terms["mask_loss"].item())
    assert "mask_loss" not in loss.terms(out, SimpleNamespace(rgb=gt, mask=None), flame)  # data without masks


def test_opacity_term_pushes_each_opacity_toward_0_or_1():
    """`loss.opacity_weight`: the mean o (1 - o) of the rendered opacities, in the terms only with a
    weight above 0; its gradient lowers an opacity below 1/2 and raises one above it."""
    opacities = torch.tensor([[0.1, 0.3, 0.7, 0.95]], requires_grad=True)  # [B, N]
    out = SimpleNamespace(rgb=torch.zeros(1, 2, 2, 3), alpha=torch.zeros(1, 2, 2), prior=None, prior_terms={},
                          gaussians=SimpleNamespace(opacities=opacities))
    batch = SimpleNamespace(rgb=torch.zeros(1, 2, 2, 3), mask=None)
    conf = load_conf(REPO / "confs" / "subject1.conf", ["loss.vgg_feature_weight=0", "loss.opacity_weight=0.5"])
    loss = AvatarLoss(conf.loss, None, None, torch.device("cpu"))
    terms = loss.terms(out, batch)
    want = (0.1 * 0.9 + 0.3 * 0.7 + 0.7 * 0.3 + 0.95 * 0.05) / 4
    assert terms["opacity_loss"].item() == pytest.approx(want)
    loss.total({"opacity_loss": terms["opacity_loss"]}).backward()
    step = -opacities.grad[0]  # gradient descent's direction
    assert step[0] < 0 and step[1] < 0 and step[2] > 0 and step[3] > 0
    assert opacities.grad[0].tolist() == pytest.approx([0.5 * (1 - 2 * o) / 4 for o in (0.1, 0.3, 0.7, 0.95)])
    off = load_conf(REPO / "confs" / "subject1.conf", ["loss.vgg_feature_weight=0"])
    assert "opacity_loss" not in AvatarLoss(off.loss, None, None, torch.device("cpu")).terms(out, batch)
    with pytest.raises(ConfigError, match="opacity_weight"):
        load_conf(REPO / "confs" / "subject1.conf", ["loss.opacity_weight=-1"])


def test_device_errors_are_clear():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")


def test_cpu_runs_flush_denormal_floats():
    """A denormal (below 1.2e-38 in float32) becomes zero once a CPU run has set the flag."""
    try:
        torch.set_flush_denormal(False)  # earlier tests' CPU runs may have set it
        tiny = torch.tensor([1e-39], dtype=torch.float32)
        assert float(tiny * 1.0) > 0.0
        flush_denormals_on_cpu(torch.device("cpu"))
        assert float(tiny * 1.0) == 0.0
    finally:
        torch.set_flush_denormal(True)  # the state every CPU training run leaves behind
