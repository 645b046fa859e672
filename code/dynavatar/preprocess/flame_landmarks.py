"""The part of FLAME that tracking fits: the 68 landmarks and the two iris points, with the shape free.

It uses the project's FLAME pieces (model file reader, landmark embedding, skinning) but evaluates
only the few vertices that the landmarks and irises sit on, with the shape coefficients as an input
rather than baked into the template, so that one subject shape and thousands of frames fit in
milliseconds per step. Geometry is in FLAME x 4 units, as the dataset cameras (see `dynavatar.flame`).

An iris point is the front-most vertex of each eyeball (the vertices bound wholly to an eye joint),
skinned with its eye: it follows the eye pose, as the pupil does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..flame import FLAME_SCALE, load_flame_model, load_landmark_embedding
from ..flame.lbs import EYE_A, EYE_B, axis_angle_to_matrix, pose_feature
from ..flame.mesh import outward_winding, vertex_normals

N_SHAPE = 100
N_EXPRESSION = 50
SHAPE_COMPONENTS_IN_FILE = 300  # FLAME stores 300 shape then the expression components
EYE_JOINTS = (3, 4)  # FLAME joints: global, neck, jaw, eye, eye


def joint_transforms(rotations: torch.Tensor, joints: torch.Tensor, parents: list[int]) -> torch.Tensor:
    """FLAME's forward kinematics: local rotations [B, J, 3, 3] about rest joints [B, J, 3] along the
    chain `parents` (parents[0] = -1) -> [B, J, 3, 4] transforms taking a rest-pose point bound to
    joint j to its posed place (the top rows of `dynavatar.flame.lbs.rigid_transforms`' result)."""
    rotation, position = [rotations[:, 0]], [joints[:, 0]]  # world rotation and posed joint of each joint
    for j in range(1, len(parents)):
        p = parents[j]
        rotation.append(rotation[p] @ rotations[:, j])
        position.append(position[p] + (rotation[p] @ (joints[:, j] - joints[:, p])[..., None])[..., 0])
    world = torch.stack(rotation, dim=1)  # [B, J, 3, 3]
    posed = torch.stack(position, dim=1)  # [B, J, 3]
    offset = posed - (world @ joints[..., None])[..., 0]  # T_j x = R_j (x - rest_j) + posed_j
    return torch.cat([world, offset[..., None]], dim=-1)


class FlameLandmarks(nn.Module):
    """forward(shape [S], expression [B, 50], pose [B, 15]) -> (landmarks [B, 68, 3], irises [B, 2, 3]).

    `irises[:, 0]` belongs to the eye whose landmarks are 36-41 (on the image's left in a frontal
    view), `irises[:, 1]` to 42-47; `iris_pose_slices` says which pose entries turn each.
    """

    def __init__(self, model_path: str | Path, landmark_path: str | Path, n_shape: int = N_SHAPE,
                 n_exp: int = N_EXPRESSION, mesh_vertices: int = 0) -> None:
        super().__init__()
        model = load_flame_model(model_path)
        embedding = load_landmark_embedding(landmark_path)
        faces = np.asarray(model.faces, dtype=np.int64)
        weights = np.asarray(model.weights, dtype=np.float64)
        template = np.asarray(model.v_template, dtype=np.float64)
        iris_vertices = []
        for joint in EYE_JOINTS:
            bound = np.flatnonzero(weights[:, joint] > 0.99)
            iris_vertices.append(int(bound[np.argmax(template[bound, 2])]))  # FLAME looks down +z
        lmk_vertices = faces[np.asarray(embedding.faces_idx, dtype=np.int64)]  # [68, 3]
        mesh = _mesh_subset(weights, mesh_vertices)
        used, inverse = np.unique(np.concatenate([lmk_vertices.reshape(-1), iris_vertices, mesh]), return_inverse=True)
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        shapedirs = np.asarray(model.shapedirs)
        regressor = np.asarray(model.j_regressor, dtype=np.float64)
        n_shape = min(n_shape, SHAPE_COMPONENTS_IN_FILE)
        self.n_shape, self.n_exp = n_shape, n_exp
        shape_dirs = shapedirs[:, :, :n_shape] * FLAME_SCALE
        exp_dirs = shapedirs[:, :, SHAPE_COMPONENTS_IN_FILE:SHAPE_COMPONENTS_IN_FILE + n_exp] * FLAME_SCALE
        # Only the used vertices; joints come from the full mesh through the regressor.
        self.register_buffer("template", f32(template[used] * FLAME_SCALE))  # [U, 3]
        self.register_buffer("shape_dirs", f32(shape_dirs[used]))  # [U, 3, S]
        self.register_buffer("exp_dirs", f32(exp_dirs[used]))  # [U, 3, E]
        self.register_buffer("pose_dirs", f32(np.asarray(model.posedirs)[used]).permute(0, 2, 1).contiguous()
                             * FLAME_SCALE)  # [U, 36, 3]
        self.register_buffer("weights", f32(weights[used]))  # [U, J]
        self.register_buffer("joint_template", f32(regressor @ template * FLAME_SCALE))  # [J, 3]
        self.register_buffer("joint_shape_dirs", f32(np.einsum("jv,vcs->jcs", regressor, shape_dirs)))  # [J, 3, S]
        self.register_buffer("joint_exp_dirs", f32(np.einsum("jv,vce->jce", regressor, exp_dirs)))  # [J, 3, E]
        self.parents = [int(p) for p in np.asarray(model.parents).reshape(-1)]  # the kinematic chain
        self.register_buffer("lmk_index", torch.as_tensor(inverse[: lmk_vertices.size].reshape(-1, 3)))  # [68, 3]
        self.register_buffer("lmk_bary", f32(embedding.bary_coords))  # [68, 3]
        iris_index = torch.as_tensor(inverse[lmk_vertices.size:lmk_vertices.size + 2])  # [2] for EYE_JOINTS
        self.register_buffer("mesh_index", torch.as_tensor(inverse[lmk_vertices.size + 2:]))  # [M]
        # The mesh vertices' outward normals at rest, turned with their skinning (the photometric term).
        rest, face_index = torch.as_tensor(template, dtype=torch.float32), torch.as_tensor(faces, dtype=torch.long)
        normals = vertex_normals(rest, face_index, outward_winding(rest, face_index))  # [V, 3]
        self.register_buffer("mesh_normals", normals[torch.as_tensor(mesh, dtype=torch.long)])  # [M, 3]
        # Order the irises like the landmark eyes: the eye nearer landmarks 36-41 first.
        lmk_rest = (template[lmk_vertices] * np.asarray(embedding.bary_coords)[..., None]).sum(1)
        first_eye = lmk_rest[36:42].mean(0)
        iris_rest = template[iris_vertices]
        swap = np.linalg.norm(iris_rest[1] - first_eye) < np.linalg.norm(iris_rest[0] - first_eye)
        self.register_buffer("iris_index", iris_index.flip(0) if swap else iris_index)
        eye_slices = (EYE_A, EYE_B)
        self.iris_pose_slices = (eye_slices[1], eye_slices[0]) if swap else eye_slices

    def forward(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._landmarks_and_irises(self._vertices(shape, expression, pose)[0])

    def with_mesh(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor, normals: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """As forward, and the `mesh_vertices` mesh vertices [B, M, 3] of the constructor, with
        `normals` their outward normals [B, M, 3] (the rest normals turned by the skinning, which leaves
        out what the shape and expression blendshapes bend: close enough to tell which face the camera,
        and to shade them under a distant light), else None."""
        vertices, blended = self._vertices(shape, expression, pose, with_skinning=normals)
        turned = None
        if normals:
            turns = blended[:, self.mesh_index, :, :3]  # [B, M, 3, 3]
            turned = torch.nn.functional.normalize((turns @ self.mesh_normals[None, :, :, None])[..., 0], dim=-1)
        return (*self._landmarks_and_irises(vertices), vertices[:, self.mesh_index], turned)

    def _landmarks_and_irises(self, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posed used vertices [B, U, 3] -> (landmarks [B, 68, 3], irises [B, 2, 3])."""
        landmarks = (vertices[:, self.lmk_index] * self.lmk_bary[None, :, :, None]).sum(dim=2)
        return landmarks, vertices[:, self.iris_index]

    def _vertices(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor,
                  with_skinning: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The used vertices posed [B, U, 3], and with `with_skinning` their blended transforms [B, U, 3, 4]."""
        batch = expression.shape[0]
        shaped = self.template + torch.einsum("ucs,s->uc", self.shape_dirs, shape)  # [U, 3]
        shaped = shaped + torch.einsum("be,uce->buc", expression, self.exp_dirs)  # [B, U, 3]
        rotations = axis_angle_to_matrix(pose.reshape(batch, -1, 3))  # [B, J, 3, 3]
        posed = shaped + torch.einsum("bp,upc->buc", pose_feature(rotations), self.pose_dirs)
        joints = (self.joint_template + torch.einsum("jcs,s->jc", self.joint_shape_dirs, shape)
                  + torch.einsum("be,jce->bjc", expression, self.joint_exp_dirs))  # [B, J, 3]
        transforms = joint_transforms(rotations, joints, self.parents)  # [B, J, 3, 4]
        # Linear blend skinning: weights [U, J] x the transforms' top rows [B, J, 12] -> [B, U, 3, 4],
        # applied to homogeneous points (cheaper than per-vertex 3x3 matmuls for thousands of frames).
        blended = torch.matmul(self.weights, transforms.reshape(batch, -1, 12)).reshape(batch, -1, 3, 4)
        homogeneous = torch.cat([posed, torch.ones_like(posed[..., :1])], dim=-1)  # [B, U, 4]
        return (blended * homogeneous[:, :, None, :]).sum(-1), blended if with_skinning else None


def _mesh_subset(weights: np.ndarray, count: int) -> np.ndarray:
    """About `count` vertex indices spread evenly over the mesh, the eyeballs left out (they lie
    inside the head: they never make its outline)."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    candidates = np.flatnonzero(weights[:, list(EYE_JOINTS)].sum(axis=1) < 0.5)
    step = max(len(candidates) // count, 1)
    return candidates[::step]
