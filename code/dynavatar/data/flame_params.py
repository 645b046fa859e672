"""`flame_params.json`: parse, validate and normalise the per-video FLAME tracking file.

Works on a json alone (no images), so reenactment can drive an avatar with another video's
expressions and poses. See docs/DATA_FORMAT.md for the fields.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .problems import Problem, frame_label, raise_first

log = logging.getLogger(__name__)

N_EXPRESSION = 50
N_POSE = 15  # global, neck, jaw, left eye, right eye (axis-angle each)
N_SHAPE = 100
KEYPOINT_COUNTS = (68, 70)  # 70 = 68 plus the two irises
# Old IMavatar files hold pixel intrinsics of a 512 px video.
LEGACY_INTRINSICS_RES = 512.0
# Keypoints and bboxes are in [-1, 1]; allow rounding noise only.
RANGE_TOLERANCE = 1e-3


@dataclass
class FlameParams:
    """The content of one flame_params.json, as tensors; intrinsics always in the normalised format."""

    json_path: Path
    expressions: torch.Tensor  # [N, 50]
    poses: torch.Tensor  # [N, 15]
    world_mats: torch.Tensor  # [N, 3, 4] world-to-camera as stored
    intrinsics: torch.Tensor  # [4] [fx/W (negated), fy/H, cx/W, cy/H]
    shape_params: torch.Tensor  # [100]
    frame_ids: list[int]  # int(file_path.split('/')[-1])
    file_paths: list[str]  # "./image/<k>" as stored (no extension)
    frames: list[dict] = field(repr=False)  # the raw per-frame dicts (bbox, flame_keypoints, ...)
    legacy_intrinsics: bool = False  # True when the file held 512 px pixel intrinsics

    def __len__(self) -> int:
        return len(self.frame_ids)


def frame_id_of(file_path: str) -> int:
    """The frame id used for output file names: the number after the last '/' of `file_path`."""
    return int(str(file_path).split("/")[-1])


def load_json(json_path: str | Path) -> tuple[Any, list[Problem]]:
    """Parse a json file -> (content or None, problems): missing file or malformed json."""
    json_path = Path(json_path)
    if not json_path.is_file():
        return None, [Problem(str(json_path), "flame_params json not found")]
    try:
        with open(json_path, encoding="utf-8") as handle:
            return json.load(handle), []
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, [Problem(str(json_path), f"malformed json ({exc})")]
    except OSError as exc:
        return None, [Problem(str(json_path), f"cannot read the file ({exc})")]


def _numbers(value: Any, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    """A nested list of finite numbers with the given shape -> float64 array, else None."""
    if isinstance(value, (str, bytes, dict)) or value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):  # ragged lists or non-numbers
        return None
    if shape is not None and arr.shape != shape:
        return None
    if not np.all(np.isfinite(arr)):
        return None
    return arr


def _describe(value: Any) -> str:
    """What a value that is not the numbers wanted is: its shape, or where it is not finite."""
    try:
        arr = np.asarray(value, dtype=object)
    except (TypeError, ValueError):
        return type(value).__name__
    if not arr.ndim:
        return repr(value)[:40]
    try:
        numbers = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return f"shape {list(arr.shape)}"
    bad = np.argwhere(~np.isfinite(numbers))
    if len(bad):  # json.load reads NaN and Infinity
        where = list(map(int, bad[0]))
        return (f"{numbers[tuple(where)]} at index {where[0] if len(where) == 1 else where}"
                + (f" (and {len(bad) - 1} more non-finite value(s))" if len(bad) > 1 else ""))
    return f"shape {list(arr.shape)}"


def normalise_intrinsics(values: Any) -> tuple[list[float], bool]:
    """Stored intrinsics -> ([fx/W (negated), fy/H, cx/W, cy/H], legacy?).

    Old IMavatar files store pixel values of a 512 px video; they are recognised by a principal
    point outside [0, 1] (normalised focal lengths are > 1 too, so only cx, cy tell the formats apart).
    """
    fx, fy, cx, cy = (float(v) for v in values)
    if abs(cx) > 1.0 or abs(cy) > 1.0:
        return [fx / LEGACY_INTRINSICS_RES, fy / LEGACY_INTRINSICS_RES, cx / LEGACY_INTRINSICS_RES,
                cy / LEGACY_INTRINSICS_RES], True
    return [fx, fy, cx, cy], False


def _top_level_problems(raw: Any, path: str) -> list[Problem]:
    if not isinstance(raw, dict):
        return [Problem(path, f"the json must be an object with 'frames', 'intrinsics' and 'shape_params', "
                              f"got {type(raw).__name__}")]
    problems = []
    for key in ("frames", "intrinsics", "shape_params"):
        if key not in raw:
            problems.append(Problem(path, f"missing top-level key '{key}'"))
    if "frames" in raw and not isinstance(raw["frames"], list):
        problems.append(Problem(path, "'frames' must be a list of frames"))
    if "intrinsics" in raw:
        intr = _numbers(raw["intrinsics"], (4,))
        if intr is None:
            problems.append(Problem(path, f"'intrinsics' must be 4 finite numbers [fx/W, fy/H, cx/W, cy/H], "
                                          f"got {_describe(raw['intrinsics'])}"))
        else:
            norm, _ = normalise_intrinsics(intr)
            if norm[0] >= 0:
                problems.append(Problem(path, f"'intrinsics' fx must be negative (stored negated, NerFace "
                                              f"convention), got {intr[0]:g}"))
            if norm[1] <= 0:
                problems.append(Problem(path, f"'intrinsics' fy must be positive, got {intr[1]:g}"))
    if "shape_params" in raw and _numbers(raw["shape_params"], (N_SHAPE,)) is None:
        problems.append(Problem(path, f"'shape_params' must be {N_SHAPE} finite numbers, "
                                      f"got {_describe(raw['shape_params'])}"))
    return problems


def _in_range(arr: np.ndarray) -> bool:
    return bool(np.all(np.abs(arr) <= 1.0 + RANGE_TOLERANCE))


def _frame_problems(frame: Any, index: int, path: str, include_optional: bool) -> tuple[int | None, list[Problem]]:
    """Problems of one frame dict -> (its frame id or None, problems)."""
    if not isinstance(frame, dict):
        return None, [Problem(path, f"a frame must be an object, got {type(frame).__name__}", f"frames[{index}]")]
    frame_id = None
    problems = []
    file_path = frame.get("file_path")
    if not isinstance(file_path, str):
        problems.append(Problem(path, "missing or non-text 'file_path' (expected './image/<k>')", f"frames[{index}]"))
    else:
        try:
            frame_id = frame_id_of(file_path)
        except ValueError:
            problems.append(Problem(path, f"'file_path' {file_path!r} does not end in a frame number "
                                          f"(expected './image/<k>')", f"frames[{index}]"))
    where = frame_label(frame_id, index)
    required = (("world_mat", (3, 4), "a 3x4 [R | t] matrix"),
                ("expression", (N_EXPRESSION,), f"{N_EXPRESSION} finite numbers"),
                ("pose", (N_POSE,), f"{N_POSE} finite numbers (5 joints x axis-angle)"))
    for key, shape, wanted in required:
        if key not in frame:
            problems.append(Problem(path, f"missing '{key}'", where))
        elif _numbers(frame[key], shape) is None:
            problems.append(Problem(path, f"'{key}' must be {wanted}, got {_describe(frame[key])}", where))
    if not include_optional:
        return frame_id, problems
    if "bbox" in frame:
        bbox = _numbers(frame["bbox"], (4,))
        if bbox is None:
            problems.append(Problem(path, f"'bbox' must be 4 numbers [xmin, ymin, xmax, ymax], "
                                          f"got {_describe(frame['bbox'])}", where))
        elif not _in_range(bbox) or bbox[0] > bbox[2] or bbox[1] > bbox[3]:
            problems.append(Problem(path, f"'bbox' {np.round(bbox, 3).tolist()} out of range: expected "
                                          f"xmin <= xmax, ymin <= ymax in [-1, 1]", where))
    if "flame_keypoints" in frame:
        keypoints = _numbers(frame["flame_keypoints"])
        if keypoints is None or keypoints.ndim != 2 or keypoints.shape[0] not in KEYPOINT_COUNTS \
                or keypoints.shape[1] != 2:
            problems.append(Problem(path, f"'flame_keypoints' must be 68 (or 70) x 2 finite numbers, "
                                          f"got {_describe(frame['flame_keypoints'])}", where))
        elif not _in_range(keypoints):
            worst = int(np.argmax(np.abs(keypoints).max(axis=1)))
            problems.append(Problem(path, f"'flame_keypoints' out of the image range [-1, 1] (keypoint {worst} at "
                                          f"{np.round(keypoints[worst], 3).tolist()})", where))
    return frame_id, problems


def flame_params_problems(raw: Any, json_path: str | Path, include_optional: bool = True) -> list[Problem]:
    """Every defect of a parsed flame_params.json. `include_optional` adds the fields training does not
    need (bbox, flame_keypoints) and duplicate frame ids."""
    path = str(json_path)
    problems = _top_level_problems(raw, path)
    if not isinstance(raw, dict) or not isinstance(raw.get("frames"), list):
        return problems
    if not raw["frames"]:
        problems.append(Problem(path, "'frames' is empty"))
    seen: dict[int, int] = {}
    for index, frame in enumerate(raw["frames"]):
        frame_id, frame_problems = _frame_problems(frame, index, path, include_optional)
        problems.extend(frame_problems)
        if frame_id is None:
            continue
        if include_optional and frame_id in seen:
            problems.append(Problem(path, f"duplicate frame id {frame_id} (also frames[{seen[frame_id]}])",
                                    f"frames[{index}]"))
        seen.setdefault(frame_id, index)
    return problems


def read_flame_params(json_path: str | Path) -> FlameParams:
    """Read one flame_params.json (no images needed); raise DatasetError naming the file and frame
    of the first defect a reader cannot work around."""
    json_path = Path(json_path)
    raw, problems = load_json(json_path)
    raise_first(problems)
    raise_first(flame_params_problems(raw, json_path, include_optional=False))
    frames = raw["frames"]
    intrinsics, legacy = normalise_intrinsics(raw["intrinsics"])
    if legacy:
        log.info("%s: old-format pixel intrinsics (512 px) normalised to %s", json_path,
                 [round(v, 4) for v in intrinsics])
    return FlameParams(
        json_path=json_path,
        expressions=torch.tensor([f["expression"] for f in frames], dtype=torch.float32).reshape(-1, N_EXPRESSION),
        poses=torch.tensor([f["pose"] for f in frames], dtype=torch.float32).reshape(-1, N_POSE),
        world_mats=torch.tensor([f["world_mat"] for f in frames], dtype=torch.float32).reshape(-1, 3, 4),
        intrinsics=torch.tensor(intrinsics, dtype=torch.float32),
        shape_params=torch.tensor(raw["shape_params"], dtype=torch.float32),
        frame_ids=[frame_id_of(f["file_path"]) for f in frames],
        file_paths=[f["file_path"] for f in frames],
        frames=frames,
        legacy_intrinsics=legacy,
    )
