"""The experiment folder layout users know from the paper.

<exps_folder>/<subject>/<methodname>/<train sub_dirs joined by +>/
    train/runconf.conf
    train/checkpoints/<part>/{latest, N}.pth
    train/tensorboard/
    eval/<test sub_dir>/epoch_<N>/
    eval/<other subject>/<test sub_dir>/epoch_<N>/   the checkpoint evaluated on another subject's videos
<exps_folder>/<subject>/<methodname>/<split>.lock   while a run writes the experiment (lock.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Conf, load_conf
from ..errors import ConfigError


@dataclass(frozen=True)
class ExperimentPaths:
    root: Path  # <exps_folder>/<subject>/<methodname>/<train split>

    @classmethod
    def from_conf(cls, conf: Conf) -> "ExperimentPaths":
        split = "+".join(conf.dataset.train.sub_dir)
        return cls(Path(conf.train.exps_folder) / conf.dataset.subject_name / conf.train.methodname / split)

    @classmethod
    def owning(cls, checkpoints: Path) -> "ExperimentPaths":
        """The experiment that owns a checkpoints folder: <root>/train/checkpoints gives <root>; a
        folder of another layout is its own root (its results go to <folder>/eval)."""
        if checkpoints.name == "checkpoints" and checkpoints.parent.name == "train":
            return cls(checkpoints.parent.parent)
        return cls(checkpoints)

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def checkpoints(self) -> Path:
        return self.train_dir / "checkpoints"

    @property
    def runconf(self) -> Path:
        return self.train_dir / "runconf.conf"

    @property
    def tensorboard(self) -> Path:
        return self.train_dir / "tensorboard"

    def eval_epoch_dir(self, sub_dir: str, epoch: int, subject: str | None = None) -> Path:
        """Where the evaluation of test video `sub_dir` at `epoch` goes; `subject` names another
        subject than the one trained on, whose videos may share the trained subject's names."""
        return (self.eval_dir if subject is None else self.eval_dir / subject) / sub_dir / f"epoch_{epoch}"

    def trained_conf(self) -> Conf | None:
        """The conf the experiment was trained with (its runconf), or None without a readable one."""
        if not self.runconf.is_file():
            return None
        try:
            return load_conf(self.runconf)
        except ConfigError:
            return None
