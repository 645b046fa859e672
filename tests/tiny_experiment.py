"""The tiny experiment that the training, option and reliability tests share: the demo conf on a
small synthetic subject at 32x32 pixels (the subject is conftest.py's `data_folder` fixture)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from dynavatar.config import Conf, load_conf
from dynavatar.subject_generator import generate_subject

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "confs" / "demo.conf")
SUBJECT = "tiny"
SPLIT = "MVI_1810+MVI_1814"  # the demo's training videos, joined as the experiment folder names them


def write_tiny_subject(root: Path) -> Path:
    """The synthetic subject at 32 px, 6 frames a video (12 training frames); returns its data folder."""
    generate_subject(root, SUBJECT, res=32, frames=6, seed=3)
    return root


def tiny_overrides(data_folder: Path, exps: Path, *extra: str) -> list[str]:
    """Overrides of the demo conf for the tiny subject: 100 points grown to 200 at epoch 1, per-frame
    inputs refined from the first epoch, plots only at a run's end; `extra` after them (they win)."""
    return [f"dataset.data_folder={data_folder}", f"dataset.subject_name={SUBJECT}", "dataset.synthetic=false",
            "dataset.train.img_res=[32, 32]", "dataset.test.img_res=[32, 32]", f"train.exps_folder={exps}",
            "train.plot_freq=100", "train.optimize_inputs_after_epoch=0",
            "model.point_cloud.n_init_points=100", "model.point_cloud.max_points=200",
            "model.point_cloud.schedule_epochs=[1]", "model.point_cloud.schedule_points=[200]",
            "model.point_cloud.radius_factors=[0.75]", "evaluation.test_fit_steps=1", *extra]


def tiny_conf(data_folder: Path, exps: Path, *extra: str) -> Conf:
    """The demo conf with `tiny_overrides`."""
    return load_conf(DEMO, tiny_overrides(data_folder, exps, *extra))


def experiment_root(exps: Path, method: str = "demo") -> Path:
    """<exps>/<subject>/<method>/<split>: the folder of one experiment on the tiny subject."""
    return exps / SUBJECT / method / SPLIT


def rewrite_part(path: Path, payload: dict) -> None:
    """Replace the checkpoint part file `path` (<checkpoints>/<part>/<tag>.pth) as if its save had
    written `payload`: the sha256 its checkpoint's record holds is updated too (a file changed behind
    its record's back is refused as damaged)."""
    torch.save(payload, path)
    record = path.parents[1] / f"{path.stem}.json"
    if record.is_file():
        content = json.loads(record.read_text())
        if path.parent.name in content.get("sha256", {}):
            content["sha256"][path.parent.name] = hashlib.sha256(path.read_bytes()).hexdigest()
            record.write_text(json.dumps(content))
