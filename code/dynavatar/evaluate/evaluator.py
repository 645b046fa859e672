"""Evaluation of a trained avatar on the held-out test split, reenactment, videos and exports.

Writes under <experiment>/eval/<test sub_dir>/epoch_<N>/:
  rgb/ rgb_erode_dilate/ gt/ alpha/ error/   one PNG per frame, named by frame id
  metrics.csv (one row per frame), metrics.json (means, and the conf/checkpoint they came from)
  video.mp4 (ground truth | rendering | error), turntable.mp4, canonical.ply
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import imageio.v2 as imageio
import numpy as np
import torch
from tqdm import tqdm

from ..config import Conf
from ..data.batch import FrameBatch, batches
from ..data.flame_params import read_flame_params
from ..data.reader import FaceDataset, dataset_from_conf
from ..experiment import ExperimentPaths
from ..experiment import checkpoints as ckpt
from ..export.images import erode_dilate, error_heatmap, save_png, side_by_side
from ..export.ply import save_gaussians_ply
from ..export.video import write_mp4
from ..flame.lbs import axis_angle_to_matrix
from ..losses import AvatarLoss
from ..metrics import LPIPS, Unavailable, image_metrics, load_lpips, lpips_metric
from ..model.avatar import Avatar, AvatarOutput, Gaussians
from ..model.build import load_avatar
from ..model.frame_inputs import FrameInputs
from ..runtime import flush_denormals_on_cpu, resolve_device
from ..train.schedule import batch_size
from .fitting import fit_frame_inputs

log = logging.getLogger(__name__)

CLOTH_LABELS = (15, 16)  # face-parsing necklace and cloth, excluded by the "no cloth" metrics
METRIC_NAMES = ("l1", "mse", "psnr", "ssim", "lpips")


@dataclass
class EvalOptions:
    checkpoint: str = ckpt.LATEST
    load_path: str | None = None
    only_json: bool = False
    videos: bool = True


def points_fingerprint(avatar: Avatar) -> float:
    """A number that changes with the trained model, to tell whether saved test inputs belong to it."""
    with torch.no_grad():
        return float(avatar.points.double().abs().sum()) + avatar.n_points


def _orbit_world_mat(world_mat: torch.Tensor, angle: float) -> torch.Tensor:
    """The stored camera [3, 4] turned about the head's vertical axis by `angle` (radians)."""
    rotation = axis_angle_to_matrix(torch.tensor([0.0, angle, 0.0], dtype=world_mat.dtype))
    out = world_mat.clone()
    out[:, :3] = world_mat[:, :3] @ rotation.to(world_mat)
    return out


