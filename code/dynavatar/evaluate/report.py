"""The metrics report of the test split: render every test frame, write its images
(rgb, rgb_erode_dilate, alpha, gt, error), score it, and write metrics.csv (one row per frame),
metrics.json (the means and where they came from) and the summary lines of the log. Each test
frame's row also holds its distances to the training frames (flame/novelty.py), and metrics.json their
summary.

The metric input is the erode-dilated rendering against the ground truth composited on white; the
"no cloth" metrics leave out the pixels the face parsing labels as necklace or cloth. Beside them,
what the opening itself costs: the PSNR of the rendering without it, and the PSNR of the ground
truth put through the same opening (what a perfect rendering scores). Its 3x3 kernel was made for
512 px; at 64 px it is eight times as wide on the face and dominates the error.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..config import Conf
from ..data.batch import FrameBatch, batches
from ..data.reader import FaceDataset
from ..export.images import erode_dilate, error_heatmap, save_png
from ..flame import novelty
from ..metrics import LPIPS, Unavailable, image_metrics, load_lpips, lpips_metric, psnr
from ..model.avatar import Avatar, AvatarOutput
from ..model.frame_inputs import FrameInputs
from ..progress import progress

log = logging.getLogger(__name__)

CLOTH_LABELS = (15, 16)  # face-parsing necklace and cloth, excluded by the "no cloth" metrics
METRIC_NAMES = ("l1", "mse", "psnr", "ssim", "lpips")
OPENING_NAMES = ("psnr_unopened", "psnr_ground_truth_opened")  # score_frame; their means in metrics.json
ERROR_MAP_MAX = 0.5  # the error shown as the top colour of every error map, so frames compare


def lpips_model(conf: Conf, only_json: bool, device: torch.device) -> LPIPS | Unavailable:
    """The LPIPS network of `evaluation.lpips_*_path`, or why there is none."""
    if only_json:
        return Unavailable("no ground truth (--only_json)")
    evaluation = conf.evaluation
    return load_lpips(evaluation.lpips_alexnet_path or None, evaluation.lpips_lin_path or None, device=device)


@torch.no_grad()
def render_test_split(avatar: Avatar, data: FaceDataset, inputs: FrameInputs | None, batch_size: int,
                      device: torch.device, order: torch.Tensor | None = None
                      ) -> Iterator[tuple[FrameBatch, AvatarOutput]]:
    """Every frame of `data` in order (or the frames `order` [N] names), in batches, with the fitted
    inputs applied when there are any."""
    for batch in batches(data, batch_size, torch.arange(len(data)) if order is None else order):
        batch = batch.to(device)
        if inputs is not None:
            batch = inputs.apply(batch)
        yield batch, avatar(batch)


def nocloth_mask(mask: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
    """The mask [H, W] without the pixels whose face-parsing label [H, W] is necklace or cloth."""
    keep = ~torch.isin(semantic, torch.tensor(CLOTH_LABELS, device=semantic.device))
    return mask * keep.to(mask.dtype)


def frame_metrics(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None,
                  lpips: LPIPS | Unavailable) -> dict[str, float | None]:
    """l1, mse, psnr, ssim and lpips (None when there is no LPIPS network) of one frame [H, W, 3]."""
    values: dict[str, float | None] = {k: float(v) for k, v in image_metrics(pred, gt, mask).items()}
    lp = lpips_metric(lpips, pred, gt, mask)
    values["lpips"] = None if isinstance(lp, Unavailable) else float(lp)
    return values


def score_frame(rendering: torch.Tensor, opened: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor,
                semantic: torch.Tensor | None, lpips: LPIPS | Unavailable) -> dict[str, float | None]:
    """The metrics of the erode-dilated rendering [H, W, 3] against the ground truth, and with
    `semantic` [H, W] also without the cloth (keys with the suffix `_nocloth`); beside them the
    PSNR of the rendering itself and of the erode-dilated ground truth (`OPENING_NAMES`)."""
    row = frame_metrics(opened, gt, None, lpips)
    row["psnr_unopened"] = float(psnr(rendering, gt))
    row["psnr_ground_truth_opened"] = float(psnr(erode_dilate(gt), gt))
    if semantic is not None:
        row.update({f"{k}_nocloth": v for k, v in
                    frame_metrics(opened, gt, nocloth_mask(mask, semantic), lpips).items()})
    return row


def write_frame_images(folder: Path, name: str, rendering: torch.Tensor, opened: torch.Tensor,
                       alpha: torch.Tensor, gt: torch.Tensor | None) -> None:
    """The PNGs of one frame: rgb, rgb_erode_dilate, alpha and, with a ground truth, gt and error."""
    save_png(folder / "rgb" / name, rendering)
    save_png(folder / "rgb_erode_dilate" / name, opened)
    save_png(folder / "alpha" / name, alpha[..., None].clamp(0, 1))
    if gt is not None:
        save_png(folder / "gt" / name, gt)
        save_png(folder / "error" / name, error_heatmap(opened, gt, vmax=ERROR_MAP_MAX))


def render_and_score(avatar: Avatar, data: FaceDataset, inputs: FrameInputs | None, folders: dict[str, Path],
                     lpips: LPIPS | Unavailable, batch_size: int, device: torch.device,
                     order: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Render the test split (or the frames `order` [N] names), write each frame's images under the
    folder of its video, and return one row of metrics per frame (none without ground truth)."""
    rows: list[dict[str, Any]] = []
    bar = progress(total=len(data) if order is None else len(order), desc="evaluating", dynamic_ncols=True)
    for batch, out in render_test_split(avatar, data, inputs, batch_size, device, order):
        for b in range(len(batch)):
            rendering = out.rgb[b].clamp(0, 1)
            opened = erode_dilate(rendering)
            gt = None if data.only_json else batch.rgb[b]
            write_frame_images(folders[batch.sub_dir[b]], f"{batch.frame_id[b]}.png", rendering, opened,
                               out.alpha[b], gt)
            if gt is None:
                continue
            semantic = None if batch.semantic is None else batch.semantic[b]
            rows.append({"sub_dir": batch.sub_dir[b], "frame_id": batch.frame_id[b],
                         **score_frame(rendering, opened, gt, batch.mask[b], semantic, lpips)})
        bar.update(out.rgb.shape[0])
    bar.close()
    return rows


