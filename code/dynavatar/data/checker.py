"""Dataset checker: every problem of an IMavatar-format dataset at once, each naming file and frame.

Where the reader stops at the first defect, the checker keeps going, so a user fixes a dataset in
one round: missing folders, missing or unreadable images/masks/semantic maps, image and mask of
different sizes, malformed json, wrong expression/pose lengths, bad world_mat shapes, keypoints or
bbox out of range, duplicate frame ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..config import Conf, load_conf
from ..errors import ConfigError, DatasetError
from ..progress import progress
from .flame_params import flame_params_problems, frame_id_of, load_json
from .images import read_labels, read_mask, read_rgb, size_mismatch
from .problems import Problem, frame_label
from .reader import sibling_path

log = logging.getLogger(__name__)

DEFAULT_JSON_NAME = "flame_params.json"
MAX_LABEL = 18  # face-parsing labels 0 (background) .. 18 (hat)
EXIT_CLEAN, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    videos: int = 0
    frames: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems

    def extend(self, other: "CheckReport") -> None:
        self.problems += other.problems
        self.videos += other.videos
        self.frames += other.frames


def _file_problems(path: Path, where: str, reader) -> tuple[Any, list[Problem]]:
    """Decode a file fully (a truncated PNG only fails there) -> (array or None, problems)."""
    try:
        return reader(path), []
    except DatasetError as exc:
        text = str(exc)
        message = text[len(str(path)) + 2:] if text.startswith(f"{path}: ") else text
        return None, [Problem(str(path), message, where)]


def _size_problem(path: Path, what: str, shape: tuple, size: tuple[int, int] | None, where: str) -> list[Problem]:
    """A problem when a map's [h, w] differs from the image's."""
    problem = None if size is None else size_mismatch(what, tuple(shape[:2]), size)
    return [] if problem is None else [Problem(str(path), problem, where)]


def _frame_file_problems(image_path: Path, where: str, check_mask: bool, check_semantic: bool
                         ) -> tuple[list[Problem], tuple[int, int] | None]:
    """Problems of one frame's image, mask and semantic map -> (problems, image (height, width) or None)."""
    problems: list[Problem] = []
    image, found = _file_problems(image_path, where, read_rgb)
    problems += found
    size = image.shape[:2] if image is not None else None
    if check_mask:
        mask_path = sibling_path(image_path, "mask")
        mask, found = _file_problems(mask_path, where, read_mask)
        problems += found
        mismatch = _size_problem(mask_path, "mask", mask.shape, size, where) if mask is not None else []
        problems += mismatch
        if mask is not None and not mismatch and mask.max() <= 0.0:
            problems.append(Problem(str(mask_path), "mask is empty (all zero): no person in this frame", where))
    if check_semantic:
        semantic_path = sibling_path(image_path, "semantic")
        labels, found = _file_problems(semantic_path, where, read_labels)
        problems += found
        if labels is not None:
            problems += _size_problem(semantic_path, "semantic map", labels.shape, size, where)
        if labels is not None and labels.max(initial=0) > MAX_LABEL:
            problems.append(Problem(str(semantic_path), f"label {int(labels.max())} outside the face-parsing "
                                                        f"labels 0..{MAX_LABEL}", where))
    return problems, size


def _listed_images(instance_dir: Path, frames: list) -> list[tuple[Path, str]]:
    """(image path, frame label) of every frame whose file_path is usable (the others are json problems)."""
    listed = []
    for index, frame in enumerate(frames):
        file_path = frame.get("file_path") if isinstance(frame, dict) else None
        if not isinstance(file_path, str):
            continue
        try:
            frame_id = frame_id_of(file_path)
        except ValueError:
            frame_id = None
        listed.append((instance_dir / f"{file_path}.png", frame_label(frame_id, index)))
    return listed


def _missing_folders(listed: list[tuple[Path, str]], json_name: str) -> tuple[set[Path], list[Problem]]:
    """Image/mask folders the json points at that do not exist, each reported once (not once per frame)."""
    missing: set[Path] = set()
    problems = []
    for image_path, _ in listed:
        try:
            folders = [image_path.parent, sibling_path(image_path, "mask").parent]
        except DatasetError as exc:  # file_path not under an image folder
            folders = [image_path.parent]
            if image_path.parent not in missing:
                problems.append(Problem(str(image_path.parent), str(exc).split(": ", 1)[-1]))
                missing.add(image_path.parent)
        for folder in folders:
            if not folder.is_dir() and folder not in missing:
                missing.add(folder)
                problems.append(Problem(str(folder), f"folder not found ({json_name} lists frames in it)"))
    return missing, problems