class Evaluator:
    """Loads a checkpoint and evaluates, reenacts or exports it."""

    def __init__(self, conf: Conf, options: EvalOptions) -> None:
        self.conf, self.options = conf, options
        self.device = resolve_device(conf.train.device)
        flush_denormals_on_cpu(self.device)
        self.paths = ExperimentPaths.from_conf(conf)
        self.checkpoints = ckpt.checkpoints_dir_of(options.load_path or self.paths.train_dir)
        if options.load_path:
            # Results of another experiment's checkpoint go under that experiment, never over the conf's own.
            self.paths = ExperimentPaths.owning(self.checkpoints)
            log.info("results of %s go under the experiment that owns it: %s", self.checkpoints, self.paths.root)
        self.img_res = conf.dataset.test.img_res
        self.avatar, self.epoch = load_avatar(conf, self.checkpoints, options.checkpoint, self.img_res, self.device)
        self.fps = conf.evaluation.video_fps
        log.info("evaluating %s checkpoint %s (epoch %d, %d points)", self.checkpoints, options.checkpoint,
                 self.epoch, self.avatar.n_points)

    # ---- test-frame inputs -----------------------------------------------------------------------

    def test_inputs(self, data: FaceDataset) -> FrameInputs | None:
        """Fitted (or reloaded) expression/pose/camera of the test frames, or None when the conf's
        optimize flags are off, `evaluation.test_fit_steps` is 0, or there is no ground truth to fit."""
        train = self.conf.train
        inputs = FrameInputs(data.expressions, data.flame_poses, data.world_mats, train.optimize_expression,
                             train.optimize_camera, self.conf.evaluation.fit_camera_translation).to(self.device)
        if not inputs.enabled or data.only_json or self.conf.evaluation.test_fit_steps == 0:
            return None
        saved = self.checkpoints / ckpt.TEST_INPUTS / f"{self.epoch}.pth"
        fingerprint = {"n_frames": len(data), "sub_dirs": self._sub_dirs(), "model": points_fingerprint(self.avatar),
                       "keys": sorted(inputs.state_dict()), "fitted": inputs.refined}
        if saved.is_file():
            state = ckpt.load_part(self.checkpoints, ckpt.TEST_INPUTS, self.epoch, map_location=self.device)
            if state.get("fingerprint") == fingerprint:
                inputs.load_state_dict(state["inputs_state_dict"])
                log.info("using the test inputs fitted before: %s", saved)
                return inputs
            log.info("%s was fitted for another model or other test frames; fitting again", saved)
        size = self._batch_size()
        loss = AvatarLoss(self.conf.loss, train, None, None, self.device, perceptual=False)
        losses = fit_frame_inputs(self.avatar, inputs, batches(data, size, torch.arange(len(data))),
                                  math.ceil(len(data) / size), self.conf.evaluation.test_fit_steps,
                                  train.learning_rate_cam, loss, self.device)
        if losses:
            log.info("fitted the test inputs: photometric loss %.4f -> %.4f (mean over batches)",
                     np.mean([a for a, _ in losses]), np.mean([b for _, b in losses]))
        payload = {"epoch": self.epoch, "fingerprint": fingerprint, "inputs_state_dict": inputs.state_dict()}
        ckpt.atomic_save(payload, saved)
        ckpt.atomic_save(payload, saved.with_name(f"{ckpt.LATEST}.pth"))
        return inputs

    def _sub_dirs(self) -> list[str]:
        return list(self.conf.dataset.test.sub_dir)

    def _batch_size(self) -> int:
        """Frames per test-time fitting step: the training rule, as the paper's protocol."""
        return batch_size(self.conf.train, self.avatar.n_points)

    def _render_batch_size(self) -> int:
        """Frames per call when only rendering: without gradients memory allows the largest batch."""
        return self.conf.train.max_batch

    # ---- rendering -------------------------------------------------------------------------------

    @torch.no_grad()
    def _render_batches(self, data: FaceDataset, inputs: FrameInputs | None) -> Iterator[tuple[FrameBatch, AvatarOutput]]:
        for batch in batches(data, self._render_batch_size(), torch.arange(len(data))):
            batch = batch.to(self.device)
            if inputs is not None:
                batch = inputs.apply(batch)
            yield batch, self.avatar(batch)

    def evaluate(self) -> dict[str, Path]:
        """Render the whole test split, write images, metrics and videos; returns the folders written."""
        data = dataset_from_conf(self.conf, "test", is_eval=True, only_json=self.options.only_json,
                                 use_mean_expression=False, use_var_expression=False)
        inputs = self.test_inputs(data)
        lpips_model = self._lpips()
        rows: list[dict[str, Any]] = []
        folders = {s: self.paths.eval_epoch_dir(s, self.epoch) for s in self._sub_dirs()}
        bar = tqdm(total=len(data), desc="evaluating", dynamic_ncols=True)
        for batch, out in self._render_batches(data, inputs):
            for b in range(len(batch)):
                folder = folders[batch.sub_dir[b]]
                name = f"{batch.frame_id[b]}.png"
                rendering = out.rgb[b].clamp(0, 1)
                opened = erode_dilate(rendering)
                save_png(folder / "rgb" / name, rendering)
                save_png(folder / "rgb_erode_dilate" / name, opened)
                save_png(folder / "alpha" / name, out.alpha[b, ..., None].clamp(0, 1))
                if data.only_json:
                    continue
                gt = batch.rgb[b]
                save_png(folder / "gt" / name, gt)
                save_png(folder / "error" / name, error_heatmap(opened, gt, vmax=0.5))
                row = {"sub_dir": batch.sub_dir[b], "frame_id": batch.frame_id[b]}
                row.update(self._frame_metrics(opened, gt, None, lpips_model))
                if batch.semantic is not None:
                    keep = ~torch.isin(batch.semantic[b], torch.tensor(CLOTH_LABELS, device=gt.device))
                    mask = batch.mask[b] * keep.to(gt.dtype)
                    row.update({f"{k}_nocloth": v for k, v in
                                self._frame_metrics(opened, gt, mask, lpips_model).items()})
                rows.append(row)
            bar.update(out.rgb.shape[0])
        bar.close()
        for sub_dir, folder in folders.items():
            frame_rows = [r for r in rows if r["sub_dir"] == sub_dir]
            if frame_rows:
                self._write_metrics(folder, frame_rows, lpips_model, [] if inputs is None else inputs.refined)
            if self.options.videos:
                self._write_videos(folder, data, sub_dir)
            self.export_canonical(folder / "canonical.ply")
        return folders

    def _lpips(self) -> LPIPS | Unavailable:
        if self.options.only_json:
            return Unavailable("no ground truth (--only_json)")
        evaluation = self.conf.evaluation
        return load_lpips(evaluation.lpips_alexnet_path or None, evaluation.lpips_lin_path or None,
                          device=self.device)

    @staticmethod
    def _frame_metrics(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None,
                       lpips_model: LPIPS | Unavailable) -> dict[str, float | None]:
        values: dict[str, float | None] = {k: float(v) for k, v in image_metrics(pred, gt, mask).items()}
        lp = lpips_metric(lpips_model, pred, gt, mask)
        values["lpips"] = None if isinstance(lp, Unavailable) else float(lp)
        return values

    def _write_metrics(self, folder: Path, rows: list[dict], lpips_model: LPIPS | Unavailable,
                       fitted: list[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        columns = list(rows[0].keys())
        with open(folder / "metrics.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("unavailable" if v is None else v) for k, v in row.items()})
        summary: dict[str, Any] = {}
        for suffix, label in (("", "all"), ("_nocloth", "no_cloth")):
            if f"l1{suffix}" not in columns:
                summary[label] = {"unavailable": "the test split has no semantic maps"}
                continue
            means: dict[str, Any] = {}
            for name in METRIC_NAMES:
                values = [r[f"{name}{suffix}"] for r in rows]
                if any(v is None for v in values):
                    means[name] = {"unavailable": lpips_model.reason if isinstance(lpips_model, Unavailable)
                                   else "not computed"}
                else:
                    means[name] = float(np.mean(values))
            summary[label] = means
        report = {
            "epoch": self.epoch,
            "checkpoint": str(self._checkpoint_file()),
            "conf": str(self.paths.runconf) if self.paths.runconf.is_file() else self.conf.source,
            "n_frames": len(rows),
            "test_inputs_fitted": bool(fitted),
            "fitted_inputs": fitted,  # the reference's protocol fits expression and pose
            "metric_input": "rgb_erode_dilate vs ground truth composited on white with its mask",
            "metrics": summary,
        }
        (folder / "metrics.json").write_text(json.dumps(report, indent=2))
        log.info("%s: PSNR %.2f, SSIM %.4f, L1 %.4f over %d frames", folder, summary["all"]["psnr"],
                 summary["all"]["ssim"], summary["all"]["l1"], len(rows))

    def _checkpoint_file(self) -> Path:
        """The numbered file of the evaluated epoch when there is one (`latest` changes as training goes on)."""
        numbered = self.checkpoints / ckpt.MODEL / f"{self.epoch}.pth"
        return numbered if numbered.is_file() else self.checkpoints / ckpt.MODEL / f"{self.options.checkpoint}.pth"

    def _write_videos(self, folder: Path, data: FaceDataset, sub_dir: str) -> None:
        ids = [r.frame_id for r in data.frames if r.sub_dir == sub_dir]

        def frames() -> Iterator[np.ndarray]:
            for frame_id in ids:
                parts = [imageio.imread(folder / part / f"{frame_id}.png")[..., :3]
                         for part in (("gt", "rgb", "error") if not data.only_json else ("rgb",))]
                yield side_by_side([torch.from_numpy(p) for p in parts]).numpy()

        write_mp4(folder / "video.mp4", frames(), fps=self.fps)
        write_mp4(folder / "turntable.mp4", self.turntable(data.world_mats[0], data.frame_intrinsics[0]), fps=self.fps)

    # ---- turntable, reenactment, export ----------------------------------------------------------

    @torch.no_grad()
    def turntable(self, world_mat: torch.Tensor, intrinsics: torch.Tensor) -> Iterator[np.ndarray]:
        """Frames [H, W, 3] uint8 of the camera orbiting the avatar at its canonical expression, mouth closed."""
        n = self.conf.evaluation.turntable_frames
        expression = self.avatar.canonical_expression[None]
        pose = torch.zeros(1, 15, device=self.device)
        gaussians, _ = self.avatar.deform(expression, pose)
        for k in range(n):
            camera = self.avatar.camera(_orbit_world_mat(world_mat, 2 * math.pi * k / n).to(self.device),
                                        intrinsics.to(self.device))
            rgb, _, _ = self.avatar.render(gaussians, [camera])
            yield (rgb[0].clamp(0, 1) * 255).round().byte().cpu().numpy()

    @torch.no_grad()
    def reenact(self, drive_json: str | Path) -> Path:
        """Render the avatar with another sequence's expressions, poses and cameras; returns the folder."""
        params = read_flame_params(drive_json)
        name = Path(drive_json).resolve().parent.name
        folder = self.paths.eval_dir / f"reenact_{name}" / f"epoch_{self.epoch}"
        written = []
        size = self._render_batch_size()
        for start in tqdm(range(0, len(params), size), desc="reenacting", dynamic_ncols=True):
            stop = min(start + size, len(params))
            batch = FrameBatch(idx=torch.arange(start, stop), frame_id=params.frame_ids[start:stop],
                               sub_dir=[name] * (stop - start), expression=params.expressions[start:stop],
                               flame_pose=params.poses[start:stop], world_mat=params.world_mats[start:stop],
                               intrinsics=params.intrinsics.expand(stop - start, 4))
            out = self.avatar(batch.to(self.device))
            for b, frame_id in enumerate(params.frame_ids[start:stop]):
                written.append(save_png(folder / "rgb" / f"{frame_id}.png", out.rgb[b].clamp(0, 1)))
        write_mp4(folder / "video.mp4", (imageio.imread(p)[..., :3] for p in written), fps=self.fps)
        log.info("reenacted %d frames of %s into %s", len(written), drive_json, folder)
        return folder

    @torch.no_grad()
    def gaussians_of(self, expression: torch.Tensor, pose: torch.Tensor) -> Gaussians:
        """Activated Gaussians [N, ...] of one frame given expression [E] and FLAME pose [15]."""
        gaussians, _ = self.avatar.deform(expression[None].to(self.device), pose[None].to(self.device))
        return gaussians.frame(0)

    def export_canonical(self, path: Path) -> Path:
        """The avatar in its canonical frame (canonical expression and pose) as a standard 3DGS .ply."""
        g = self.gaussians_of(self.avatar.canonical_expression, self.avatar.canonical_pose)
        return save_gaussians_ply(path, g.means, g.quats, g.scales, g.opacities, g.colors)
