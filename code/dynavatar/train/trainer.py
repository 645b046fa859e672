"""The training runner: data, avatar, losses, optimisers, the epoch loop and feedback.

The experiment folder and checkpoints are `checkpointing`'s, the point set's edits the strategy's
(`strategy`, conf `train.strategy`), the learning rate `schedule`'s, the frames per step
`data.batch.frames_per_step`.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.tensorboard import SummaryWriter

from ..config import Conf
from ..data.batch import FrameBatch, batches, frames_per_step
from ..data.reader import dataset_from_conf
from ..experiment import ExperimentPaths
from ..experiment import checkpoints as ckpt
from ..experiment import lock
from ..flame import load_flame_model
from ..losses import AvatarLoss, check_loss_conf, load_vgg_perceptual
from ..metrics import psnr
from ..model.avatar import Avatar
from ..model.build import avatar_from_conf, flame_paths
from ..model.frame_inputs import FrameInputs
from ..progress import progress
from ..render.backends import resolve_backend
from ..render.tile_intersections import IntersectionBudget
from ..runtime import configure_device, epoch_generator, resolve_device, seed_everything
from . import checkpointing, schedule
from .collapse import check_rendered
from .guard import NonFiniteGuard, check_finite_parameters
from .optimizer_state import adam_after_update, make_adam
from .placement import place_training_images
from .strategy import strategy_from_conf
from .weight_average import Lag, WeightAverage, decay_for

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

    The trainer owns the optimisers and the point strategy; the avatar holds only what rendering needs.
    It holds the experiment's lock (experiment/lock.py) from its construction to the end of `run()`.
    """

    def __init__(self, conf: Conf, options: TrainOptions) -> None:
        self.paths = ExperimentPaths.from_conf(conf)
        self._hold_lock()
        try:
            self._setup(conf, options)
        except BaseException:
            self._release_lock()
            raise

    def _hold_lock(self) -> None:
        """Hold the experiment's lock (one writer per experiment), until `_release_lock` or, at the
        latest, until this trainer is garbage-collected."""
        lock.acquire(self.paths.root)
        self._lock_hold = weakref.finalize(self, lock.release, self.paths.root)

    def _release_lock(self) -> None:
        self._lock_hold()  # a finalizer runs once: a second call does nothing

    def _setup(self, conf: Conf, options: TrainOptions) -> None:
        self.conf = conf
        self.options = options
        train = conf.train
        self.device = resolve_device(train.device)
        self.strategy = strategy_from_conf(conf)  # an unknown name stops the run before anything is loaded
        resolve_backend(conf.model.rasterizer, self.device)  # so does a rasterizer that cannot run here
        check_loss_conf(conf)  # and a loss term on parameters the avatar lacks
        configure_device(self.device, train.tf32)
        self.seed = train.seed
        seed_everything(self.seed)
        # Before any work, and before anything is moved or written: what the folder holds and allows.
        checkpointing.check_experiment_folder(self.paths, options.is_continue, options.overwrite, options.load_path,
                                              options.checkpoint)
        checkpointing.check_writable(self.paths, conf.dataset.test.sub_dir, fresh=options.overwrite)
        # Files the run needs besides the data are checked before the (possibly long) image loading.
        load_flame_model(flame_paths(conf)[0])
        vgg = None
        if conf.loss.vgg_feature_weight > 0:
            vgg = load_vgg_perceptual(conf.loss.vgg_weights_path or None, device=self.device)
        self.train_data = dataset_from_conf(conf, "train")
        place_training_images(self.train_data, self.device, train.gpu_image_fraction)
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
        self.strategy.initialize(self.avatar)
        self.loss = AvatarLoss(conf.loss, self.train_data.var_expression, vgg, self.device,
                               compiler=self.avatar.compiler)
        self.inputs = FrameInputs(self.train_data.expressions, self.train_data.flame_poses,
                                  self.train_data.world_mats, train.optimize_expression, train.optimize_camera,
                                  train.refine_camera_translation).to(self.device)
        self.optimizer = make_adam(self.avatar, train.learning_rate)
        self.input_optimizer = self.inputs.optimizer(train.learning_rate_cam)
        if train.refine_per_frame_only and not (self.inputs.enabled and train.optimize_inputs_after_epoch + 1
                                                < options.nepoch):
            log.warning("train.refine_per_frame_only has no effect: no epoch refines the inputs (they are "
                        "refined after epoch train.optimize_inputs_after_epoch=%d of %d, with "
                        "train.optimize_expression or train.optimize_camera)", train.optimize_inputs_after_epoch,
                        options.nepoch)
        self.guard = NonFiniteGuard(train.max_nonfinite_steps, self.device)
        # gsplat's tile intersections can go to a buffer sized on the host, so that a step never waits
        # for the device (render/tile_intersections.py); a step whose intersections outgrew it is skipped.
        self.intersections = IntersectionBudget()
        self.start_epoch = 0
        saved_average = None
        if options.is_continue:
            resumed = checkpointing.resume_training(
                self.paths, options.load_path, options.checkpoint, train=train, avatar=self.avatar,
                strategy=self.strategy, inputs=self.inputs, input_optimizer=self.input_optimizer)
            if resumed is not None:
                self.optimizer, self.start_epoch, saved_average = resumed.optimizer, resumed.epoch, resumed.average
        self.average = WeightAverage(self.avatar, saved_average) if train.weight_average_epochs > 0 else None
        if options.overwrite:  # every check passed (and a resumed checkpoint is in memory)
            checkpointing.move_experiment_aside(self.paths.root)
        self.writer: SummaryWriter | None = None

    def reset_optimizer(self) -> None:
        """A fresh optimizer over the avatar's parameters, after they were replaced from outside the
        strategy (e.g. `avatar.set_points`); the weights' average starts again from them."""
        self.optimizer = make_adam(self.avatar, self.conf.train.learning_rate)
        if self.average is not None:
            self.average = WeightAverage(self.avatar)

    def _set_lr(self, epoch: int, step: int = 0, n_steps: int = 1) -> float:
        """Set the avatar's learning rate for step `step` of the `n_steps` of `epoch` (the schedule's
        rate with its warm-up, `train.schedule`); without a step, the rate of the epoch's last step."""
        lr = schedule.learning_rate_at(self.conf.train, epoch, step, n_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def batch_size(self) -> int:
        return frames_per_step(self.conf.train, self.avatar.n_points)

    def draws_without_wait(self, frames: int) -> bool:
        """Whether a step of `frames` frames makes gsplat's tile intersections without waiting for the
        GPU (`train.wait_free_intersections`). By default only steps of one frame: on an H200 they ran
        5-8 % faster at 100,000 Gaussians, while steps of 8 frames ran 2-13 % slower, the buffer's
        sort and launches outweighing the wait (docs/PERFORMANCE.md)."""
        mode = self.conf.train.wait_free_intersections
        return mode == "on" or (mode == "auto" and frames == 1)

    def save(self, epoch: int, numbered: bool) -> None:
        """Save the run after `epoch` epochs as the checkpoint 'latest' (and `epoch` when `numbered`)."""
        checkpointing.save_training(self.paths.checkpoints, epoch, numbered, train=self.conf.train,
                                    avatar=self.avatar, strategy=self.strategy, optimizer=self.optimizer,
                                    inputs=self.inputs, input_optimizer=self.input_optimizer, average=self.average)

    # ---- one epoch -------------------------------------------------------------------------------

    def begin_epoch(self, epoch: int) -> None:
        """What comes before an epoch's steps: the strategy's edit of the points (the optimizer is
        then rebuilt, see optimizer_state.py) and the loss's epoch-dependent weights."""
        before: Lag | None = self.average.lag(self.avatar) if self.average is not None else None
        update = self.strategy.epoch_start(self.avatar, epoch, epoch_generator(self.seed, epoch, 1))
        if update is not None:
            self.optimizer = adam_after_update(self.optimizer, self.avatar, self.conf.train.learning_rate, update,
                                               self.conf.train.keep_optimizer_state)
            if self.average is not None:
                self.average.follow_edit(self.avatar, before, update.source)
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
        self.intersections.reset()
        with self.intersections.use(self.draws_without_wait(len(batch))):
            prior = self.loss.prior_terms(self.avatar.flame) if self.loss.uses_priors else None
            out = self.avatar(batch, prior_terms=prior, prior_chunk=self.conf.loss.flame_distance_chunk)
        terms = self.loss.terms(out, batch, self.avatar.flame)
        terms.update(self.loss.regularisers(self.avatar))
        loss = self.loss.total(terms)
        self.optimizer.zero_grad(set_to_none=True)
        if step_inputs:
            self.input_optimizer.zero_grad(set_to_none=True)
        self.strategy.before_backward(self.avatar, out)
        loss.backward()
        # A non-finite loss or gradient is never applied (see train/guard.py), nor an incomplete rendering.
        applied = self.guard.step(loss, [self.optimizer] + ([self.input_optimizer] if step_inputs else []),
                                  complete=self.intersections.complete)
        self.strategy.after_backward(self.avatar, out, applied)
        values = {name: v.detach() for name, v in terms.items()}
        values["loss"] = loss.detach()
        values["psnr"] = psnr(out.rgb.detach(), batch.rgb).mean()
        values["peak_alpha"] = out.alpha.detach().amax()  # the epoch's last one tells a collapse (train/collapse.py)
        values["finite"] = applied  # a skipped step (non-finite, or an incomplete rendering) counts in no mean
        return values

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.begin_epoch(epoch)
        lr = self._set_lr(epoch)
        step_inputs = self.inputs.enabled and epoch > self.conf.train.optimize_inputs_after_epoch
        batch_size = self.batch_size()
        order = self.epoch_order(epoch)
        n_batches = (len(order) + batch_size - 1) // batch_size
        decay = decay_for(self.conf.train.weight_average_epochs, n_batches)
        sums: dict[tuple[str, ...], torch.Tensor] = {}  # the frame-weighted sums of the values named, [T]
        counted = torch.zeros((), dtype=torch.float64, device=self.device)  # frames of the finite steps
        self.guard.start_epoch()
        self.avatar.train()
        bar = progress(batches(self.train_data, batch_size, order), total=n_batches, desc=f"epoch {epoch}",
                       leave=False, dynamic_ncols=True)
        shown = time.perf_counter()
        # During the warm-up the rate rises at every step: Adam's first full-size steps could carry
        # the opacity all initial points share below the rasterizer's 1/255 cut (docs/RECIPES.md).
        warming = epoch < self.conf.train.warmup_epochs
        peak_alpha = None
        for step, batch in enumerate(bar):
            if warming:
                lr = self._set_lr(epoch, step, n_batches)
            values = self.train_step(batch.to(self.device), step_inputs)
            if self.average is not None:
                self.average.update(self.avatar, decay)
            finite = values.pop("finite")
            # A skipped (non-finite) step tells nothing of what the avatar renders: the guard's business.
            peak_alpha = torch.where(finite, values.pop("peak_alpha"), torch.inf)
            counted += finite * len(batch)
            # The means are over finite steps (a skipped one poisons nothing), summed as one vector: a
            # few launches a step instead of a few per value.
            names = tuple(values)
            stacked = torch.stack([v.float() for v in values.values()]).double()
            step_sums = torch.where(finite, stacked, 0.0) * len(batch)
            sums[names] = sums[names] + step_sums if names in sums else step_sums
            throttled = time.perf_counter() - shown > 1.0  # reading a value waits for the device: once a second
            if throttled or self.device.type != "cuda":  # (the CPU waits for nothing: checked at every step)
                self.guard.check(epoch, lr)
            if throttled:
                shown = time.perf_counter()
                bar.set_postfix(loss=f"{float(values['loss']):.4f}", psnr=f"{float(values['psnr']):.2f}",
                                pts=self.avatar.n_points)
        self.guard.check(epoch, lr)
        if step_inputs and self.conf.train.refine_per_frame_only:
            self.inputs.remove_shared_change()
        check_finite_parameters({**{f"avatar.{k}": p for k, p in self.avatar.named_parameters()},
                                 **{f"inputs.{k}": p for k, p in self.inputs.named_parameters()}}, epoch, lr)
        check_rendered(peak_alpha, epoch, self.conf.train)
        frames = float(counted)
        totals: dict[str, float] = {}
        for names, values_sum in sums.items():
            for name, total in zip(names, values_sum.tolist()):
                totals[name] = totals.get(name, 0.0) + total
        stats = {name: total / frames if frames else float("nan") for name, total in totals.items()}
        skipped = int(self.guard.skipped)
        if skipped:
            log.warning("epoch %d: %d step(s) with a non-finite loss or gradient were skipped", epoch, skipped)
        overflowed = self.intersections.take_incomplete()
        if overflowed:  # the Gaussians' screen footprint grew faster than the buffer followed: rare, harmless
            log.info("epoch %d: %d step(s) skipped whose tile intersections outgrew their buffer", epoch, overflowed)
        stats.update(lr=lr, n_points=self.avatar.n_points, radius=float(self.avatar.point_radius),
                     skipped_steps=skipped, overflow_steps=overflowed, batch_size=batch_size,
                     lbs_weight=self.loss.lbs_weight,
                     **self.strategy.epoch_stats())
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
        if not self._lock_hold.alive:  # run() again
            self._hold_lock()
        checkpointing.write_runconf(self.paths, self.conf, self.start_epoch)
        self.writer = SummaryWriter(str(self.paths.tensorboard))
        train = self.conf.train
        save_freq, plot_freq = max(1, train.save_freq), max(1, train.plot_freq)
        nepoch = self.options.nepoch
        if self.start_epoch >= nepoch:
            log.info("nothing to train: checkpoint is at epoch %d, --nepoch is %d", self.start_epoch, nepoch)
        try:
            for epoch in progress(range(self.start_epoch, nepoch), desc="training", initial=self.start_epoch,
                                  total=nepoch, dynamic_ncols=True):
                started = time.perf_counter()
                stats = self.train_epoch(epoch)
                stats["epoch_time_s"] = time.perf_counter() - started
                done = epoch + 1
                if (done % save_freq == 0 or done == nepoch) and self.guard.may_save(epoch, stats["lr"],
                                                                                    last=done == nepoch):
                    self.save(done, numbered=checkpointing.is_numbered(done, nepoch, train))
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
            self._release_lock()
        return nepoch > self.start_epoch