def check_sub_dir(instance_dir: str | Path, json_name: str = DEFAULT_JSON_NAME) -> CheckReport:
    """All problems of one video folder `<subject>/<subject>/<sub_dir>`."""
    instance_dir = Path(instance_dir)
    report = CheckReport(videos=1)
    if not instance_dir.is_dir():
        report.problems.append(Problem(str(instance_dir), "dataset folder not found"))
        return report
    json_path = instance_dir / json_name
    raw, problems = load_json(json_path)
    report.problems += problems
    if raw is None:
        return report
    report.problems += flame_params_problems(raw, json_path, include_optional=True)
    frames = raw.get("frames") if isinstance(raw, dict) else None
    if not isinstance(frames, list):
        return report

    listed = _listed_images(instance_dir, frames)
    missing, problems = _missing_folders(listed, json_name)
    report.problems += problems
    check_semantic = (instance_dir / "semantic").is_dir()
    first_size = None
    for image_path, where in progress(listed, desc=f"checking {instance_dir.name}", unit="frame", leave=False):
        if image_path.parent in missing:
            continue
        check_mask = sibling_path(image_path, "mask").parent not in missing
        frame_problems, size = _frame_file_problems(image_path, where, check_mask, check_semantic)
        report.problems += frame_problems
        report.frames += 1
        first_size = first_size or size
        if size is not None and size != first_size:
            report.problems.append(Problem(str(image_path), f"image size {size[1]}x{size[0]} differs from the "
                                                            f"video's first frame ({first_size[1]}x{first_size[0]})",
                                           where))
    return report


def _looks_like_sub_dir(path: Path, json_name: str) -> bool:
    return (path / json_name).is_file() or (path / "image").is_dir()


def check_subject_dir(subject_dir: str | Path, json_name: str = DEFAULT_JSON_NAME) -> CheckReport:
    """All videos of a subject: `subject_dir` is `<data_folder>/<subject>` or `<data_folder>/<subject>/<subject>`."""
    subject_dir = Path(subject_dir)
    inner = subject_dir / subject_dir.name
    root = inner if inner.is_dir() else subject_dir
    report = CheckReport()
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    videos = [p for p in folders if _looks_like_sub_dir(p, json_name)]
    if not videos:
        report.problems.append(Problem(str(root), f"no video folders (with {json_name} or image/) found"))
    for folder in folders:  # a video folder emptied or never filled would otherwise pass unseen
        if folder not in videos:
            state = "empty folder" if not any(folder.iterdir()) else f"folder without {json_name} or image/"
            report.problems.append(Problem(str(folder), f"{state} among the videos: a video folder holds "
                                                        f"{json_name} and image/ (complete it or remove it)"))
    for video in videos:
        report.extend(check_sub_dir(video, json_name))
    return report


def check_path(path: str | Path, json_name: str = DEFAULT_JSON_NAME) -> CheckReport:
    """Check a video folder, a subject folder or a data folder of subjects, whichever `path` is."""
    path = Path(path)
    if not path.is_dir():
        return CheckReport(problems=[Problem(str(path), "folder not found")])
    if _looks_like_sub_dir(path, json_name):
        return check_sub_dir(path, json_name)
    subjects = sorted(p for p in path.iterdir() if (p / p.name).is_dir())
    if not (path / path.name).is_dir() and subjects:  # a data folder: <path>/<subject>/<subject>/...
        report = CheckReport()
        for subject in subjects:
            report.extend(check_subject_dir(subject, json_name))
        return report
    return check_subject_dir(path, json_name)


def check_conf(conf: Conf) -> CheckReport:
    """Check the train and test videos a configuration names."""
    subject = conf.dataset.subject_name
    subject_dir = Path(conf.dataset.data_folder) / subject / subject
    json_name = conf.dataset.json_name
    report = CheckReport()
    seen = set()
    for split in ("train", "test"):
        names = conf.dataset.split(split).sub_dir
        if not names:
            report.problems.append(Problem(f"dataset.{split}.sub_dir", "no video named for this split"))
        for name in names:
            if name not in seen:
                seen.add(name)
                report.extend(check_sub_dir(subject_dir / name, json_name))
    return report


def run_check(conf_path: str | Path | None = None, paths: Sequence[str | Path] = (),
              overrides: Iterable[str] = (), json_name: str | None = None) -> CheckReport:
    """Check what a conf names and/or the given folders; log every problem and a summary."""
    report = CheckReport()
    if conf_path is not None:
        conf = load_conf(conf_path, overrides)
        report.extend(check_conf(conf))
        json_name = json_name or conf.dataset.json_name
    for path in paths:
        report.extend(check_path(path, json_name or DEFAULT_JSON_NAME))
    for problem in report.problems:
        log.error("%s", problem)
    if report.clean:
        log.info("dataset OK: %d video(s), %d frame(s) checked, no problems", report.videos, report.frames)
    else:
        log.error("%d problem(s) found in %d video(s), %d frame(s) checked", len(report.problems), report.videos,
                  report.frames)
    return report


def check_command(conf_path: str | None, paths: Sequence[str], overrides: Sequence[str] = (),
                  json_name: str | None = None) -> int:
    """What `scripts/check_dataset.py` runs -> exit code: 0 clean, 1 problems found, 2 usage error."""
    try:
        report = run_check(conf_path, paths, overrides, json_name)
    except ConfigError as exc:  # bad conf path or key: a usage error, not a dataset problem
        log.error("%s", exc)
        return EXIT_USAGE
    return EXIT_CLEAN if report.clean else EXIT_PROBLEMS