def metric_means(rows: list[dict[str, Any]], lpips: LPIPS | Unavailable) -> dict[str, Any]:
    """The mean of each metric over the rows, for all pixels ("all") and without the cloth
    ("no_cloth"); a metric that was not computed says why."""
    columns = rows[0].keys()
    summary: dict[str, Any] = {}
    for suffix, label in (("", "all"), ("_nocloth", "no_cloth")):
        if f"l1{suffix}" not in columns:
            summary[label] = {"unavailable": "the test split has no semantic maps"}
            continue
        means: dict[str, Any] = {}
        for name in METRIC_NAMES:
            values = [r[f"{name}{suffix}"] for r in rows]
            if any(v is None for v in values):
                means[name] = {"unavailable": lpips.reason if isinstance(lpips, Unavailable) else "not computed"}
            else:
                means[name] = float(np.mean(values))
        summary[label] = means
    return summary


def opening_means(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The means of `OPENING_NAMES` over the rows (metrics.json's "opening")."""
    return {name: float(np.mean([r[name] for r in rows])) for name in OPENING_NAMES}


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per frame; a metric that was not computed reads 'unavailable'."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("unavailable" if v is None else v) for k, v in row.items()})


def write_metrics(folder: Path, rows: list[dict[str, Any]], lpips: LPIPS | Unavailable, epoch: int,
                  checkpoint: Path, conf_source: str, fitted: list[str],
                  no_novelty: str | None = None, fit_change: dict[str, float] | None = None) -> dict[str, Any]:
    """metrics.csv and metrics.json of one video's frames, and the summary lines; returns the report.
    Rows that carry their distances to the training frames (flame/novelty.py) get their summary;
    otherwise metrics.json says why not (`no_novelty`). `fit_change`: how far the test-time fit moved
    the frames' inputs from their tracked ones (FrameInputs.change_summary), when they were fitted."""
    folder.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(folder / "metrics.csv", rows)
    summary = metric_means(rows, lpips)
    report = {
        "epoch": epoch,
        "checkpoint": str(checkpoint),
        "conf": conf_source,
        "n_frames": len(rows),
        "test_inputs_fitted": bool(fitted),
        "fitted_inputs": fitted,  # the reference's protocol fits expression and pose
        "fit_change": fit_change or {},
        "metric_input": "rgb_erode_dilate vs ground truth composited on white with its mask",
        "metrics": summary,
        # what the erode-dilation costs: PSNR without it, and of the ground truth through it (the
        # protocol's ceiling); not part of the paper's protocol
        "opening": opening_means(rows),
        "novelty": (novelty.novelty_summary(rows) if novelty.NOVELTY_COLUMNS[0] in rows[0]
                    else {"unavailable": no_novelty or "not computed"}),
    }
    (folder / "metrics.json").write_text(json.dumps(report, indent=2))
    log.info("%s: PSNR %.2f, SSIM %.4f, L1 %.4f over %d frames%s", folder, summary["all"]["psnr"],
             summary["all"]["ssim"], summary["all"]["l1"], len(rows), opening_line(report["opening"]))
    if fit_change:
        log.info("%s: %s", folder, fit_change_line(fit_change))
    if "unavailable" in report["novelty"]:
        log.info("%s: no distances to the training frames: %s", folder, report["novelty"]["unavailable"])
    else:
        log.info("%s: %s", folder, novelty.novelty_line(report["novelty"]))
    return report


def fit_change_line(change: dict[str, float]) -> str:
    """The log's words for FrameInputs.change_summary: mean (largest) change of each fitted input."""
    parts = []
    for key in change:
        if key.endswith("_mean"):
            name = key.removesuffix("_mean")
            unit = "°" if name.endswith("_deg") else ""
            parts.append(f"{name.removesuffix('_deg')} {change[key]:.3g}{unit} "
                         f"(largest {change[name + '_max']:.3g}{unit})")
    return "the fit moved the inputs from the tracked ones by " + ", ".join(parts)


def opening_line(opening: dict[str, float]) -> str:
    """The log's words for `opening_means`."""
    return (f" (without the erode-dilation {opening['psnr_unopened']:.2f}; the ground truth through it "
            f"{opening['psnr_ground_truth_opened']:.2f})")
