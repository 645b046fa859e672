"""The IMavatar-format dataset reader: frames of one subject's videos as (input, ground truth) pairs.

Layout: `<data_folder>/<subject>/<subject>/<sub_dir>/{image,mask,semantic}/<k>.png` and
`<sub_dir>/<json_name>` (see docs/DATA_FORMAT.md). Every defect a user can cause raises one DatasetError
naming the file and frame; `scripts/check_dataset.py` lists all of them at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..config import Conf
from ..errors import ConfigError, DatasetError
from ..progress import progress
from ..runtime import to_device_unblocked
from .batch import FrameBatch
from .flame_params import N_EXPRESSION, read_flame_params
from .images import check_header, read_labels, read_mask, read_rgb, resize, resize_labels, size_mismatch, to_uint8
from .problems import Problem, raise_first
from .subsample import select_frames

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
LAYOUT_HINT = ("expected <data_folder>/<subject_name>/<subject_name>/<sub_dir>/ (dataset.data_folder, "
               "dataset.subject_name, dataset.<split>.sub_dir); a synthetic subject can be made with "
               "scripts/make_synthetic_subject.py")


@dataclass(frozen=True)
class FrameRecord:
    """Where one frame lives and who it is."""

    sub_dir: str
    frame_id: int  # int(file_path.split('/')[-1]): names output files
    file_path: str  # as stored in the json, e.g. "./image/12"
    json_path: Path
    json_index: int  # position in the json's frame list
    image_path: Path
    mask_path: Path
    semantic_path: Path

    def describe(self) -> str:
        return f"{self.sub_dir} frame {self.frame_id}"


def sibling_path(image_path: Path, folder: str) -> Path:
    """The same frame in another folder: only the image's own folder name changes ('image' -> `folder`),
    never an 'image' elsewhere in the path (which the reference loaders' str.replace gets wrong)."""
    parent = image_path.parent
    if "image" not in parent.name:
        raise DatasetError(f"{image_path}: cannot locate its {folder}: the frame's folder '{parent.name}' is "
                           f"not an image folder (file_path should be './image/<k>')")
    return parent.parent / parent.name.replace("image", folder) / image_path.name


def frame_records(instance_dir: Path, sub_dir: str, json_path: Path, file_paths: Sequence[str],
                  frame_ids: Sequence[int], need_files: bool = True) -> list[FrameRecord]:
    """FrameRecords of one video from its json's file paths. Without `need_files` (only_json), a
    file_path outside an image folder is tolerated: its mask and semantic paths are the image's."""
    records = []
    for index, (file_path, frame_id) in enumerate(zip(file_paths, frame_ids)):
        image_path = instance_dir / f"{file_path}.png"
        if need_files or "image" in image_path.parent.name:
            mask_path, semantic_path = sibling_path(image_path, "mask"), sibling_path(image_path, "semantic")
        else:
            mask_path = semantic_path = image_path
        records.append(FrameRecord(sub_dir, frame_id, file_path, json_path, index, image_path, mask_path,
                                   semantic_path))
    return records


def load_frame_arrays(record: FrameRecord, img_res: Sequence[int], with_semantic: bool
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Decode and resize one frame -> (rgb [H, W, 3] uint8, mask [H, W] uint8, labels [H, W] uint8 or None).

    Kept as 8 bits, what the PNGs hold, so that preloading costs 4 bytes a pixel and the preloaded
    and lazily read datasets return identical values."""
    try:
        image, mask = read_rgb(record.image_path), read_mask(record.mask_path)
        labels = read_labels(record.semantic_path) if with_semantic else None
        for path, what, array in ((record.mask_path, "mask", mask), (record.semantic_path, "semantic map", labels)):
            problem = None if array is None else size_mismatch(what, array.shape[:2], image.shape[:2])
            if problem:
                raise DatasetError(f"{path}: {problem}")
    except DatasetError as exc:
        raise DatasetError(f"{record.describe()}: {exc}") from None
    return (to_uint8(resize(image, img_res)), to_uint8(resize(mask, img_res)),
            None if labels is None else resize_labels(labels, img_res))


class FaceDataset(torch.utils.data.Dataset):
    """Frames of `sub_dir` videos of one subject, served as `FrameBatch`es.

    `batch(indices)` gathers several frames at once (from the preloaded 8-bit images when
    `load_images`, else read from disk); `dataset[i]` is the batch of frame i alone.
    Without images (`only_json`) the batches carry no ground truth.
    `is_eval` is recorded for callers; `dataset_from_conf` uses it to read every test frame.
    """

    def __init__(self, data_folder: str | Path, subject_name: str, json_name: str, sub_dir: Sequence[str] | str,
                 img_res: Sequence[int], subsample: int | list = 1, load_images: bool = False,
                 use_mean_expression: bool = False, use_var_expression: bool = False, use_background: bool = False,
                 only_json: bool = False, is_eval: bool = False):
        self.img_res = (int(img_res[0]), int(img_res[1]))  # (H, W)
        self.use_background = use_background
        self.only_json = only_json
        self.is_eval = is_eval
        sub_dirs = [sub_dir] if isinstance(sub_dir, str) else [str(s) for s in sub_dir]
        if not sub_dirs:
            raise DatasetError(f"no sub_dir given for subject '{subject_name}': {LAYOUT_HINT}")
        self.subject_dir = Path(data_folder) / subject_name / subject_name

        records, expressions, poses, world_mats, intrinsics = [], [], [], [], []
        self.shape_params: torch.Tensor | None = None  # [100]
        for name in sub_dirs:
            instance_dir = self.subject_dir / name
            if not instance_dir.is_dir():
                raise DatasetError(f"{instance_dir}: dataset folder not found; {LAYOUT_HINT}")
            params = read_flame_params(instance_dir / json_name)
            records += frame_records(instance_dir, name, params.json_path, params.file_paths, params.frame_ids,
                                     need_files=not only_json)
            expressions.append(params.expressions)
            poses.append(params.poses)
            world_mats.append(params.world_mats)
            intrinsics.append(params.intrinsics.expand(len(params), 4))
            if self.shape_params is None:
                self.shape_params = params.shape_params
            elif not torch.allclose(self.shape_params, params.shape_params, atol=1e-5):
                log.warning("%s: shape_params differ from those of %s; using the first video's",
                            params.json_path, sub_dirs[0])

        keep = torch.tensor(select_frames(len(records), subsample), dtype=torch.long)
        self.frames: list[FrameRecord] = [records[i] for i in keep.tolist()]
        self.expressions = torch.cat(expressions)[keep]  # [N, 50]
        self.flame_poses = torch.cat(poses)[keep]  # [N, 15]
        self.world_mats = torch.cat(world_mats)[keep]  # [N, 3, 4]
        self.frame_intrinsics = torch.cat(intrinsics)[keep]  # [N, 4]
        self.intrinsics = self.frame_intrinsics[0].clone()  # [4] of the first frame (one camera per subject)

        # Canonical expression and blendshape-prior weights come from these (training) frames.
        self.mean_expression = (self.expressions.mean(0) if use_mean_expression
                                else torch.zeros(N_EXPRESSION))  # [50]
        # [50]; None when disabled: the blendshape prior is then not divided by it (as in the paper's code).
        self.var_expression = self.expressions.var(0) if use_var_expression and len(self.frames) > 1 else None
        if use_var_expression and self.var_expression is None:
            log.warning("one frame only: expression variance undefined, use_var_expression ignored")

        self.has_semantic = False
        # Preloaded 8-bit images (what the PNGs hold: 4 bytes a pixel): rgb [N, H, W, 3], mask [N, H, W],
        # labels [N, H, W] or None.
        self._cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        if not only_json:
            self._check_files_exist()
            self.has_semantic = self._semantic_present(sub_dirs)
            if load_images:
                arrays = [load_frame_arrays(r, self.img_res, self.has_semantic)
                          for r in progress(self.frames, desc=f"loading {subject_name} images", unit="frame")]
                self._cache = _stack_frames(arrays)

    def _check_files_exist(self) -> None:
        problems = []
        for record in self.frames:
            for path, what in ((record.image_path, "image"), (record.mask_path, "mask")):
                if not path.is_file():
                    problems.append(Problem(str(path), f"{what} not found (listed in {record.json_path.name} "
                                                       f"as {record.file_path!r})", record.describe()))
        raise_first(problems)

    def check_headers(self) -> None:
        """Check that every frame's image and mask (and semantic map, when used) can be opened, reading
        their headers only: a defect stops a run before training, not when a batch first needs the frame.
        Preloaded images were decoded already."""
        if self.only_json or self._cache is not None:
            return
        problems = []
        for record in self.frames:
            files = [(record.image_path, "image"), (record.mask_path, "mask")]
            if self.has_semantic:
                files.append((record.semantic_path, "semantic map"))
            image_size = None
            for path, what in files:
                try:
                    size = check_header(path, what)
                except DatasetError as exc:
                    problems.append(Problem(str(path), str(exc)[len(str(path)) + 2:], record.describe()))
                    continue
                image_size = image_size or size
                problem = size_mismatch(what, size, image_size)
                if problem:
                    problems.append(Problem(str(path), problem, record.describe()))
        raise_first(problems)

    def _semantic_present(self, sub_dirs: list[str]) -> bool:
        """Semantic maps are used when every selected frame has one; a partial set is ignored with a warning."""
        if not any((self.subject_dir / name / "semantic").is_dir() for name in sub_dirs):
            return False
        missing = [r for r in self.frames if not r.semantic_path.is_file()]
        if missing:
            log.warning("%d frame(s) lack a semantic map (first: %s); semantic maps are not used",
                        len(missing), missing[0].semantic_path)
            return False
        return True

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> FrameBatch:
        return self.batch(torch.tensor([i]))

    @property
    def device(self) -> torch.device:
        return self.expressions.device

    def preloaded_bytes(self) -> int:
        """Size of the preloaded 8-bit images (0 when they are read from disk per batch)."""
        return 0 if self._cache is None else sum(t.numel() * t.element_size() for t in self._cache if t is not None)

    def to(self, device: torch.device | str) -> "FaceDataset":
        """Keep the per-frame inputs and the preloaded images on `device`, so that batches are gathered
        and composited there (the intrinsics stay on the host, see FrameBatch). Returns self."""
        self.expressions, self.flame_poses, self.world_mats = (
            t.to(device) for t in (self.expressions, self.flame_poses, self.world_mats))
        if self._cache is not None:
            self._cache = tuple(None if t is None else t.to(device) for t in self._cache)
        return self

    def batch(self, indices: torch.Tensor | Sequence[int]) -> FrameBatch:
        """The frames at `indices` [B] (positions in this dataset)."""
        host_idx = torch.as_tensor(indices, dtype=torch.long).cpu().reshape(-1)
        records = [self.frames[i] for i in host_idx.tolist()]
        idx = to_device_unblocked(host_idx, self.device)
        batch = FrameBatch(idx=idx, frame_id=[r.frame_id for r in records], sub_dir=[r.sub_dir for r in records],
                           expression=self.expressions[idx], flame_pose=self.flame_poses[idx],
                           world_mat=self.world_mats[idx], intrinsics=self.frame_intrinsics[host_idx])
        if self.only_json:
            return batch
        if self._cache is not None:
            rgb8, mask8, labels = (None if t is None else t[idx] for t in self._cache)
        else:
            rgb8, mask8, labels = (None if t is None else t.to(self.device) for t in _stack_frames(
                [load_frame_arrays(r, self.img_res, self.has_semantic) for r in records]))
        rgb = rgb8.float() / 255.0  # [B, H, W, 3]
        mask = mask8.float() / 255.0  # [B, H, W]
        if not self.use_background:
            rgb = rgb * mask[..., None] + (1.0 - mask[..., None])
        return batch.replace(rgb=rgb, mask=mask, semantic=None if labels is None else labels.long())


def _stack_frames(arrays: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-frame uint8 arrays -> stacked uint8 tensors (rgb [N, H, W, 3], mask [N, H, W], labels or None)."""
    rgb = torch.from_numpy(np.stack([a[0] for a in arrays]))
    mask = torch.from_numpy(np.stack([a[1] for a in arrays]))
    labels = None if arrays[0][2] is None else torch.from_numpy(np.stack([a[2] for a in arrays]))
    return rgb, mask, labels


def dataset_from_conf(conf: Conf, split: str, **overrides: Any) -> FaceDataset:
    """The `split` ('train' | 'test') dataset described by `conf.dataset`; keyword overrides win
    (e.g. only_json=True, subsample=1). With is_eval=True and no subsample override every frame is read."""
    if split not in SPLITS:
        raise ConfigError(f"dataset split must be one of {SPLITS}, got {split!r}")
    data, split_conf = conf.dataset, conf.dataset.split(split)
    kwargs = dict(
        data_folder=data.data_folder, subject_name=data.subject_name, json_name=data.json_name,
        sub_dir=list(split_conf.sub_dir), img_res=list(split_conf.img_res),
        subsample=list(split_conf.subsample) if isinstance(split_conf.subsample, tuple) else split_conf.subsample,
        load_images=split_conf.load_images, use_mean_expression=data.use_mean_expression,
        use_var_expression=data.use_var_expression, use_background=data.use_background,
    )
    if overrides.get("is_eval") and "subsample" not in overrides:
        kwargs["subsample"] = 1  # evaluation always uses every frame (the conf's subsample is for plots)
    kwargs.update(overrides)
    if not kwargs["sub_dir"]:
        raise ConfigError(f"dataset.{split}.sub_dir is empty: name the videos of the {split} split")
    return FaceDataset(**kwargs)
