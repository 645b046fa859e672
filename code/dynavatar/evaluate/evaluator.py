"""Evaluation of a trained avatar on the held-out test split, and reenactment: loads the checkpoint
and composes test-input fitting (`fitting`), the metrics report (`report`) and the videos and
export (`animation`).

Writes under <experiment>/eval/<test sub_dir>/epoch_<N>/ (eval/<subject>/<test sub_dir>/epoch_<N>/ for
the test videos of another subject than the one trained on; and, for `score_training_frames`, the
images of the training frames scored under eval/training_frames[_fitted]/<train sub_dir>/epoch_<N>/):
  rgb/ rgb_erode_dilate/ gt/ alpha/ error/   one PNG per frame, named by frame id
  metrics.csv (one row per frame, with its distances to the training frames: flame/novelty.py),
  metrics.json (means, the distances' summary, how far the test fit moved the inputs, and the
  conf/checkpoint they came from)
  video.mp4 (ground truth | rendering | error), turntable.mp4, canonical.ply
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Conf
from ..data.reader import FaceDataset, dataset_from_conf
from ..errors import ConfigError, DatasetError
from ..experiment import ExperimentPaths
from ..experiment import checkpoints as ckpt
from ..experiment.lock import experiment_lock
from ..flame import novelty
from ..metrics import Unavailable
from ..model.build import experiment_checkpoints, load_avatar
from ..runtime import configure_device, resolve_device
from . import animation, report, training_frames
from .fitting import fitted_test_inputs

log = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    checkpoint: str = ckpt.LATEST
    load_path: str | None = None
    only_json: bool = False
    videos: bool = True


class Evaluator:
    """Loads a checkpoint and evaluates or reenacts it. What it writes goes under the experiment
    that owns the checkpoint, whose lock (experiment/lock.py) it holds while it writes."""

    def __init__(self, conf: Conf, options: EvalOptions) -> None:
        self.conf, self.options = conf, options
        self.device = resolve_device(conf.train.device)
        # The conf's arithmetic (`train.tf32`), as training set it: an evaluation after training and
        # one of the same checkpoint in a process of its own then fit and render alike.
        configure_device(self.device, conf.train.tf32)
        self.paths = ExperimentPaths.from_conf(conf)
        self.checkpoints = experiment_checkpoints(conf, options.load_path)
        if options.load_path:
            # Results of another experiment's checkpoint go under that experiment, never over the conf's own.
            self.paths = ExperimentPaths.owning(self.checkpoints)
            log.info("results of %s go under the experiment that owns it: %s", self.checkpoints, self.paths.root)
        # Another subject's test videos can bear the trained subject's video names: their results get
        # a folder of their own instead of replacing the trained subject's.
        self.trained_conf = self.paths.trained_conf()  # read once: the subject and the frames trained on
        trained = None if self.trained_conf is None else self.trained_conf.dataset.subject_name
        self.test_subject = None if trained in (None, conf.dataset.subject_name) else conf.dataset.subject_name
        if self.test_subject is not None:
            log.info("the test videos are subject %s's, the avatar was trained on %s: results go under %s",
                     self.test_subject, trained, self.paths.eval_dir / self.test_subject)
        self.avatar, self.epoch = load_avatar(conf, self.checkpoints, options.checkpoint,
                                              conf.dataset.test.img_res, self.device)
        log.info("evaluating %s checkpoint %s (epoch %d, %d points)", self.checkpoints, options.checkpoint,
                 self.epoch, self.avatar.n_points)

    def render_batch_size(self) -> int:
        """Frames per call when only rendering: without gradients memory allows the largest batch."""
        return self.conf.train.max_batch

    def checkpoint_file(self) -> Path:
        """The numbered file of the evaluated epoch when there is one (`latest` changes as training goes on)."""
        numbered = self.checkpoints / ckpt.MODEL / f"{self.epoch}.pth"
        return numbered if numbered.is_file() else self.checkpoints / ckpt.MODEL / f"{self.options.checkpoint}.pth"

    def conf_source(self) -> str:
        """The conf the results came from: the experiment's runconf.conf when it has one."""
        return str(self.paths.runconf) if self.paths.runconf.is_file() else self.conf.source

    def evaluate(self) -> dict[str, Path]:
        """Render the whole test split, write images, metrics and videos; returns the folders written."""
        with experiment_lock(self.paths.root):
            return self._evaluate()

    def _evaluate(self) -> dict[str, Path]:
        conf, options = self.conf, self.options
        data = dataset_from_conf(conf, "test", is_eval=True, only_json=options.only_json,
                                 use_mean_expression=False, use_var_expression=False)
        inputs = fitted_test_inputs(conf, self.avatar, data, self.checkpoints, self.epoch, self.device)
        lpips = report.lpips_model(conf, options.only_json, self.device)
        folders = {s: self.paths.eval_epoch_dir(s, self.epoch, self.test_subject) for s in conf.dataset.test.sub_dir}
        rows = report.render_and_score(self.avatar, data, inputs, folders, lpips, self.render_batch_size(),
                                       self.device)
        # Without ground truth there are no metrics rows, and so no distances to write beside them.
        trained_on = self.trained_tracking() if rows else Unavailable("no ground truth")
        if not isinstance(trained_on, Unavailable):
            novelty.with_novelty(rows, data, trained_on)
        for sub_dir, folder in folders.items():
            frame_rows = [r for r in rows if r["sub_dir"] == sub_dir]
            if frame_rows:
                fit_change = None if inputs is None else inputs.change_summary(torch.as_tensor(
                    [i for i, r in enumerate(data.frames) if r.sub_dir == sub_dir], device=self.device))
                report.write_metrics(folder, frame_rows, lpips, self.epoch, self.checkpoint_file(),
                                     self.conf_source(), [] if inputs is None else inputs.refined,
                                     trained_on.reason if isinstance(trained_on, Unavailable) else None,
                                     fit_change)
            if options.videos:
                frame_ids = [r.frame_id for r in data.frames if r.sub_dir == sub_dir]
                animation.write_videos(folder, self.avatar, frame_ids, not data.only_json, data.world_mats[0],
                                       data.frame_intrinsics[0], conf.evaluation.turntable_frames,
                                       conf.evaluation.video_fps)
            animation.save_posed_ply(self.avatar, folder / "canonical.ply")
        return folders

    def trained_tracking(self) -> FaceDataset | Unavailable:
        """The tracked inputs of the frames the avatar was trained on (no images): the training videos
        of the experiment's runconf.conf, which the evaluated conf may not name (another subject's
        test videos, another data folder), or the conf's own without a readable runconf."""
        conf = self.conf if self.trained_conf is None else self.trained_conf
        try:
            return dataset_from_conf(conf, "train", only_json=True)
        except (ConfigError, DatasetError) as exc:
            return Unavailable(f"the training videos' tracking cannot be read ({conf.source}): {exc}")

    def score_training_frames(self, count: int, inputs_from: str = "trained") -> tuple[dict[str, Any], dict[str, Path]]:
        """The metric means of `count` evenly spaced training frames, scored as the test split is
        with the inputs training used, or with the tracked ones fitted as the test split's are
        (`inputs_from`, training_frames.py), and the folders of their images."""
        folders = {s: self.paths.eval_dir / training_frames.FOLDERS[inputs_from] / s / f"epoch_{self.epoch}"
                   for s in self.conf.dataset.train.sub_dir}
        means = training_frames.score_training_frames(self.conf, self.avatar, self.checkpoints,
                                                      self.checkpoint_file().stem, count, folders,
                                                      self.render_batch_size(), self.device, inputs_from)
        return means, folders

    def reenact(self, drive_json: str | Path) -> Path:
        """Render the avatar with another sequence's expressions, poses and cameras; returns the folder."""
        folder = animation.reenactment_folder(self.paths.eval_dir, drive_json, self.epoch)
        with experiment_lock(self.paths.root):
            return animation.reenact(self.avatar, drive_json, folder, self.render_batch_size(),
                                     self.conf.evaluation.video_fps)
