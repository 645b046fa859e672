"""Generating the synthetic subject a conf asks for (`dataset.synthetic = true`) when it is missing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config import as_list

log = logging.getLogger(__name__)


def ensure_synthetic_subject(conf: Any) -> Path | None:
    """With `dataset.synthetic`, write the subject (train and test videos of the conf, at the train
    resolution) unless every video folder already exists; returns its folder, or None when the conf
    names a real dataset."""
    dataset = conf.get("dataset")
    if not dataset["synthetic"]:
        return None
    subject = str(dataset["subject_name"])
    root = Path(dataset["data_folder"])
    train, test = [str(s) for s in as_list(dataset["train"]["sub_dir"])], [str(s) for s in as_list(dataset["test"]["sub_dir"])]
    folder = root / subject / subject
    if all((folder / name / str(dataset["json_name"])).is_file() for name in train + test):
        return root / subject
    from .synthetic_subject import generate_subject  # the mesh renderer is only needed here

    flame_path = conf.get("model.flame_model_path")
    log.info("generating the synthetic subject %s in %s (first use)", subject, root)
    return generate_subject(root, subject, res=int(dataset["train"]["img_res"][0]),
                            frames=int(dataset["synthetic_frames"]), seed=int(dataset["synthetic_seed"]),
                            flame_model_path=None if flame_path == "synthetic" else flame_path,
                            train_videos=train, test_videos=test, overwrite=True)
