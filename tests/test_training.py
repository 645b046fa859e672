"""Training on a tiny synthetic subject: the loss falls, the schedule is followed, resume is exact;
the point strategies and the checkpoint cadence."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dynavatar.config import default_conf, load_conf
from dynavatar.errors import CheckpointError, ConfigError
from dynavatar.experiment import checkpoints as ckpt
from dynavatar.model.build import load_avatar
from dynavatar.train import placement
from dynavatar.train.checkpointing import is_numbered
from dynavatar.train.strategy import (STRATEGIES, CoarseToFine, PointUpdate, StaticPoints, prune_and_grow,
                                      strategy_from_conf)
from dynavatar.train.strategy.coarse_to_fine import initial_radius
from dynavatar.train.trainer import Trainer, TrainOptions
from point_cloud import PointCloud
from tiny_experiment import experiment_root, rewrite_part, tiny_conf


def training_conf(data_folder: Path, exps: Path, *extra: str):
    """The tiny experiment with up to 4 frames a batch and a schedule that changes at epochs 1 and 3."""
    return tiny_conf(data_folder, exps, "dataset.test.subsample=3",
                     "train.optimize_expression=true", "train.optimize_camera=true",  # the paper's per-frame refinement
                     "train.max_points_training=400", "train.learning_rate=3e-4", "model.point_cloud.max_points=300",
                     "model.point_cloud.schedule_epochs=[1, 3]", "model.point_cloud.schedule_points=[200, 300]",
                     "model.point_cloud.radius_factors=[0.75, 0.75]", *extra)


def test_short_training_lowers_the_photometric_loss(data_folder, tmp_path):
    trainer = Trainer(training_conf(data_folder, tmp_path), TrainOptions(nepoch=6))
    first = trainer.train_epoch(0)
    for epoch in range(1, 6):
        last = trainer.train_epoch(epoch)
        if epoch == 1:
            assert trainer.avatar.n_points == 200
        if epoch == 3:
            assert trainer.avatar.n_points == 300
    # Six tiny epochs (about 50 steps) at least halve the L1 error and gain 4 dB.
    assert last["rgb_loss"] <= 0.5 * first["rgb_loss"], (first, last)
    assert last["psnr"] >= first["psnr"] + 4.0
    # x0.75 at the schedule epochs 1 and 3, and at epoch 5 (every 5 epochs after the last schedule epoch).
    initial = initial_radius(trainer.conf.model.point_cloud)
    assert float(trainer.avatar.point_radius) == pytest.approx(initial * 0.75 ** 3)


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"avatar.{k}": v for k, v in trainer.avatar.state_dict().items()}
    out.update({f"inputs.{k}": v for k, v in trainer.inputs.state_dict().items()})
    return out


def test_the_warmup_raises_the_learning_rate_at_every_step(data_folder, tmp_path):
    trainer = Trainer(training_conf(data_folder, tmp_path, "train.warmup_epochs=2"), TrainOptions(nepoch=2))
    seen, steps = [], []
    step = trainer.train_step

    def recording(batch, step_inputs):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return step(batch, step_inputs)

    trainer.train_step = recording
    for epoch in range(2):
        before = len(seen)
        trainer.train_epoch(epoch)
        steps.append(len(seen) - before)
    assert steps == [3, 6]  # 12 frames, 4 a step at 100 points, 2 at 200 (from epoch 1)
    # From 3e-4 / 6 at the first step to 3e-4 at the last step of epoch 1, in equal steps within each epoch.
    expected = [3e-4 * min(1.0, (epoch + (k + 1) / n) / 2) for epoch, n in enumerate(steps) for k in range(n)]
    assert seen == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("grow_from", ["uniform", "gradient"])
def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(data_folder, tmp_path, grow_from):
    # The points grow at epoch 1 (Adam restarts) and not after it, so that with the moments carried
    # epoch 2 goes on from the Adam state saved with the checkpoint after epoch 1. The run resumes
    # within the learning-rate warm-up (4 epochs), whose rate follows from the epoch and step. With
    # grow_from=gradient the gradient statistics of the epoch before travel with the checkpoint.
    extra = ("train.keep_optimizer_state=true", "model.point_cloud.schedule_epochs=[1]",
             "model.point_cloud.schedule_points=[200]", "model.point_cloud.radius_factors=[0.75]",
             "train.warmup_epochs=4", f"model.point_cloud.grow_from={grow_from}")
    straight = Trainer(training_conf(data_folder, tmp_path / "a", *extra), TrainOptions(nepoch=3))
    straight.run()
    first = Trainer(training_conf(data_folder, tmp_path / "b", *extra), TrainOptions(nepoch=2))
    first.run()
    resumed = Trainer(training_conf(data_folder, tmp_path / "b", *extra), TrainOptions(nepoch=3, is_continue=True))
    assert resumed.start_epoch == 2 and resumed.avatar.n_points == 200
    assert resumed.optimizer.state  # the checkpoint's moments, which epoch 2 carries on with
    resumed.run()
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4 * 3 / 4)  # still warming up at epoch 2
    assert resumed.avatar.n_points == straight.avatar.n_points == 200
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys() and "avatar.point_radius" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bitwise
    # The run really trained: parameters moved from their initial values.
    fresh = Trainer(training_conf(data_folder, tmp_path / "c"), TrainOptions(nepoch=0))
    assert not torch.allclose(fresh.avatar.points, straight.avatar.points[:100])


def test_checkpoint_layout(data_folder, tmp_path):
    conf = training_conf(data_folder, tmp_path, "train.methodname=layout")
    Trainer(conf, TrainOptions(nepoch=5)).run()
    train_dir = experiment_root(tmp_path, "layout") / "train"
    assert (train_dir / "runconf.conf").is_file()
    assert load_conf(train_dir / "runconf.conf") == conf
    for part in ckpt.PARTS:
        names = sorted(p.name for p in (train_dir / "checkpoints" / part).iterdir())
        assert names == ["5.pth", "latest.pth"], (part, names)
    assert list((train_dir / "tensorboard").iterdir())
    state = torch.load(train_dir / "checkpoints" / ckpt.MODEL / "latest.pth", weights_only=True)
    assert state["epoch"] == 5 and state["model_state_dict"]["points"].shape == (300, 3)


def test_missing_checkpoint_epoch_lists_the_existing_ones(data_folder, tmp_path):
    conf = training_conf(data_folder, tmp_path)
    Trainer(conf, TrainOptions(nepoch=1)).run()
    with pytest.raises(CheckpointError, match=r"7\.pth not found; epochs available: 1 and latest"):
        Trainer(conf, TrainOptions(nepoch=2, is_continue=True, checkpoint="7"))
    with pytest.raises(CheckpointError, match="no checkpoints found"):
        Trainer(conf, TrainOptions(nepoch=2, is_continue=True, load_path=str(tmp_path / "nowhere")))


def test_checkpoint_of_another_model_is_one_clear_error(data_folder, tmp_path):
    Trainer(training_conf(data_folder, tmp_path), TrainOptions(nepoch=1)).run()
    other = training_conf(data_folder, tmp_path, "model.deformer_network.dims=[64, 64]")
    with pytest.raises(CheckpointError, match="does not fit the model.*wrong sizes"):
        Trainer(other, TrainOptions(nepoch=2, is_continue=True))


def test_canonical_expression_is_the_training_mean_and_inputs_wait_for_their_epoch(data_folder, tmp_path):
    conf = training_conf(data_folder, tmp_path, "train.optimize_inputs_after_epoch=1")
    trainer = Trainer(conf, TrainOptions(nepoch=3))
    assert torch.allclose(trainer.avatar.canonical_expression, trainer.train_data.expressions.mean(0))
    tracked = trainer.train_data.expressions.clone()
    trainer.train_epoch(0)
    trainer.train_epoch(1)
    assert torch.equal(trainer.inputs.expression.weight.detach(), tracked)  # not stepped up to the epoch named
    trainer.train_epoch(2)
    assert not torch.equal(trainer.inputs.expression.weight.detach(), tracked)  # refined after it


def test_a_new_run_never_overwrites_an_experiment(data_folder, tmp_path):
    conf = training_conf(data_folder, tmp_path)
    Trainer(conf, TrainOptions(nepoch=1)).run()
    with pytest.raises(CheckpointError, match="already holds checkpoints.*--is_continue.*--overwrite"):
        Trainer(conf, TrainOptions(nepoch=1))
    Trainer(conf, TrainOptions(nepoch=1, overwrite=True))  # asked for explicitly


def test_an_incomplete_latest_falls_back_to_the_newest_complete_checkpoint(data_folder, tmp_path, caplog):
    conf = training_conf(data_folder, tmp_path)
    Trainer(conf, TrainOptions(nepoch=1)).run()
    checkpoints = experiment_root(tmp_path) / "train" / "checkpoints"
    latest = checkpoints / ckpt.OPTIMIZER / "latest.pth"
    part = torch.load(latest, weights_only=True)
    part["epoch"] = 0  # an older optimizer beside the newer model (a save of an earlier version, interrupted)
    rewrite_part(latest, part)
    resumed = Trainer(conf, TrainOptions(nepoch=2, is_continue=True))
    assert resumed.start_epoch == 1
    assert "incomplete" in caplog.text and "using the newest complete checkpoint instead: epoch 1" in caplog.text
    for numbered in checkpoints.glob("*/1.pth"):
        numbered.unlink()
    with pytest.raises(CheckpointError, match="incomplete.*no complete numbered checkpoint"):
        Trainer(conf, TrainOptions(nepoch=2, is_continue=True))
    latest.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="is damaged"):
        Trainer(conf, TrainOptions(nepoch=2, is_continue=True))


def test_checkpoints_of_the_earlier_layout_still_load(data_folder, tmp_path):
    """Before the point radius was a model buffer, checkpoints kept it as top-level 'radius' and
    'n_points' and inside 'strategy' (with the visibility), and numpy's RNG state as numpy arrays;
    such files resume (read with weights_only=True) and evaluate."""
    conf = training_conf(data_folder, tmp_path)
    trainer = Trainer(conf, TrainOptions(nepoch=2))
    trainer.run()
    checkpoints = experiment_root(tmp_path) / "train" / "checkpoints"
    latest = checkpoints / ckpt.MODEL / "latest.pth"
    part = torch.load(latest, weights_only=True)
    state = dict(part["model_state_dict"])
    radius = float(state.pop("point_radius"))
    name, keys, *rest = part["rng_state"]["numpy"]  # numpy's RNG state was kept as numpy's own tuple
    rng = {**part["rng_state"], "numpy": (name, keys.numpy().astype(np.uint32), *rest)}
    old = {"epoch": part["epoch"], "radius": radius, "n_points": state["points"].shape[0], "model_state_dict": state,
           "strategy": {"radius": radius, "visible": part["strategy"]["visible"]}, "rng_state": rng}
    rewrite_part(latest, old)
    resumed = Trainer(conf, TrainOptions(nepoch=3, is_continue=True))
    assert float(resumed.avatar.point_radius) == radius and resumed.start_epoch == 2
    assert torch.equal(resumed.strategy.visible, part["strategy"]["visible"])
    avatar, epoch = load_avatar(conf, checkpoints, "latest", (32, 32), torch.device("cpu"))
    assert epoch == 2 and float(avatar.point_radius) == radius
    assert torch.equal(avatar.points, state["points"])


# ---- point strategies ----------------------------------------------------------------------------


def test_train_strategy_names_the_strategy_and_an_unknown_name_is_one_clear_error(data_folder, tmp_path):
    conf = default_conf()
    assert sorted(STRATEGIES) == ["coarse_to_fine", "static"]
    assert isinstance(strategy_from_conf(conf), CoarseToFine)  # the paper's, by default
    assert isinstance(strategy_from_conf(dataclasses.replace(
        conf, train=dataclasses.replace(conf.train, strategy="static"))), StaticPoints)
    with pytest.raises(ConfigError, match=r"train.strategy = 'densify' is not a point strategy: use one of "
                                          r"coarse_to_fine, static"):
        Trainer(training_conf(data_folder, tmp_path, "train.strategy=densify"), TrainOptions(nepoch=1))


def test_coarse_to_fine_steps_every_upsample_freq_epochs_and_reports_when_the_count_is_final():
    schedule = dataclasses.replace(default_conf().model.point_cloud, n_init_points=8, schedule_epochs=(2,),
                                   schedule_points=(10,), radius_factors=(0.5,), max_points=20)
    strategy, cloud = CoarseToFine(schedule, 0.1, every=2), PointCloud(torch.randn(8, 3))
    strategy.initialize(cloud)
    generator = torch.Generator().manual_seed(0)
    assert strategy.epoch_start(cloud, 0, generator) is None and strategy.epoch_start(cloud, 1, generator) is None
    strategy.observe(torch.ones(1, 8))  # every point seen
    grown = strategy.epoch_start(cloud, 2, generator)
    assert isinstance(grown, PointUpdate) and cloud.n_points == 10 and grown.source.shape == (10,)
    assert not grown.count_final  # epoch 2 is the last growth: its restart stays
    output = SimpleNamespace(gaussians=SimpleNamespace(opacities=torch.ones(1, 10)))  # every point seen
    strategy.after_backward(cloud, output, torch.tensor(True))
    assert strategy.epoch_start(cloud, 3, generator) is None
    kept = strategy.epoch_start(cloud, 4, generator)
    assert kept == PointUpdate(None, count_final=True)  # a step that changed no point still rebuilds Adam


def _step_output(visible: torch.Tensor, pixel_gradient: torch.Tensor) -> SimpleNamespace:
    """What a training step gives the strategy: opacities [B, N] and the rasterizer's statistics,
    with `pixel_gradient` [B, N, 2] as dL/d means2d."""
    means2d = torch.zeros_like(pixel_gradient, requires_grad=True)
    means2d.grad = pixel_gradient
    return SimpleNamespace(gaussians=SimpleNamespace(opacities=visible.float()),
                           raster=SimpleNamespace(means2d=means2d, visible=visible))


@pytest.mark.parametrize("grow_from", ["uniform", "gradient"])
def test_grown_points_copy_survivors_where_the_image_is_wrong_with_grow_from_gradient(grow_from):
    """`model.point_cloud.grow_from = gradient`: every grown point copies the one survivor whose
    image-space gradient is not zero (over the frames that drew it; a skipped step counts nothing);
    `uniform` (the paper's) copies survivors at random."""
    schedule = dataclasses.replace(default_conf().model.point_cloud, n_init_points=8, schedule_epochs=(1,),
                                   schedule_points=(40,), radius_factors=(0.5,), max_points=40, grow_from=grow_from)
    strategy, cloud = CoarseToFine(schedule, 0.1), PointCloud(torch.randn(8, 3))
    strategy.initialize(cloud)
    gradient = torch.zeros(2, 8, 2)
    gradient[1, 3] = torch.tensor([3.0, 4.0])  # point 3, in the second frame
    strategy.after_backward(cloud, _step_output(torch.ones(2, 8, dtype=torch.bool), gradient), torch.tensor(True))
    skipped = torch.full((2, 8, 2), 100.0)  # a non-finite step that was not applied
    strategy.after_backward(cloud, _step_output(torch.ones(2, 8, dtype=torch.bool), skipped), torch.tensor(False))
    update = strategy.epoch_start(cloud, 1, torch.Generator().manual_seed(0))
    assert cloud.n_points == 40 and torch.equal(update.source[:8], torch.arange(8))
    copied = set(update.source[8:].tolist())
    assert copied == {3} if grow_from == "gradient" else len(copied) > 1
    if grow_from == "gradient":
        assert strategy.grow_weights().shape == (40,) and not strategy.grow_weights().any()  # afresh for the new points


def test_an_unknown_grow_from_is_one_conf_error():
    with pytest.raises(ConfigError, match=r"grow_from.*must be one of uniform, gradient, got 'loss'"):
        load_conf(Path(__file__).resolve().parents[1] / "confs" / "demo.conf", ["model.point_cloud.grow_from=loss"])


def test_grow_from_gradient_without_any_gradient_grows_as_the_paper_does():
    points, keep = torch.randn(8, 3), torch.ones(8, dtype=torch.bool)
    keep[2] = False
    uniform = prune_and_grow(points, keep, 30, 0.1, torch.Generator().manual_seed(5))
    flat = prune_and_grow(points, keep, 30, 0.1, torch.Generator().manual_seed(5), torch.zeros(8))
    assert all(torch.equal(a, b) for a, b in zip(uniform, flat))


def test_the_strategy_refuses_a_visibility_of_another_point_count(data_folder, tmp_path):
    strategy = CoarseToFine(default_conf().model.point_cloud, 0.1)
    strategy.load_state_dict({"visible": torch.ones(7, dtype=torch.bool)}, PointCloud(torch.randn(7, 3)))
    assert strategy.visible.shape == (7,)
    for state in ({"visible": torch.ones(5, dtype=torch.bool)}, {}):
        with pytest.raises(CheckpointError, match="the point visibility does not match its 7 points"):
            strategy.load_state_dict(state, PointCloud(torch.randn(7, 3)))
    # On resume the error names the checkpoint file.
    conf = training_conf(data_folder, tmp_path)
    Trainer(conf, TrainOptions(nepoch=1)).run()
    latest = experiment_root(tmp_path) / "train" / "checkpoints" / ckpt.MODEL / "latest.pth"
    part = torch.load(latest, weights_only=True)
    part["strategy"]["visible"] = part["strategy"]["visible"][:-1]
    rewrite_part(latest, part)
    expected = re.escape(f"{latest}: the point visibility does not match its 100 points")
    with pytest.raises(CheckpointError, match=expected):
        Trainer(conf, TrainOptions(nepoch=2, is_continue=True))


def test_the_static_strategy_never_edits_the_points(data_folder, tmp_path):
    conf = training_conf(data_folder, tmp_path, "train.strategy=static")  # the schedule would grow at epochs 1 and 3
    trainer = Trainer(conf, TrainOptions(nepoch=2))
    points, optimizer = trainer.avatar.points, trainer.optimizer
    initial = points.detach().clone()
    trainer.run()
    assert trainer.avatar.points is points and trainer.optimizer is optimizer  # never replaced nor rebuilt
    assert trainer.avatar.n_points == 100
    assert float(trainer.avatar.point_radius) == initial_radius(conf.model.point_cloud)
    assert not torch.equal(points.detach(), initial)  # trained all the same
    resumed = Trainer(conf, TrainOptions(nepoch=3, is_continue=True))
    assert resumed.start_epoch == 2 and torch.equal(resumed.avatar.points, points)


# ---- checkpoint cadence and image placement ------------------------------------------------------

def test_every_nth_save_and_the_last_are_numbered():
    train = default_conf().train  # numbered_save_every 5
    assert [d for d in range(1, 13) if is_numbered(d, 12, train)] == [5, 10, 12]
    every2 = dataclasses.replace(train, save_freq=2, numbered_save_every=2)
    assert [d for d in range(1, 13) if is_numbered(d, 13, every2)] == [4, 8, 12]


class PreloadedImages:
    def __init__(self, size: int) -> None:
        self.size, self.device = size, None

    def preloaded_bytes(self) -> int:
        return self.size

    def to(self, device: torch.device) -> None:
        self.device = device


def test_training_images_go_to_the_gpu_within_their_share_of_free_memory(monkeypatch):
    monkeypatch.setattr(placement.torch.cuda, "mem_get_info", lambda device: (1000, 4000))
    gpu = torch.device("cuda", 0)
    placed = {size: PreloadedImages(size) for size in (250, 251)}
    for data in placed.values():
        placement.place_training_images(data, gpu, 0.25)
    assert placed[250].device == gpu and placed[251].device is None
    never = PreloadedImages(1)
    placement.place_training_images(never, gpu, 0.0)
    on_cpu = PreloadedImages(1)
    placement.place_training_images(on_cpu, torch.device("cpu"), 1.0)
    assert never.device is None and on_cpu.device is None
