"""Animating a trained avatar and writing what it looks like: the avatar posed by an expression and
a FLAME pose (as a standard 3DGS .ply), the turntable (the camera orbiting the canonical avatar),
the test split's comparison video (ground truth | rendering | error), and reenactment (the avatar
driven by another sequence's flame_params.json)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator, Sequence

import imageio.v2 as imageio
import numpy as np
import torch

from ..data.batch import FrameBatch
from ..data.flame_params import FlameParams, read_flame_params
from ..export.images import save_png, side_by_side
from ..export.ply import save_gaussians_ply
from ..export.video import write_mp4
from ..flame.lbs import axis_angle_to_matrix
from ..model.avatar import Avatar, Gaussians
from ..progress import progress

log = logging.getLogger(__name__)


@torch.no_grad()
def posed_gaussians(avatar: Avatar, expression: torch.Tensor, pose: torch.Tensor) -> Gaussians:
    """Activated Gaussians [N, ...] of one frame given expression [E] and FLAME pose [15]."""
    device = avatar.canonical_expression.device
    gaussians, _ = avatar.deform(expression[None].to(device), pose[None].to(device))
    return gaussians.frame(0)


def save_posed_ply(avatar: Avatar, path: Path, expression: torch.Tensor | None = None,
                   pose: torch.Tensor | None = None) -> Path:
    """The avatar posed by expression [E] and FLAME pose [15] (by default its canonical ones) as a
    standard 3DGS .ply."""
    g = posed_gaussians(avatar, avatar.canonical_expression if expression is None else expression,
                        avatar.canonical_pose if pose is None else pose)
    return save_gaussians_ply(path, g.means, g.quats, g.scales, g.opacities, g.colors)


def orbit_world_mat(world_mat: torch.Tensor, angle: float) -> torch.Tensor:
    """The stored camera [3, 4] turned about the head's vertical axis by `angle` (radians)."""
    rotation = axis_angle_to_matrix(torch.tensor([0.0, angle, 0.0], dtype=world_mat.dtype))
    out = world_mat.clone()
    out[:, :3] = world_mat[:, :3] @ rotation.to(world_mat)
    return out


@torch.no_grad()
def turntable_frames(avatar: Avatar, world_mat: torch.Tensor, intrinsics: torch.Tensor,
                     n: int) -> Iterator[np.ndarray]:
    """n frames [H, W, 3] uint8 of the camera [3, 4] orbiting the avatar at its canonical expression,
    mouth closed."""
    device = avatar.canonical_expression.device
    expression = avatar.canonical_expression[None]
    pose = torch.zeros(1, 15, device=device)
    gaussians, _ = avatar.deform(expression, pose)
    for k in range(n):
        camera = avatar.camera(orbit_world_mat(world_mat, 2 * math.pi * k / n).to(device), intrinsics.to(device))
        rgb, _, _ = avatar.render(gaussians, [camera])
        yield (rgb[0].clamp(0, 1) * 255).round().byte().cpu().numpy()


def comparison_frames(folder: Path, frame_ids: Sequence[int], with_ground_truth: bool) -> Iterator[np.ndarray]:
    """Frames [H, W', 3] uint8 of ground truth | rendering | error side by side (the rendering alone
    without ground truth), read from the PNGs the metrics report wrote under `folder`."""
    parts = ("gt", "rgb", "error") if with_ground_truth else ("rgb",)
    for frame_id in frame_ids:
        images = [imageio.imread(folder / part / f"{frame_id}.png")[..., :3] for part in parts]
        yield side_by_side([torch.from_numpy(image) for image in images]).numpy()


def write_videos(folder: Path, avatar: Avatar, frame_ids: Sequence[int], with_ground_truth: bool,
                 world_mat: torch.Tensor, intrinsics: torch.Tensor, turntable: int, fps: float) -> None:
    """video.mp4 (the comparison of the frames `frame_ids`) and turntable.mp4 (`turntable` frames
    around the camera world_mat [3, 4], intrinsics [4]) under `folder`."""
    write_mp4(folder / "video.mp4", comparison_frames(folder, frame_ids, with_ground_truth), fps=fps)
    write_mp4(folder / "turntable.mp4", turntable_frames(avatar, world_mat, intrinsics, turntable), fps=fps)


def drive_batches(params: FlameParams, name: str, size: int) -> Iterator[FrameBatch]:
    """The frames of a driving sequence in batches of `size`, as the avatar takes them."""
    for start in range(0, len(params), size):
        stop = min(start + size, len(params))
        yield FrameBatch(idx=torch.arange(start, stop), frame_id=params.frame_ids[start:stop],
                         sub_dir=[name] * (stop - start), expression=params.expressions[start:stop],
                         flame_pose=params.poses[start:stop], world_mat=params.world_mats[start:stop],
                         intrinsics=params.intrinsics.expand(stop - start, 4))


def sequence_name(drive_json: str | Path) -> str:
    """The name of a driving sequence: the folder of its flame_params.json."""
    return Path(drive_json).resolve().parent.name


def reenactment_folder(eval_dir: Path, drive_json: str | Path, epoch: int) -> Path:
    """<experiment>/eval/reenact_<sequence>/epoch_<N>."""
    return eval_dir / f"reenact_{sequence_name(drive_json)}" / f"epoch_{epoch}"


@torch.no_grad()
def reenact(avatar: Avatar, drive_json: str | Path, folder: Path, batch_size: int, fps: float) -> Path:
    """Render the avatar with the expressions, poses and cameras of `drive_json`: rgb/<frame>.png and
    video.mp4 under `folder`, which is returned."""
    params = read_flame_params(drive_json)
    device = avatar.canonical_expression.device
    written = []
    n_batches = math.ceil(len(params) / batch_size)
    for batch in progress(drive_batches(params, sequence_name(drive_json), batch_size), total=n_batches,
                          desc="reenacting", dynamic_ncols=True):
        out = avatar(batch.to(device))
        for b, frame_id in enumerate(batch.frame_id):
            written.append(save_png(folder / "rgb" / f"{frame_id}.png", out.rgb[b].clamp(0, 1)))
    write_mp4(folder / "video.mp4", (imageio.imread(p)[..., :3] for p in written), fps=fps)
    log.info("reenacted %d frames of %s into %s", len(written), drive_json, folder)
    return folder
