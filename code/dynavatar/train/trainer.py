"""The training runner: data, avatar, losses, optimisers, the epoch loop, checkpoints and feedback."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..config import to_hocon
from ..data.reader import FaceDataset, dataset_from_conf
from ..errors import CheckpointError, ConfigError
from ..evaluate.metrics import psnr
from ..flame import load_flame_model
from ..model.avatar import Avatar
from ..model.build import avatar_from_conf, flame_paths
from . import checkpoints as ckpt
from .frame_inputs import FrameInputs
from .losses import AvatarLoss
from .vgg import load_vgg_perceptual

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`train.device`: auto | cpu | cuda | cuda:N -> a usable torch device, or one clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device = {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"train.device = {name!r} but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s): use train.device=auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device = {name!r}: only cpu and cuda devices are supported")
    return device


def batch_size_for(train_conf: Any, n_points: int) -> int:
    """The paper's rule: min(max_points_training / n_points, max_batch), at least 1."""
    return max(1, min(int(train_conf["max_points_training"]) // n_points, int(train_conf["max_batch"])))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A generator for one epoch and purpose: data order and point growth do not depend on how
    many epochs ran in this process, so a resumed run repeats the uninterrupted one."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def batches(dataset: FaceDataset, batch_size: int, order: torch.Tensor) -> Iterator[tuple]:
    """Collated batches of `dataset` in the given order (the loader stays in this process:
    the images are small and preloaded, and workers would break bitwise resumes)."""
    for start in range(0, len(order), batch_size):
        items = [dataset[int(i)] for i in order[start:start + batch_size]]
        yield FaceDataset.collate_fn(items)


def learning_rate(base: float, milestones: list[int], factor: float, epoch: int) -> float:
    """MultiStepLR in closed form, so the rate survives optimizer rebuilds after prune/grow."""
    return base * factor ** sum(1 for m in milestones if epoch >= m)


@dataclass
class TrainOptions:
    nepoch: int = 600
    is_continue: bool = False
    checkpoint: str = ckpt.LATEST
    load_path: str | None = None
    overwrite: bool = False  # start again in a folder that already holds checkpoints


class Trainer:
    """Trains an avatar as the paper does (see METHOD.md); `run()` goes from `start_epoch` to `nepoch`."""

    def __init__(self, conf: Any, options: TrainOptions) -> None:
        self.conf = conf
        self.options = options
        train = conf.get("train")
        self.device = resolve_device(train["device"])
        self.seed = int(train["seed"])
        seed_everything(self.seed)
        self.paths = ckpt.ExperimentPaths.from_conf(conf)
        self._check_experiment_folder()
        # Files the run needs besides the data are checked before the (possibly long) image loading.
        load_flame_model(flame_paths(conf)[0])
        vgg = None
        if float(conf.get("loss.vgg_feature_weight")) > 0:
            vgg = load_vgg_perceptual(str(conf.get("loss.vgg_weights_path")) or None, device=self.device)
        self.train_data = dataset_from_conf(conf, "train")
        # Plots only: the expression statistics come from the training frames.
        self.plot_data = dataset_from_conf(conf, "test", use_mean_expression=False, use_var_expression=False)
        log.info("training on %d frames of %s, plotting %d test frames, on %s", len(self.train_data),
                 conf.get("dataset.train.sub_dir"), len(self.plot_data), self.device)

        self.avatar: Avatar = avatar_from_conf(conf, self.train_data.shape_params, self.train_data.mean_expression,
                                               self.train_data.img_res).to(self.device)
        self.loss = AvatarLoss(conf.get("loss"), train, self.train_data.var_expression, vgg, self.device)
        self.inputs = FrameInputs(self.train_data.expressions, self.train_data.flame_poses,
                                  self.train_data.world_mats, bool(train["optimize_expression"]),
                                  bool(train["optimize_camera"])).to(self.device)
        self.inputs_after_epoch = int(train["optimize_inputs_after_epoch"])
        self.upsample_freq = int(train["upsample_freq"])
        self.lr = float(train["learning_rate"])
        self.lr_milestones = [int(m) for m in train["sched_milestones"]]
        self.lr_factor = float(train["sched_factor"])
        self.optimizer = self._make_optimizer()
        self.input_optimizer = self.inputs.optimizer(float(train["learning_rate_cam"]))
        self.start_epoch = 0
        if options.is_continue:
            self._resume()
        self.writer: SummaryWriter | None = None

    def _check_experiment_folder(self) -> None:
        """A new run never overwrites an experiment's checkpoints unless asked to."""
        existing = (self.paths.checkpoints / ckpt.MODEL / f"{ckpt.LATEST}.pth").is_file()
        if existing and not self.options.is_continue and not self.options.overwrite:
            raise CheckpointError(
                f"{self.paths.train_dir} already holds checkpoints (epochs {ckpt.available_epochs(self.paths.checkpoints)}"
                f" and latest): resume with --is_continue, start again with --overwrite, or train into another "
                f"folder with train.methodname=<name>")

    # ---- optimisers ------------------------------------------------------------------------------

    def _make_optimizer(self) -> torch.optim.Adam:
        return torch.optim.Adam(self.avatar.parameters(), lr=self.lr)

    def _set_lr(self, epoch: int) -> float:
        lr = learning_rate(self.lr, self.lr_milestones, self.lr_factor, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def batch_size(self) -> int:
        return batch_size_for(self.conf.get("train"), self.avatar.n_points)

    # ---- checkpoints -----------------------------------------------------------------------------

    def save(self, epoch: int, numbered: bool) -> None:
        parts = {
            ckpt.MODEL: {"radius": self.avatar.strategy.radius, "n_points": self.avatar.n_points,
                         "model_state_dict": self.avatar.state_dict(),
                         "strategy": self.avatar.strategy.state_dict(), "rng_state": _rng_state()},
            ckpt.OPTIMIZER: {"optimizer_state_dict": self.optimizer.state_dict()},
            # The paper's layout has a scheduler part; the rate itself is recomputed in closed form
            # from the epoch on resume (`learning_rate`), so this part is informative only.
            ckpt.SCHEDULER: {"scheduler_state_dict": {"milestones": self.lr_milestones, "gamma": self.lr_factor,
                                                      "base_lr": self.lr, "last_epoch": epoch - 1}},
        }
        if self.inputs.enabled:
            parts[ckpt.OPTIMIZER_INPUTS] = {"optimizer_cam_state_dict": self.input_optimizer.state_dict()}
            parts[ckpt.INPUTS] = {"inputs_state_dict": self.inputs.state_dict()}
        ckpt.save_checkpoint(self.paths.checkpoints, epoch, parts, numbered)

    def _resume(self) -> None:
        if not self.options.load_path and not (self.paths.checkpoints / ckpt.MODEL).is_dir():
            log.warning("--is_continue: no checkpoints in %s yet; starting from scratch", self.paths.checkpoints)
            return
        source = ckpt.checkpoints_dir_of(self.options.load_path or self.paths.train_dir)
        tag = self.options.checkpoint
        names = [ckpt.MODEL, ckpt.OPTIMIZER] + ([ckpt.INPUTS, ckpt.OPTIMIZER_INPUTS] if self.inputs.enabled else [])
        parts = {name: ckpt.load_part(source, name, tag) for name in names}
        ckpt.check_same_epoch(parts, source, tag)
        model = parts[ckpt.MODEL]
        ckpt.restore_avatar(self.avatar, model, source / ckpt.MODEL / f"{tag}.pth")
        self.optimizer = self._make_optimizer()
        self._load_optimizer(self.optimizer, parts[ckpt.OPTIMIZER], "optimizer_state_dict", source)
        if self.inputs.enabled:
            ckpt.load_model_state(self.inputs, parts[ckpt.INPUTS]["inputs_state_dict"],
                                  source / ckpt.INPUTS / f"{tag}.pth")
            self._load_optimizer(self.input_optimizer, parts[ckpt.OPTIMIZER_INPUTS], "optimizer_cam_state_dict",
                                 source)
        _set_rng_state(model["rng_state"])
        self.start_epoch = int(model["epoch"])
        log.info("resumed from %s (%s): epoch %d, %d points, radius %.5f", source, tag, self.start_epoch,
                 self.avatar.n_points, self.avatar.strategy.radius)

    @staticmethod
    def _load_optimizer(optimizer: torch.optim.Optimizer, part: dict, key: str, source) -> None:
        try:
            optimizer.load_state_dict(part[key])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"the optimizer state in {source} does not fit this model ({exc}); use the "
                                  f"runconf.conf the checkpoint was trained with") from None

    # ---- one epoch -------------------------------------------------------------------------------

    def _start_epoch(self, epoch: int) -> None:
        if epoch % self.upsample_freq == 0 and epoch > 0:
            new_points = self.avatar.strategy.start_epoch(epoch, self.avatar.points,
                                                          epoch_generator(self.seed, epoch, 1))
            if new_points is not None:
                self.avatar.set_points(new_points)
            # As the paper, the optimizer is rebuilt at every prune/grow step, even when no point
            # changed: the fresh Adam state is part of the method (it also pulls a run whose
            # opacities all fell early in training back out of that state).
            self.optimizer = self._make_optimizer()
        self.loss.set_epoch(epoch)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self._start_epoch(epoch)
        lr = self._set_lr(epoch)
        step_inputs = self.inputs.enabled and epoch > self.inputs_after_epoch
        batch_size = self.batch_size()
        order = torch.randperm(len(self.train_data), generator=epoch_generator(self.seed, epoch, 0))
        n_batches = (len(order) + batch_size - 1) // batch_size
        sums: dict[str, float] = {}
        self.avatar.train()
        bar = tqdm(batches(self.train_data, batch_size, order), total=n_batches, desc=f"epoch {epoch}",
                   leave=False, dynamic_ncols=True)
        for _, model_input, ground_truth in bar:
            model_input, ground_truth = to_device(model_input, self.device), to_device(ground_truth, self.device)
            if step_inputs:
                model_input = self.inputs.apply(model_input)
            out = self.avatar(model_input["expression"], model_input["flame_pose"], model_input["world_mat"],
                              model_input["intrinsics"])
            terms = self.loss.photometric(out.rgb, ground_truth["rgb"])
            if self.loss.uses_priors:
                deformer, nearest = self.avatar.prior_query(int(self.conf.get("loss.flame_distance_chunk")))
                terms.update(self.loss.flame_prior(deformer, nearest, self.avatar.flame))
            loss = self.loss.total(terms)
            self.optimizer.zero_grad(set_to_none=True)
            if step_inputs:
                self.input_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if step_inputs:
                self.input_optimizer.step()
            self.avatar.strategy.observe(out.visible)
            values = {name: float(v.detach()) for name, v in terms.items()}
            values["loss"] = float(loss.detach())
            values["psnr"] = float(psnr(out.rgb.detach(), ground_truth["rgb"]).mean())
            for name, v in values.items():
                sums[name] = sums.get(name, 0.0) + v * len(model_input["idx"])
            bar.set_postfix(loss=f"{values['loss']:.4f}", psnr=f"{values['psnr']:.2f}", pts=self.avatar.n_points)
        stats = {name: total / len(order) for name, total in sums.items()}
        stats.update(lr=lr, n_points=self.avatar.n_points, radius=self.avatar.strategy.radius,
                     batch_size=batch_size, lbs_weight=self.loss.lbs_weight,
                     visible_fraction=float(self.avatar.strategy.visible.float().mean()))
        return stats

    # ---- test-split plots ------------------------------------------------------------------------

    @torch.no_grad()
    def plot(self, epoch: int) -> float:
        """Render the plotting frames of the test split, log them to TensorBoard; returns their mean PSNR."""
        self.avatar.eval()
        n_images = int(self.conf.get("train.plot_n_images"))
        values, shown = [], []
        order = torch.arange(len(self.plot_data))
        for _, model_input, ground_truth in batches(self.plot_data, 4, order):
            model_input, ground_truth = to_device(model_input, self.device), to_device(ground_truth, self.device)
            out = self.avatar(model_input["expression"], model_input["flame_pose"], model_input["world_mat"],
                              model_input["intrinsics"])
            values.append(psnr(out.rgb, ground_truth["rgb"]))
            for b in range(out.rgb.shape[0]):
                if len(shown) < n_images:
                    shown.append(torch.cat([ground_truth["rgb"][b], out.rgb[b]], dim=1).clamp(0, 1).cpu())
        if self.writer is not None:
            for k, image in enumerate(shown):
                self.writer.add_image(f"test/{k}", image, epoch, dataformats="HWC")
        self.avatar.train()
        return float(torch.cat([v.reshape(-1) for v in values]).mean()) if values else float("nan")

    # ---- the loop --------------------------------------------------------------------------------

    def run(self) -> bool:
        """Train until `nepoch` epochs are done; returns whether any epoch was trained (and saved)."""
        self.paths.train_dir.mkdir(parents=True, exist_ok=True)
        self.paths.runconf.write_text(to_hocon(self.conf))
        self.writer = SummaryWriter(str(self.paths.tensorboard))
        train = self.conf.get("train")
        save_freq, plot_freq = max(1, int(train["save_freq"])), max(1, int(train["plot_freq"]))
        nepoch = self.options.nepoch
        if self.start_epoch >= nepoch:
            log.info("nothing to train: checkpoint is at epoch %d, --nepoch is %d", self.start_epoch, nepoch)
        try:
            for epoch in tqdm(range(self.start_epoch, nepoch), desc="training", initial=self.start_epoch,
                              total=nepoch, dynamic_ncols=True):
                started = time.perf_counter()
                stats = self.train_epoch(epoch)
                stats["epoch_time_s"] = time.perf_counter() - started
                done = epoch + 1
                if done % save_freq == 0 or done == nepoch:
                    self.save(done, numbered=done % (5 * save_freq) == 0 or done == nepoch)
                if done % plot_freq == 0 or done == nepoch:
                    stats["test_psnr"] = self.plot(done)
                for name, value in stats.items():
                    self.writer.add_scalar(f"train/{name}", value, done)
                log.info("epoch %d: loss %.4f, train PSNR %.2f%s, %d points, %.1f s", epoch, stats["loss"],
                         stats["psnr"], f", test PSNR {stats['test_psnr']:.2f}" if "test_psnr" in stats else "",
                         self.avatar.n_points, stats["epoch_time_s"])
        finally:
            self.writer.close()
        return nepoch > self.start_epoch


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
