"""Per-frame tracking refinement: expression, FLAME pose and camera translation as embeddings.

The tracked values of each frame start the embeddings; a SparseAdam update (`RowSparseAdam`) refines
them jointly with the avatar (training frames) or with the avatar frozen (test frames, at evaluation).
`remove_shared_change` keeps only what differs per frame (`train.refine_per_frame_only`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.batch import FrameBatch
from ..flame.lbs import GLOBAL, JAW, NECK, axis_angle_to_matrix, rotation_angle_deg
from .row_sparse_adam import RowSparseAdam

# The FLAME pose's joints whose change `change_summary` reports (the eyes' are fitted, not reported).
POSE_JOINTS = {"global": GLOBAL, "neck": NECK, "jaw": JAW}


class FrameInputs(nn.Module):
    """Refinable inputs of the frames of one dataset (indexed by the dataset's `idx`)."""

    def __init__(self, expressions: torch.Tensor, flame_poses: torch.Tensor, world_mats: torch.Tensor,
                 optimize_expression: bool, optimize_camera: bool, apply_translation: bool = True) -> None:
        super().__init__()
        self.optimize_expression, self.optimize_camera = optimize_expression, optimize_camera
        # The translation embedding exists whenever the camera is refined (checkpoints keep one layout);
        # it reaches the renderer only with `apply_translation`, so that it is refined only then.
        self.apply_translation = apply_translation
        if optimize_expression:
            self.expression = nn.Embedding.from_pretrained(expressions.clone(), freeze=False, sparse=True)  # [F, 50]
        if optimize_camera:  # as the paper: the flag covers FLAME pose and camera translation
            self.flame_pose = nn.Embedding.from_pretrained(flame_poses.clone(), freeze=False, sparse=True)  # [F, 15]
            self.camera_translation = nn.Embedding.from_pretrained(world_mats[:, :3, 3].clone(), freeze=False,
                                                                   sparse=True)  # [F, 3]
        # The tracked values, for `remove_shared_change` (not saved: the dataset gives them again).
        for name, embedding in self.embeddings().items():
            self.register_buffer(f"tracked_{name}", embedding.weight.detach().clone(), persistent=False)

    def embeddings(self) -> dict[str, nn.Embedding]:
        """The refined embeddings by name."""
        return {name: getattr(self, name) for name in ("expression", "flame_pose", "camera_translation")
                if hasattr(self, name)}

    @torch.no_grad()
    def remove_shared_change(self) -> None:
        """Take from every refined input the mean of its change over all frames. A change that every
        frame shares (a common head turn, expression or shift) can be absorbed by the avatar instead,
        which then sits away from the tracked inputs that a new frame comes with; what differs from
        frame to frame stays. Pose changes are subtracted as axis-angle vectors: a small-angle
        approximation, for changes of a few degrees. Called between epochs: Adam's moments keep the
        shared direction, so a shared change builds up again within an epoch and goes at its end."""
        for name, embedding in self.embeddings().items():
            change = embedding.weight - getattr(self, f"tracked_{name}")  # [F, d]
            embedding.weight.sub_(change.mean(dim=0))

    @torch.no_grad()
    def change_summary(self, frames: torch.Tensor | None = None) -> dict[str, float]:
        """How far the refined inputs of `frames` (indices [K], default all) lie from the tracked
        ones, as the mean and the largest over them: the expression as the length of its
        coefficients' change, each joint of `POSE_JOINTS` (FLAME's global rotation, the neck's and
        the jaw's) as the angle in degrees between its tracked and refined rotations, the camera
        translation (when applied) as the length of its change."""
        rows = slice(None) if frames is None else frames
        changes: dict[str, torch.Tensor] = {}  # name -> [K]
        if self.optimize_expression:
            changes["expression"] = (self.expression.weight[rows] - self.tracked_expression[rows]).norm(dim=1)
        if self.optimize_camera:
            for joint, columns in POSE_JOINTS.items():
                changes[f"{joint}_deg"] = rotation_angle_deg(
                    axis_angle_to_matrix(self.tracked_flame_pose[rows, columns]),
                    axis_angle_to_matrix(self.flame_pose.weight[rows, columns]))
        if self.optimize_camera and self.apply_translation:
            changes["camera_translation"] = (self.camera_translation.weight[rows]
                                             - self.tracked_camera_translation[rows]).norm(dim=1)
        return {f"{name}_{stat}": float(getattr(values, stat)()) for name, values in changes.items()
                for stat in ("mean", "max")}

    @property
    def enabled(self) -> bool:
        return self.optimize_expression or self.optimize_camera

    def apply(self, batch: FrameBatch) -> FrameBatch:
        """A copy of the batch with the refined values of its frames (by `batch.idx` [B])."""
        changes = {}
        if self.optimize_expression:
            changes["expression"] = self.expression(batch.idx)
        if self.optimize_camera:
            changes["flame_pose"] = self.flame_pose(batch.idx)
        if self.optimize_camera and self.apply_translation:
            rotation = batch.world_mat[:, :, :3]
            changes["world_mat"] = torch.cat([rotation, self.camera_translation(batch.idx)[:, :, None]], dim=2)
        return batch.replace(**changes)

    @property
    def refined(self) -> list[str]:
        """Which inputs `apply` replaces."""
        return ([name for name, on in (("expression", self.optimize_expression), ("pose", self.optimize_camera),
                                       ("camera_translation", self.optimize_camera and self.apply_translation))
                 if on])

    def optimizer(self, lr: float) -> "RowSparseAdam | None":
        params = list(self.parameters())
        return RowSparseAdam(params, lr=lr) if params else None
