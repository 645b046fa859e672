"""The training runner: data, avatar, losses, optimisers, the epoch loop, checkpoints and feedback."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..config import Conf, to_hocon
from ..data.batch import FrameBatch, batches
from ..data.reader import FaceDataset, dataset_from_conf
from ..errors import CheckpointError
from ..experiment import ExperimentPaths
from ..experiment import checkpoints as ckpt
from ..flame import load_flame_model
from ..losses import AvatarLoss, load_vgg_perceptual
from ..metrics import psnr
from ..model.avatar import Avatar
from ..model.build import avatar_from_conf, flame_paths, restore_avatar
from ..model.frame_inputs import FrameInputs
from ..runtime import (epoch_generator, flush_denormals_on_cpu, resolve_device, rng_state, seed_everything,
                       set_rng_state)
from .guard import NonFiniteGuard, check_finite_parameters
from .optimizer_state import carry_adam_state
from .strategy import CoarseToFine

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    nepoch: int = 600
    is_continue: bool = False
    checkpoint: str = ckpt.LATEST
    load_path: str | None = None
    overwrite: bool = False  # start again in a folder that already holds checkpoints


class Trainer:
    """Trains an avatar as the paper does (see docs/METHOD.md); `run()` goes from `start_epoch` to `nepoch`.

    The trainer owns the optimisers and the coarse-to-fine strategy; the avatar holds only what
    rendering needs.
    """

    def __init__(self, conf: Conf, options: TrainOptions) -> None:
        self.conf = conf
        self.options = options
        train = conf.train
        self.device = resolve_device(train.device)
        if self.device.type == "cuda":
            # The fastest convolution algorithms for this run's fixed image sizes (SSIM, VGG) are
            # chosen once; TF32 matrix products only when the conf asks for them.
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = train.tf32
        flush_denormals_on_cpu(self.device)
        self.seed = train.seed
        seed_everything(self.seed)
        self.paths = ExperimentPaths.from_conf(conf)
        self._check_experiment_folder()
        # Files the run needs besides the data are checked before the (possibly long) image loading.
        load_flame_model(flame_paths(conf)[0])
        vgg = None
        if conf.loss.vgg_feature_weight > 0:
            vgg = load_vgg_perceptual(conf.loss.vgg_weights_path or None, device=self.device)
        self.train_data = dataset_from_conf(conf, "train")
        self._place_images(self.train_data)
        # Plots only: the expression statistics come from the training frames.
        self.plot_data = dataset_from_conf(conf, "test", use_mean_expression=False, use_var_expression=False)
        # Every frame's files, of both splits, are checked now, not when a batch or the final
        # evaluation (which reads every test frame) first needs them.
        self.train_data.check_headers()
        dataset_from_conf(conf, "test", is_eval=True, load_images=False).check_headers()
        log.info("training on %d frames of %s, plotting %d test frames, on %s", len(self.train_data),
                 list(conf.dataset.train.sub_dir), len(self.plot_data), self.device)

        self.avatar: Avatar = avatar_from_conf(conf, self.train_data.shape_params, self.train_data.mean_expression,
                                               self.train_data.img_res).to(self.device)
        self.strategy = CoarseToFine(conf.model.point_cloud, conf.model.prune_thresh, self.avatar.n_points,
                                     self.device)
        self.loss = AvatarLoss(conf.loss, train, self.train_data.var_expression, vgg, self.device)
        self.inputs = FrameInputs(self.train_data.expressions, self.train_data.flame_poses,
                                  self.train_data.world_mats, train.optimize_expression, train.optimize_camera,
                                  train.refine_camera_translation).to(self.device)
        self.optimizer = self._make_optimizer()
        self.input_optimizer = self.inputs.optimizer(train.learning_rate_cam)
        self.guard = NonFiniteGuard(train.max_nonfinite_steps, self.device)
        self.start_epoch = 0
        if options.is_continue:
            self._resume()
        elif options.overwrite:
            self._move_old_experiment_aside()
        self.writer: SummaryWriter | None = None

    def _check_experiment_folder(self) -> None:
        """A new run never overwrites an experiment's checkpoints unless asked to."""
        if self.options.is_continue or self.options.overwrite:
            return
        if ckpt.has_checkpoint(self.paths.checkpoints):
            raise CheckpointError(
                f"{self.paths.train_dir} already holds checkpoints (epochs {ckpt.available_epochs(self.paths.checkpoints)}"
                f" and latest): resume with --is_continue, start again with --overwrite, or train into another "
                f"folder with train.methodname=<name>")

    def _move_old_experiment_aside(self) -> None:
        """--overwrite: the whole old experiment (checkpoints, eval/, TensorBoard files) moves to a dated
        sibling folder once the new run is ready to start and before it writes anything, so that
        nothing of the two runs is ever mixed and nothing of the old one is lost."""
        root = self.paths.root
        if not root.exists():
            return
        name = f"{root.name}.replaced-{datetime.now():%Y%m%d-%H%M%S}"
        aside, n = root.with_name(name), 1
        while aside.exists():
            aside, n = root.with_name(f"{name}-{n}"), n + 1
        root.rename(aside)
        log.warning("--overwrite: the earlier experiment %s was moved aside, whole, to %s", root, aside)

    def _place_images(self, data: FaceDataset) -> None:
        """Preloaded training images go to the GPU when they take at most a quarter of its free
        memory: batches are then gathered and composited there, with no copy per step."""
        size = data.preloaded_bytes()
        if self.device.type != "cuda" or size == 0:
            return
        free, _ = torch.cuda.mem_get_info(self.device)
        if size <= free // 4:
            data.to(self.device)
            log.info("training images on %s (%.2f GiB)", self.device, size / 2 ** 30)
        else:
            log.info("training images stay in host memory (%.2f GiB, %.2f GiB free on %s)", size / 2 ** 30,
                     free / 2 ** 30, self.device)

    # ---- optimisers ------------------------------------------------------------------------------

    def _make_optimizer(self) -> torch.optim.Adam:
        # The fused CUDA kernel updates every parameter in one launch (same update rule).
        fused = self.device.type == "cuda"
        return torch.optim.Adam(self.avatar.parameters(), lr=self.conf.train.learning_rate, fused=fused)

    def _set_lr(self, epoch: int) -> float:
        lr = self.conf.train.learning_rate_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def batch_size(self) -> int:
        return self.conf.train.batch_size(self.avatar.n_points)

    # ---- checkpoints -----------------------------------------------------------------------------

    def save(self, epoch: int, numbered: bool) -> None:
        train = self.conf.train
        parts = {
            ckpt.MODEL: {"model_state_dict": self.avatar.state_dict(), "strategy": self.strategy.state_dict(),
                         "rng_state": rng_state()},
            ckpt.OPTIMIZER: {"optimizer_state_dict": self.optimizer.state_dict()},
            # The paper's layout has a scheduler part; the rate itself is recomputed in closed form
            # from the epoch on resume (`TrainConf.learning_rate_at`), so this part is informative only.
            ckpt.SCHEDULER: {"scheduler_state_dict": {"milestones": list(train.sched_milestones),
                                                      "gamma": train.sched_factor, "base_lr": train.learning_rate,
                                                      "last_epoch": epoch - 1}},
        }
        if self.inputs.enabled:
            parts[ckpt.OPTIMIZER_INPUTS] = {"optimizer_cam_state_dict": self.input_optimizer.state_dict()}
            parts[ckpt.INPUTS] = {"inputs_state_dict": self.inputs.state_dict()}
        ckpt.save_checkpoint(self.paths.checkpoints, epoch, parts, numbered)

    def _resume(self) -> None:
        if not self.options.load_path and not ckpt.has_checkpoint(self.paths.checkpoints):
            log.warning("--is_continue: no checkpoints in %s yet; starting from scratch", self.paths.checkpoints)
            return
        source = ckpt.checkpoints_dir_of(self.options.load_path or self.paths.train_dir)
        names = [ckpt.MODEL, ckpt.OPTIMIZER] + ([ckpt.INPUTS, ckpt.OPTIMIZER_INPUTS] if self.inputs.enabled else [])
        parts, tag = ckpt.load_checkpoint(source, names, self.options.checkpoint)
        model = parts[ckpt.MODEL]
        model_file = source / ckpt.MODEL / f"{tag}.pth"
        upgraded = restore_avatar(self.avatar, model, model_file)
        visible = model.get("strategy", {}).get("visible")
        if not isinstance(visible, torch.Tensor) or visible.shape != (self.avatar.n_points,):
            raise CheckpointError(f"{model_file}: the point visibility does not match its {self.avatar.n_points} "
                                  f"points")
        self.strategy.load_state_dict(model["strategy"])
        self.optimizer = self._make_optimizer()
        if upgraded:  # the network changed shape: its Adam state starts afresh (as at every prune/grow)
            log.warning("%s: model of an earlier version; its optimizer state is not reused", model_file)
        else:
            self._load_optimizer(self.optimizer, parts[ckpt.OPTIMIZER], "optimizer_state_dict", source)
        if self.inputs.enabled:
            ckpt.load_model_state(self.inputs, parts[ckpt.INPUTS]["inputs_state_dict"],
                                  source / ckpt.INPUTS / f"{tag}.pth")
            self._load_optimizer(self.input_optimizer, parts[ckpt.OPTIMIZER_INPUTS], "optimizer_cam_state_dict",
                                 source)
        set_rng_state(model["rng_state"])
        self.start_epoch = int(model["epoch"])
        log.info("resumed from %s (%s): epoch %d, %d points, radius %.5f", source, tag, self.start_epoch,
                 self.avatar.n_points, float(self.avatar.point_radius))

    @staticmethod
    def _load_optimizer(optimizer: torch.optim.Optimizer, part: dict, key: str, source) -> None:
        try:
            optimizer.load_state_dict(part[key])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"the optimizer state in {source} does not fit this model ({exc}); use the "
                                  f"runconf.conf the checkpoint was trained with") from None

    # ---- one epoch -------------------------------------------------------------------------------

    def _start_epoch(self, epoch: int) -> None:
        if epoch % self.conf.train.prune_grow_every == 0 and epoch > 0:
            source = self.strategy.start_epoch(self.avatar, epoch, epoch_generator(self.seed, epoch, 1))
            # As the paper, the optimizer is rebuilt at every prune/grow step, even when no point
            # changed: the fresh Adam state is part of the method (it also pulls a run whose
            # opacities all fell early in training back out of that state). With
            # `train.keep_optimizer_state` the moments are carried over once the point count has
            # reached its last target (train/optimizer_state.py); while it grows, restarts stay.
            fresh = self._make_optimizer()
            if self.conf.train.keep_optimizer_state and epoch > self.conf.model.point_cloud.last_growth_epoch:
                fresh = carry_adam_state(self.optimizer, fresh, source)
            self.optimizer = fresh
        self.loss.set_epoch(epoch)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The frames of an epoch, in order: a permutation of the training set, or with
        `train.frames_per_epoch` that many frames from consecutive permutations (so long and short
        videos take the same number of steps per epoch). Depends on the seed and epoch only."""
        frames, wanted = len(self.train_data), self.conf.train.frames_per_epoch
        generator = epoch_generator(self.seed, epoch, 0)
        if wanted == 0:
            return torch.randperm(frames, generator=generator)
        rounds = -(-wanted // frames)
        return torch.cat([torch.randperm(frames, generator=generator) for _ in range(rounds)])[:wanted]

    def train_step(self, batch: FrameBatch, step_inputs: bool) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch. Returns the loss terms, the total and the batch's mean
        PSNR as 0-dim device tensors: nothing here waits for the device."""
        if step_inputs:
            batch = self.inputs.apply(batch)
        out = self.avatar(batch, with_prior=self.loss.uses_priors, prior_chunk=self.conf.loss.flame_distance_chunk)
        terms = self.loss.photometric(out.rgb, batch.rgb)
        if out.prior is not None:
            terms.update(self.loss.flame_prior(out.prior.deformer, out.prior.nearest, self.avatar.flame))
        loss = self.loss.total(terms)
        self.optimizer.zero_grad(set_to_none=True)
        if step_inputs:
            self.input_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # A non-finite loss or gradient is never applied (see train/guard.py).
        finite = self.guard.step(loss, [self.optimizer] + ([self.input_optimizer] if step_inputs else []))
        self.strategy.observe(out.gaussians.opacities)
        values = {name: v.detach() for name, v in terms.items()}
        values["loss"] = loss.detach()
        values["psnr"] = psnr(out.rgb.detach(), batch.rgb).mean()
        values["finite"] = finite
        return values

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self._start_epoch(epoch)
        lr = self._set_lr(epoch)
        step_inputs = self.inputs.enabled and epoch > self.conf.train.optimize_inputs_after_epoch
        batch_size = self.batch_size()
        order = self.epoch_order(epoch)
        n_batches = (len(order) + batch_size - 1) // batch_size
        sums: dict[str, torch.Tensor] = {}
        counted = torch.zeros((), dtype=torch.float64, device=self.device)  # frames of the finite steps
        self.guard.start_epoch()
        self.avatar.train()
        bar = tqdm(batches(self.train_data, batch_size, order), total=n_batches, desc=f"epoch {epoch}",
                   leave=False, dynamic_ncols=True)
        shown = time.perf_counter()
        for batch in bar:
            values = self.train_step(batch.to(self.device), step_inputs)
            finite = values.pop("finite")
            counted += finite * len(batch)
            for name, v in values.items():  # the means are over finite steps: a skipped one poisons nothing
                sums[name] = sums.get(name, 0.0) + torch.where(finite, v.double(), 0.0) * len(batch)
            throttled = time.perf_counter() - shown > 1.0  # reading a value waits for the device: once a second
            if throttled or self.device.type != "cuda":  # (the CPU waits for nothing: checked at every step)
                self.guard.check(epoch, lr)
            if throttled:
                shown = time.perf_counter()
                bar.set_postfix(loss=f"{float(values['loss']):.4f}", psnr=f"{float(values['psnr']):.2f}",
                                pts=self.avatar.n_points)
        self.guard.check(epoch, lr)
        check_finite_parameters({**{f"avatar.{k}": p for k, p in self.avatar.named_parameters()},
                                 **{f"inputs.{k}": p for k, p in self.inputs.named_parameters()}}, epoch, lr)
        frames = float(counted)
        stats = {name: float(total) / frames if frames else float("nan") for name, total in sums.items()}
        skipped = int(self.guard.skipped)
        if skipped:
            log.warning("epoch %d: %d step(s) with a non-finite loss or gradient were skipped", epoch, skipped)
        stats.update(lr=lr, n_points=self.avatar.n_points, radius=float(self.avatar.point_radius),
                     skipped_steps=skipped, batch_size=batch_size, lbs_weight=self.loss.lbs_weight,
                     visible_fraction=float(self.strategy.visible.float().mean()))
        return stats

    # ---- test-split plots ------------------------------------------------------------------------

    @torch.no_grad()
    def plot(self, epoch: int) -> float:
        """Render the plotting frames of the test split, log them to TensorBoard; returns their mean PSNR."""
        self.avatar.eval()
        n_images = self.conf.train.plot_n_images
        values, shown = [], []
        for batch in batches(self.plot_data, 4, torch.arange(len(self.plot_data))):
            batch = batch.to(self.device)
            out = self.avatar(batch)
            values.append(psnr(out.rgb, batch.rgb))
            for b in range(out.rgb.shape[0]):
                if len(shown) < n_images:
                    shown.append(torch.cat([batch.rgb[b], out.rgb[b]], dim=1).clamp(0, 1).cpu())
        if self.writer is not None:
            for k, image in enumerate(shown):
                self.writer.add_image(f"test/{k}", image, epoch, dataformats="HWC")
        self.avatar.train()
        return float(torch.cat([v.reshape(-1) for v in values]).mean()) if values else float("nan")

    # ---- the loop --------------------------------------------------------------------------------

    def run(self, after_epoch: Callable[[int, dict[str, float]], bool] | None = None) -> bool:
        """Train until `nepoch` epochs are done; returns whether any epoch was trained (and saved).
        `after_epoch(epochs_done, stats)` runs after each epoch's save; returning True stops training."""
        self.paths.train_dir.mkdir(parents=True, exist_ok=True)
        self.paths.runconf.write_text(to_hocon(self.conf))
        self.writer = SummaryWriter(str(self.paths.tensorboard))
        train = self.conf.train
        save_freq, plot_freq = max(1, train.save_freq), max(1, train.plot_freq)
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
                if (done % save_freq == 0 or done == nepoch) and self.guard.may_save(epoch, stats["lr"],
                                                                                    last=done == nepoch):
                    self.save(done, numbered=done % (5 * save_freq) == 0 or done == nepoch)
                if done % plot_freq == 0 or done == nepoch:
                    stats["test_psnr"] = self.plot(done)
                for name, value in stats.items():
                    self.writer.add_scalar(f"train/{name}", value, done)
                log.info("epoch %d: loss %.4f, train PSNR %.2f%s, %d points, %.1f s", epoch, stats["loss"],
                         stats["psnr"], f", test PSNR {stats['test_psnr']:.2f}" if "test_psnr" in stats else "",
                         self.avatar.n_points, stats["epoch_time_s"])
                if after_epoch is not None and after_epoch(done, stats):
                    break
        finally:
            self.writer.close()
        return nepoch > self.start_epoch
