"""One batch of frames: what the avatar renders (tracked inputs and camera) and, when the split has
images, the ground truth to compare with. The reader returns it, per-frame refinement maps it and
`Avatar.forward` takes it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import torch

from ..config import TrainConf



def frames_per_step(train: TrainConf, n_points: int) -> int:
    """Frames in one step, the paper's rule: min(max_points_training / n_points, max_batch), at least 1.
    Training and the fitting of test-frame inputs both follow it."""
    return max(1, min(train.max_points_training // max(1, n_points), train.max_batch))

@dataclass
class FrameBatch:
    idx: torch.Tensor  # [B] long: positions of the frames in their dataset
    frame_id: list[int]  # ids from the json's file paths (name output files)
    sub_dir: list[str]  # video of each frame
    expression: torch.Tensor  # [B, 50]
    flame_pose: torch.Tensor  # [B, 15]
    world_mat: torch.Tensor  # [B, 3, 4] as stored in flame_params.json
    intrinsics: torch.Tensor  # [B, 4] normalised, fx negated (IMavatar convention); stays on the host
    rgb: torch.Tensor | None = None  # [B, H, W, 3] in [0, 1], on white with the mask unless use_background
    mask: torch.Tensor | None = None  # [B, H, W] in [0, 1]
    semantic: torch.Tensor | None = None  # [B, H, W] long face-parsing labels

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "FrameBatch":
        """The same batch with its tensors on `device`. The intrinsics stay on the host: the
        rasterizer reads them as Python numbers, which from the device would wait for it each frame."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor) and name != "intrinsics":
                moved[name] = value.to(device, non_blocking=non_blocking)
        return FrameBatch(**moved)

    def replace(self, **changes: torch.Tensor) -> "FrameBatch":
        """A copy with some fields replaced (e.g. refined expressions)."""
        return dataclasses.replace(self, **changes)

    @property
    def has_ground_truth(self) -> bool:
        return self.rgb is not None


def collate(items: Sequence[FrameBatch]) -> FrameBatch:
    """Concatenate batches (e.g. single frames from `dataset[i]`) along the frame axis."""
    out = {}
    for f in dataclasses.fields(FrameBatch):
        values = [getattr(item, f.name) for item in items]
        if isinstance(values[0], torch.Tensor):
            out[f.name] = torch.cat(values)
        elif isinstance(values[0], list):
            out[f.name] = [v for value in values for v in value]
        else:
            out[f.name] = None
    return FrameBatch(**out)


class BatchSource(Protocol):
    def batch(self, indices: torch.Tensor) -> FrameBatch: ...


def batches(dataset: BatchSource, batch_size: int, order: torch.Tensor) -> Iterator[FrameBatch]:
    """Batches of `dataset` in the given order [N] of frame indices. The loader stays in this
    process: images are small and preloaded, and workers would break bitwise resumes."""
    for start in range(0, len(order), batch_size):
        yield dataset.batch(order[start:start + batch_size])
