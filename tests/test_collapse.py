"""The first-epoch collapse (every Gaussian transparent: nothing is rendered, no gradient is left): a
collapsed run stops with one line and saves no empty avatar; the shipped recipes train on the head
models; and where the first epoch has many steps, the demo's and fast.conf's recipes collapse
without their learning-rate warm-up and train with it (docs/RECIPES.md).

The recipes run at 16-48 px for one epoch, their optimisation settings unchanged: the collapse
happens within the first epoch and depends on its number of full-rate steps (it shows from 48 px
up, not at 32 px), which `train.frames_per_epoch` sets here without a long video to render.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from dynavatar.cli import exp_runner
from dynavatar.config import Conf, default_conf, load_conf
from dynavatar.errors import TrainingCollapsedError
from dynavatar.experiment import checkpoints as ckpt
from dynavatar.flame.synthetic_head import HEAD_VARIANTS
from dynavatar.subject_generator.subject import HEAD_MODEL_DIR, generate_subject
from dynavatar.train.strategy import CoarseToFine
from dynavatar.train.trainer import Trainer, TrainOptions
from point_cloud import PointCloud
from tiny_experiment import DEMO, experiment_root, tiny_overrides

CONFS = Path(__file__).resolve().parents[1] / "confs"


# ---- a collapsed run stops ----------------------------------------------------------------------

def test_a_collapsed_run_stops_with_one_line_and_saves_no_empty_avatar(data_folder, tmp_path, capsys, monkeypatch):
    begin_epoch = Trainer.begin_epoch

    def transparent_from_epoch_1(self, epoch):  # every opacity logit at -30: nothing reaches the 1/255 cut
        begin_epoch(self, epoch)
        if epoch >= 1:
            with torch.no_grad():
                self.avatar.canonical_net.opacity_head[-1].bias.fill_(-30.0)

    monkeypatch.setattr(Trainer, "begin_epoch", transparent_from_epoch_1)
    with pytest.raises(SystemExit) as info:
        exp_runner.main(["--conf", DEMO, "--nepoch", "3", "--quiet", *tiny_overrides(
            data_folder, tmp_path, "train.save_freq=1", "train.numbered_save_every=1")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("error:") == 1
    line = err.splitlines()[-1]  # (progress bars above it)
    assert line.startswith("error: epoch 1: the avatar renders nothing") and "1/255" in line
    assert "train.warmup_epochs (now 2" in line and "train.learning_rate (now 0.001)" in line
    checkpoints = experiment_root(tmp_path) / "train" / "checkpoints"
    assert ckpt.available_epochs(checkpoints) == [1]  # epoch 0's save is kept, the empty avatar never written
    parts, _ = ckpt.load_checkpoint(checkpoints, [ckpt.MODEL])
    assert parts[ckpt.MODEL]["epoch"] == 1


def test_pruning_every_point_is_refused():
    schedule = default_conf().model.point_cloud
    strategy, cloud = CoarseToFine(schedule, 0.1), PointCloud(torch.randn(8, 3))
    strategy.initialize(cloud)
    first = cloud.points
    strategy.epoch_start(cloud, 1, torch.Generator().manual_seed(0))  # no step seen yet: nothing to prune by
    assert torch.equal(cloud.points[:8], first)
    strategy.observe(torch.full((2, cloud.n_points), 0.05))  # rendered, but never as opaque as the prune threshold
    with pytest.raises(TrainingCollapsedError, match=r"epoch 2: the avatar has become transparent .*model."
                                                     r"prune_thresh \(0.1\) in any training frame since epoch 1"):
        strategy.epoch_start(cloud, 2, torch.Generator().manual_seed(0))
    # Points replaced from outside the strategy have no visibility yet: they are all kept.
    replaced = torch.randn(5, 3)
    cloud.set_points(replaced)
    strategy.epoch_start(cloud, 2, torch.Generator().manual_seed(0))
    assert torch.equal(cloud.points[:5], replaced)


# ---- the recipes on every head model -----------------------------------------------------------

def recipe_conf(recipe: str, root: Path, subject: str, res: int, head: str, *extra: str) -> Conf:
    """A shipped recipe on a generated subject (videos a and b; a is also the test split), unchanged
    but for its data, its device and rasterizer (the CPU's), and no VGG16 term (no weights here)."""
    overrides = [f"dataset.data_folder={root}", f"dataset.subject_name={subject}", "dataset.synthetic=false",
                 "dataset.train.sub_dir=[a, b]", "dataset.test.sub_dir=[a]", f"dataset.train.img_res=[{res}, {res}]",
                 f"dataset.test.img_res=[{res}, {res}]", f"train.exps_folder={root / 'exps'}", "train.device=cpu",
                 "model.rasterizer=torch", "loss.vgg_feature_weight=0"]
    if head != "default":
        models = root / subject / HEAD_MODEL_DIR
        overrides += [f"model.flame_model_path={models}/generic_model.pkl",
                      f"model.flame_landmark_path={models}/landmark_embedding.npy"]
    return load_conf(CONFS / f"{recipe}.conf", [*overrides, *extra])


def train(conf: Conf, epochs: int) -> None:
    """`epochs` epochs of the conf's training (TrainingCollapsedError at the end of a collapsed one)."""
    trainer = Trainer(conf, TrainOptions(nepoch=epochs))
    for epoch in range(epochs):
        trainer.train_epoch(epoch)


@pytest.fixture(scope="module")
def head_subjects(tmp_path_factory):
    """A subject of 2 x 2 frames at 16 px per head model, generated when first asked for: {head: data folder}."""
    root, made = tmp_path_factory.mktemp("heads"), {}

    def subject(head: str) -> Path:
        if head not in made:
            generate_subject(root, head, res=16, frames=2, seed=1, head=None if head == "default" else head,
                             train_videos=["a", "b"], test_videos=[])
            made[head] = root
        return made[head]
    return subject


@pytest.mark.parametrize("recipe, head", [("demo", head) for head in sorted(HEAD_VARIANTS)]
                         + [("fast", "flame"), ("subject1", "flame")])
def test_every_recipe_trains_on_the_head_models(head_subjects, recipe, head):
    """A first step of the recipe on a subject of the head model renders its avatar (the demo on every
    head model, the subject recipes on FLAME's layout)."""
    train(recipe_conf(recipe, head_subjects(head), head, 16, head, "train.frames_per_epoch=0"), 1)


@pytest.fixture(scope="module")
def long_subject(tmp_path_factory):
    """The subject of the collapse: 2 x 30 frames at 48 px, FLAME's 5,023-vertex layout, seed 3. Its
    epochs are made 160 frames long (`train.frames_per_epoch`: 20 steps of 8 frames, the first epoch
    of a subject of 2 x 80 frames): with the demo's recipe at the full rate from the first step,
    every Gaussian is transparent from the 14th step on (fast.conf's: from the 12th)."""
    root = tmp_path_factory.mktemp("long")
    generate_subject(root, "long", res=48, frames=30, seed=3, head="flame", train_videos=["a", "b"], test_videos=[])
    return root


@pytest.mark.parametrize("recipe, frames_per_epoch", [("demo", 160), ("fast", 120)])
def test_a_first_epoch_of_many_steps_collapses_without_the_warmup_and_not_with_it(long_subject, recipe,
                                                                                 frames_per_epoch):
    """The recipe as shipped (warm-up 2) and with `train.warmup_epochs=0`, one epoch each. fast.conf's
    epochs are 1,000 frames (125 steps); here 120 (15 steps), past the step its collapse comes at: its
    warm-up then climbs faster than in the recipe."""
    conf = recipe_conf(recipe, long_subject, "long", 48, "flame", f"train.frames_per_epoch={frames_per_epoch}")
    assert conf.train.warmup_epochs == 2
    with pytest.raises(TrainingCollapsedError, match="epoch 0: the avatar renders nothing"):
        train(dataclasses.replace(conf, train=dataclasses.replace(conf.train, warmup_epochs=0)), 1)
    train(conf, 1)
