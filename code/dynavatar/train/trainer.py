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
from ..evaluate.metrics import psnr
from ..model.avatar import Avatar
from ..model.build import avatar_from_conf
from . import checkpoints as ckpt
from .frame_inputs import FrameInputs
from .losses import AvatarLoss

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
        self.train_data = dataset_from_conf(conf, "train")
        # Plots only: the expression statistics come from the training frames.
        self.plot_data = dataset_from_conf(conf, "test", use_mean_expression=False, use_var_expression=False)
        log.info("training on %d frames of %s, plotting %d test frames, on %s", len(self.train_data),
                 conf.get("dataset.train.sub_dir"), len(self.plot_data), self.device)

        self.avatar: Avatar = avatar_from_conf(conf, self.train_data.shape_params, self.train_data.mean_expression,
                                               self.train_data.img_res).to(self.device)
        self.loss = AvatarLoss(conf.get("loss"), train, self.train_data.var_expression, self.device)
        self.inputs = FrameInputs(self.train_data.expressions, self.train_data.flame_poses,
                                  self.train_data.world_mats, bool(train["optimize_expression"]),
                                  bool(train["optimize_camera"])).to(self.device)
        self.inputs_after_epoch = int(train["optimize_inputs_after_epoch"])
        self.lr = float(train["learning_rate"])
        self.lr_milestones = [int(m) for m in train["sched_milestones"]]
        self.lr_factor = float(train["sched_factor"])
        self.optimizer = self._make_optimizer()
        self.input_optimizer = self.inputs.optimizer(float(train["learning_rate_cam"]))
        self.start_epoch = 0
        if options.is_continue:
            self._resume()
        self.writer: SummaryWriter | None = None

    # ---- optimisers ------------------------------------------------------------------------------

    def _make_optimizer(self) -> torch.optim.Adam:
        return torch.optim.Adam(self.avatar.parameters(), lr=self.lr)

    def _set_lr(self, epoch: int) -> float:
        lr = learning_rate(self.lr, self.lr_milestones, self.lr_factor, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def batch_size(self) -> int:
        """min(max_points_training / n_points, max_batch), at least 1."""
        train = self.conf.get("train")
        return max(1, min(int(train["max_points_training"]) // self.avatar.n_points, int(train["max_batch"])))

    # ---- checkpoints -----------------------------------------------------------------------------

    def save(self, epoch: int, numbered: bool) -> None:
        parts = {
            ckpt.MODEL: {"radius": self.avatar.strategy.radius, "n_points": self.avatar.n_points,
                         "model_state_dict": self.avatar.state_dict(),
                         "strategy": self.avatar.strategy.state_dict(), "rng_state": _rng_state()},
            ckpt.OPTIMIZER: {"optimizer_state_dict": self.optimizer.state_dict()},
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
        model = ckpt.load_part(source, ckpt.MODEL, tag)
        state = model["model_state_dict"]
        self.avatar.set_points(state["points"])
        ckpt.load_model_state(self.avatar, state, source / ckpt.MODEL / f"{tag}.pth")
        self.avatar.strategy.load_state_dict(model["strategy"])
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(ckpt.load_part(source, ckpt.OPTIMIZER, tag)["optimizer_state_dict"])
        if self.inputs.enabled:
            inputs = ckpt.load_part(source, ckpt.INPUTS, tag)["inputs_state_dict"]
            ckpt.load_model_state(self.inputs, inputs, source / ckpt.INPUTS / f"{tag}.pth")
            self.input_optimizer.load_state_dict(
                ckpt.load_part(source, ckpt.OPTIMIZER_INPUTS, tag)["optimizer_cam_state_dict"])
        _set_rng_state(model["rng_state"])
        self.start_epoch = int(model["epoch"])
        log.info("resumed from %s (%s): epoch %d, %d points, radius %.5f", source, tag, self.start_epoch,
                 self.avatar.n_points, self.avatar.strategy.radius)

    # ---- one epoch -------------------------------------------------------------------------------

    def _start_epoch(self, epoch: int) -> None:
        new_points = self.avatar.strategy.start_epoch(epoch, self.avatar.points, epoch_generator(self.seed, epoch, 1))
        if new_points is not None:
            self.avatar.set_points(new_points)
            self.optimizer = self._make_optimizer()  # the paper rebuilds it after each prune/grow
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
                deformer, nearest = self.avatar.prior_query()
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
        self.writer.flush()
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
