"""The FLAME head model as a torch module: shaped template, expression/pose blendshapes, skinning, landmarks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import FlameModelError
from .lbs import axis_angle_to_matrix, pose_feature, rigid_transforms, skin_mesh
from .model_file import load_flame_model, load_landmark_embedding

# The dataset cameras live in FLAME-times-4 units.
FLAME_SCALE = 4.0
N_SHAPE = 100
N_EXPRESSION = 50
JAW_POSE_INDEX = 6  # pose[6:9] is the jaw's axis-angle; pose[6] opens the mouth


@dataclass
class FlameOutput:
    vertices: torch.Tensor  # [B, V, 3]
    pose_feature: torch.Tensor  # [B, 36]
    transforms: torch.Tensor  # [B, J, 4, 4]
    joints: torch.Tensor  # [B, J, 3] posed
    landmarks: torch.Tensor | None  # [B, 68, 3], None without a landmark embedding


def face_landmarks(vertices: torch.Tensor, faces: torch.Tensor, faces_idx: torch.Tensor,
                   bary_coords: torch.Tensor) -> torch.Tensor:
    """Points given by (face index [L], barycentric coordinates [L, 3]) on meshes vertices [B, V, 3] -> [B, L, 3]."""
    corners = vertices[:, faces[faces_idx]]  # [B, L, 3 corners, 3]
    return (corners * bary_coords[None, :, :, None]).sum(dim=2)


class FLAME(nn.Module):
    """FLAME with the subject's shape baked into the template and all geometry scaled by 4.

    Buffers: v_template [V, 3], shapedirs [V, 3, E] (expression components only), posedirs [V, 36, 3]
    (per-vertex layout, as the deformer network predicts them), j_regressor [J, V], lbs_weights [V, J],
    parents [J], faces [F, 3], and the landmark embedding when one is given. The buffers are not
    persistent: they come from the model file, so checkpoints do not carry (licensed) FLAME data.
    """

    def __init__(self, model_path: str | Path, landmark_path: str | Path | None = None,
                 shape_params: torch.Tensor | np.ndarray | None = None, n_shape: int = N_SHAPE,
                 n_exp: int = N_EXPRESSION, scale: float = FLAME_SCALE) -> None:
        super().__init__()
        model = load_flame_model(model_path)
        n_components = model.shapedirs.shape[2]
        n_exp_available = n_components - 300
        if n_exp > n_exp_available:
            raise FlameModelError(f"{model_path} has {n_exp_available} expression components, {n_exp} requested "
                                  f"(set model.deformer_network.num_exp <= {n_exp_available})")
        self.n_shape, self.n_exp = n_shape, n_exp
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        template = f32(model.v_template) * scale
        shape_dirs = f32(model.shapedirs[:, :, :n_shape]) * scale
        if shape_params is not None:
            betas = torch.as_tensor(np.asarray(shape_params, dtype=np.float32)).reshape(-1)[:n_shape]
            template = template + torch.einsum("vcs,s->vc", shape_dirs[:, :, : betas.numel()], betas)
        self.register_buffer("v_template", template, persistent=False)
        self.register_buffer("shapedirs", f32(model.shapedirs[:, :, 300:300 + n_exp]) * scale, persistent=False)
        # File layout [V, 3, P] -> per-vertex [V, P, 3].
        self.register_buffer("posedirs", f32(model.posedirs).permute(0, 2, 1).contiguous() * scale, persistent=False)
        self.register_buffer("j_regressor", f32(model.j_regressor), persistent=False)
        self.register_buffer("lbs_weights", f32(model.weights), persistent=False)
        self.register_buffer("parents", torch.as_tensor(model.parents, dtype=torch.long), persistent=False)
        self.parent_list = [int(p) for p in model.parents]  # the kinematic chain, read on the host
        # Joints as a function of the expression (see transforms_only): rest joints [J, 3] and their
        # expression directions [J, 3, E], regressed once.
        self.register_buffer("joint_rest", self.j_regressor @ self.v_template, persistent=False)
        self.register_buffer("joint_dirs", torch.einsum("jv,vce->jce", self.j_regressor, self.shapedirs),
                             persistent=False)
        self.register_buffer("faces", torch.as_tensor(model.faces, dtype=torch.long), persistent=False)
        self.has_landmarks = landmark_path is not None
        if landmark_path is not None:
            embedding = load_landmark_embedding(landmark_path)
            self.register_buffer("lmk_faces_idx", torch.as_tensor(embedding.faces_idx, dtype=torch.long), persistent=False)
            self.register_buffer("lmk_bary_coords", torch.as_tensor(embedding.bary_coords, dtype=torch.float32), persistent=False)

    @property
    def n_joints(self) -> int:
        return int(self.parents.shape[0])

    def landmarks(self, vertices: torch.Tensor) -> torch.Tensor:
        """Mesh vertices [B, V, 3] -> the 68 landmarks [B, 68, 3]."""
        if not self.has_landmarks:
            raise RuntimeError("this FLAME instance was built without a landmark embedding")
        return face_landmarks(vertices, self.faces, self.lmk_faces_idx, self.lmk_bary_coords)

    def forward(self, expression: torch.Tensor, pose: torch.Tensor) -> FlameOutput:
        """expression [B, n_exp] (longer inputs are truncated), pose [B, 15] -> FlameOutput."""
        vertices, feat, transforms, joints = skin_mesh(
            self.v_template, expression[:, : self.n_exp], pose, self.shapedirs, self.posedirs,
            self.j_regressor, self.parent_list, self.lbs_weights)
        landmarks = self.landmarks(vertices) if self.has_landmarks else None
        return FlameOutput(vertices, feat, transforms, joints, landmarks)

    def canonical_pose(self, jaw_opening: float, batch: int = 1) -> torch.Tensor:
        """The canonical pose [batch, 15]: zero except the jaw opened about x by `jaw_opening` radians."""
        pose = torch.zeros(batch, 3 * self.n_joints, dtype=self.v_template.dtype, device=self.v_template.device)
        pose[:, JAW_POSE_INDEX] = jaw_opening
        return pose

    def transforms_only(self, expression: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pose feature [B, 36], joint transforms [B, J, 4, 4]) without skinning the mesh.

        Joints depend on the expression (FLAME regresses them from the expression-shaped template);
        regressing the blendshapes instead of the shaped vertices gives the same joints cheaply.
        """
        joints = self.joint_rest + torch.einsum("be,jce->bjc", expression[:, : self.n_exp], self.joint_dirs)
        rotations = axis_angle_to_matrix(pose.reshape(pose.shape[0], -1, 3))
        transforms, _ = rigid_transforms(rotations, joints, self.parent_list)
        return pose_feature(rotations), transforms
