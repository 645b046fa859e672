"""The sequences that can drive the avatar in the viewer: the subject's training and test videos (as
the conf names them) and other subjects' flame_params.json (`--drive`, as reenactment reads them)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..config import Conf
from ..data.flame_params import FlameParams, read_flame_params
from ..evaluate.animation import sequence_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriveSequence:
    """A named sequence of FLAME expressions, poses and cameras."""

    name: str  # what the viewer lists: "<split>: <video>" or "drive: <video>"
    params: FlameParams

    def __len__(self) -> int:
        return len(self.params)

    def frame(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(expression [50], FLAME pose [15]) of the k-th frame."""
        return self.params.expressions[k], self.params.poses[k]


def video_json(conf: Conf, sub_dir: str) -> Path:
    """The flame_params.json of one of the conf's subject's videos."""
    data = conf.dataset
    return Path(data.data_folder) / data.subject_name / data.subject_name / sub_dir / data.json_name


def subject_sequences(conf: Conf) -> list[DriveSequence]:
    """The conf's training and test videos whose flame_params.json exists (a missing one is logged)."""
    out = []
    for split in ("train", "test"):
        for sub_dir in getattr(conf.dataset, split).sub_dir:
            path = video_json(conf, sub_dir)
            if path.is_file():
                out.append(DriveSequence(f"{split}: {sub_dir}", read_flame_params(path)))
            else:
                log.info("no %s: the %s video %s is not offered", path, split, sub_dir)
    return out


def drive_sequences(paths: Sequence[str | Path]) -> list[DriveSequence]:
    """Sequences of other flame_params.json files (a defect is one DatasetError naming the file)."""
    return [DriveSequence(f"drive: {sequence_name(p)}", read_flame_params(p)) for p in paths]
