"""The weights' moving average (`train.weight_average_epochs`): its update, how it follows the point
strategy's edits, what checkpoints hold (the average for evaluation, the live weights for a resume)
and that a resumed run goes on bitwise as the uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dynavatar.experiment import checkpoints as ckpt
from dynavatar.model.build import load_avatar
from dynavatar.train.checkpointing import LIVE_PARAMETERS
from dynavatar.train.trainer import Trainer, TrainOptions
from dynavatar.train.weight_average import WeightAverage, decay_for
from tiny_experiment import experiment_root, tiny_conf


class Points(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.points = nn.Parameter(torch.arange(n * 3, dtype=torch.float32).view(n, 3))
        self.net = nn.Linear(3, 2)


def test_the_average_follows_the_live_weights_by_the_decay():
    model = Points(4)
    average = WeightAverage(model)
    start = model.points.detach().clone()
    with torch.no_grad():
        model.points.add_(1.0)
    average.update(model, decay=0.75)
    assert torch.allclose(average.average["points"], start + 0.25)
    assert torch.equal(average.state_dict(model)["points"], average.average["points"])
    assert torch.equal(average.state_dict(model)["net.weight"], model.net.weight)  # not moved: its own average
    assert decay_for(5, 20) == pytest.approx(0.99) and decay_for(0.01, 3) == 0.0


def test_an_edit_of_the_points_keeps_each_copys_lag():
    model = Points(3)
    average = WeightAverage(model)
    average.average["points"] += torch.tensor([[0.1], [0.2], [0.3]])  # lags of 0.1, 0.2, 0.3 per point
    average.average["net.weight"] += 0.5
    before = average.lag(model)
    source = torch.tensor([2, 0, 0, 1])  # point 1 pruned... then grown back as copies, with new values
    model.points = nn.Parameter(model.points.detach()[source] + 10.0)
    average.follow_edit(model, before, source)
    assert torch.allclose(average.average["points"] - model.points, torch.tensor([[0.3], [0.1], [0.1], [0.2]]).expand(4, 3))
    assert torch.allclose(average.average["net.weight"], model.net.weight + 0.5)  # the same tensor: its lag kept
    # Without a source, a replaced tensor of another shape starts at its live value.
    before = average.lag(model)
    model.points = nn.Parameter(torch.zeros(2, 3))
    average.follow_edit(model, before, None)
    assert torch.equal(average.average["points"], model.points.detach())


def _parameters(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.avatar.named_parameters()}


def test_checkpoints_hold_the_average_and_a_resume_goes_on_bitwise(data_folder, tmp_path):
    extra = ("train.weight_average_epochs=1.5", "train.keep_optimizer_state=true")
    straight = Trainer(tiny_conf(data_folder, tmp_path / "a", *extra), TrainOptions(nepoch=3))
    straight.run()
    first = Trainer(tiny_conf(data_folder, tmp_path / "b", *extra), TrainOptions(nepoch=2))
    first.run()
    resumed = Trainer(tiny_conf(data_folder, tmp_path / "b", *extra), TrainOptions(nepoch=3, is_continue=True))
    assert resumed.start_epoch == 2
    resumed.run()
    live, again = _parameters(straight), _parameters(resumed)
    for name in live:
        assert torch.equal(live[name], again[name]), name
        assert torch.equal(straight.average.average[name], resumed.average.average[name]), name

    checkpoints = experiment_root(tmp_path / "a") / "train" / "checkpoints"
    model = torch.load(checkpoints / ckpt.MODEL / "latest.pth", weights_only=False)
    for name, value in live.items():
        assert torch.equal(model[LIVE_PARAMETERS][name], value), name
        assert torch.equal(model["model_state_dict"][name], straight.average.average[name]), name
    assert not torch.equal(model["model_state_dict"]["points"], live["points"])  # an average, not the live points
    # Evaluation and export load the average.
    avatar, _ = load_avatar(tiny_conf(data_folder, tmp_path / "a", *extra), checkpoints)
    assert torch.equal(avatar.points.detach(), straight.average.average["points"])


def test_without_the_average_checkpoints_are_as_before(data_folder, tmp_path):
    trainer = Trainer(tiny_conf(data_folder, tmp_path, "train.weight_average_epochs=0"), TrainOptions(nepoch=1))
    trainer.run()
    assert trainer.average is None
    model = torch.load(experiment_root(tmp_path) / "train" / "checkpoints" / ckpt.MODEL / "latest.pth", weights_only=False)
    assert LIVE_PARAMETERS not in model
    assert torch.equal(model["model_state_dict"]["points"], trainer.avatar.points.detach())
