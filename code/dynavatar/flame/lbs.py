"""Linear blend skinning for FLAME: rotations, pose features, joint transforms, mesh and point-wise skinning.

All functions are batched, float32-friendly and device-agnostic (the device comes from the inputs).
Notation: B frames, V mesh vertices, N free points, J joints, E expression components.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..runtime import constant


# The FLAME pose vector [15]: one axis-angle [3] per joint, in FLAME's order (global, neck, jaw, eye, eye).
GLOBAL, NECK, JAW, EYE_A, EYE_B = (slice(3 * j, 3 * j + 3) for j in range(5))


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: axis-angle [..., 3] -> rotation matrices [..., 3, 3], smooth at zero."""
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    # sin(t)/t and (1 - cos(t))/t^2, with their Taylor expansions near zero (exact gradients at 0).
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / safe2)
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(skew)
    return eye + a * skew + b * (skew @ skew)


def rotation_angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The angle in degrees from rotations a to b [..., 3, 3] (that of a^T b) [...]: from its sine
    (the antisymmetric part) and cosine (the trace), exact for small angles, where arccos is not."""
    relative = a.transpose(-1, -2) @ b
    cosine = (relative.diagonal(dim1=-2, dim2=-1).sum(dim=-1) - 1) / 2
    skew = relative - relative.transpose(-1, -2)
    sine = torch.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], dim=-1).norm(dim=-1) / 2
    return torch.rad2deg(torch.atan2(sine, cosine))


def pose_feature(rotations: torch.Tensor) -> torch.Tensor:
    """Rotations of all joints [B, J, 3, 3] -> FLAME pose feature [B, 9 (J - 1)]: (R_j - I) of joints 1.. flattened."""
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    return (rotations[:, 1:] - eye).reshape(rotations.shape[0], -1)


def rigid_transforms(rotations: torch.Tensor, joints: torch.Tensor, parents: Sequence[int]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kinematics along the kinematic chain.

    rotations [B, J, 3, 3] local joint rotations, joints [B, J, 3] rest joint positions, parents [J]
    (parents[0] = -1) as Python ints: the chain is walked on the host without reading the device. Returns (transforms [B, J, 4, 4] that map rest-pose points to posed points for
    a point fully bound to joint j, posed joint positions [B, J, 3]).
    """
    batch, n_joints = joints.shape[:2]
    relative = joints.clone()
    parent_index = constant(tuple(parents[1:]), torch.long, joints.device)
    relative[:, 1:] = joints[:, 1:] - joints[:, parent_index]
    local = torch.zeros(batch, n_joints, 4, 4, dtype=joints.dtype, device=joints.device)
    local[..., :3, :3] = rotations
    local[..., :3, 3] = relative
    local[..., 3, 3] = 1.0
    chain = [local[:, 0]]
    for j in range(1, n_joints):
        chain.append(chain[parents[j]] @ local[:, j])
    world = torch.stack(chain, dim=1)  # [B, J, 4, 4]
    posed_joints = world[..., :3, 3]
    # Express relative to the rest pose: T_j x = G_j (x - rest_joint_j).
    rest_offset = (world[..., :3, :3] @ joints[..., None])[..., 0]
    transforms = world.clone()
    transforms[..., :3, 3] = posed_joints - rest_offset
    return transforms, posed_joints


def blend_transforms(weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Skinning weights [N, J] (shared across the batch) or [B, N, J], joint transforms [B, J, 4, 4] -> [B, N, 4, 4]."""
    batch, joints = transforms.shape[:2]
    flat = transforms.reshape(batch, joints, 16)
    return torch.matmul(weights, flat).reshape(batch, -1, 4, 4)  # one (batched) matrix product


def apply_transforms(blended: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Per-point 4x4 transforms [B, N, 4, 4] applied to points [B, N, 3] (elementwise, not N tiny products)."""
    return (blended[..., :3, :3] * points[..., None, :]).sum(-1) + blended[..., :3, 3]


def invert_transforms(blended: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Undo per-point 4x4 transforms [B, N, 4, 4] on points [B, N, 3].

    A blend of rotations is not a rotation, so this solves the 3x3 system instead of transposing,
    by Cramer's rule: elementwise arithmetic only, where a batched LU solve launches several
    kernels and waits for the device to check for singular matrices.
    """
    a = blended[..., :3, :3]
    b = points - blended[..., :3, 3]
    rows = a.unbind(-2)  # three rows [B, N, 3]
    # The columns of adj(A) are the cross products of A's rows: adj(A) = [r1 x r2, r2 x r0, r0 x r1].
    cofactors = torch.stack([torch.linalg.cross(rows[1], rows[2]), torch.linalg.cross(rows[2], rows[0]),
                             torch.linalg.cross(rows[0], rows[1])], dim=-1)  # [B, N, 3, 3] = adj(A)
    determinant = (rows[0] * cofactors[..., :, 0]).sum(-1)  # [B, N]
    return (cofactors @ b[..., None])[..., 0] / determinant[..., None]


def _contract(coefficients: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """coefficients [B, K] with per-point directions given as rows [N * 3, K] -> offsets [B, N, 3]:
    one matrix product (no copy when the rows are contiguous)."""
    return torch.mm(coefficients, directions.T).reshape(coefficients.shape[0], -1, 3)


def polar_rotation(matrices: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """The rotation of the polar decomposition of 3x3 matrices [..., 3, 3] with positive determinant
    (the orthogonal factor nearest to each), by the determinant-scaled Newton iteration
    X <- (g X + X^-T / g) / 2, g = det(X)^(-1/3).

    Blends of joint rotations are close to rotations, where a few steps reach float precision.
    X^-T is the cofactor matrix over the determinant: elementwise arithmetic only.
    """
    x = matrices
    for _ in range(iterations):
        r0, r1, r2 = x.unbind(-2)
        cofactors = torch.stack([torch.linalg.cross(r1, r2), torch.linalg.cross(r2, r0),
                                 torch.linalg.cross(r0, r1)], dim=-2)  # rows: the cofactor matrix
        determinant = (r0 * cofactors[..., 0, :]).sum(-1)[..., None, None]
        scale = determinant.abs().clamp_min(1e-12) ** (-1.0 / 3.0)
        x = 0.5 * (scale * x + cofactors / (determinant * scale))
    return x


def blendshape_offsets(expression: torch.Tensor, shapedirs: torch.Tensor) -> torch.Tensor:
    """Expression [B, E] with per-point blendshapes [N, 3, E] -> offsets [B, N, 3]."""
    return _contract(expression, shapedirs.reshape(-1, shapedirs.shape[-1]))


def corrective_offsets(pose_feat: torch.Tensor, posedirs: torch.Tensor) -> torch.Tensor:
    """Pose feature [B, P] with per-point pose correctives [N, P, 3] -> offsets [B, N, 3].

    A view, not a copy, when `posedirs` is stored coordinate-major (see `coordinate_major`)."""
    return _contract(pose_feat, posedirs.transpose(1, 2).reshape(-1, posedirs.shape[1]))


def coordinate_major(posedirs: torch.Tensor) -> torch.Tensor:
    """The same correctives [N, P, 3] stored as [N, 3, P] in memory, the layout `corrective_offsets`
    contracts without copying (worth it when they are reused for many frames)."""
    return posedirs.transpose(1, 2).contiguous().transpose(1, 2)


def forward_points(points: torch.Tensor, expression: torch.Tensor, pose_feat: torch.Tensor,
                   transforms: torch.Tensor, shapedirs: torch.Tensor, posedirs: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """Point-wise FLAME deformation of canonical (unposed, zero-expression) points.

    points [N, 3] or [B, N, 3]; expression [B, E]; pose_feat [B, P]; transforms [B, J, 4, 4];
    per-point shapedirs [N, 3, E], posedirs [N, P, 3], weights [N, J]. Returns posed points [B, N, 3]:
    x_t = LBS(x + E psi + P pf; W, T).
    """
    if points.dim() == 2:
        points = points.unsqueeze(0)
    shaped = points + blendshape_offsets(expression, shapedirs) + corrective_offsets(pose_feat, posedirs)
    return apply_transforms(blend_transforms(weights, transforms), shaped)


def inverse_points(points: torch.Tensor, expression: torch.Tensor, pose_feat: torch.Tensor,
                   transforms: torch.Tensor, shapedirs: torch.Tensor, posedirs: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """Inverse of `forward_points`: posed points [N, 3] or [B, N, 3] -> canonical points [B, N, 3]."""
    if points.dim() == 2:
        points = points.unsqueeze(0)
    unskinned = invert_transforms(blend_transforms(weights, transforms), points)
    return unskinned - blendshape_offsets(expression, shapedirs) - corrective_offsets(pose_feat, posedirs)


def skin_mesh(template: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor, shapedirs: torch.Tensor,
              posedirs: torch.Tensor, j_regressor: torch.Tensor, parents: Sequence[int], weights: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standard FLAME mesh forward.

    template [V, 3] (shape already baked in), expression [B, E], pose [B, 3 J] axis-angle,
    shapedirs [V, 3, E], posedirs [V, P, 3], j_regressor [J, V], parents [J], weights [V, J].
    Returns (vertices [B, V, 3], pose feature [B, P], joint transforms [B, J, 4, 4], posed joints [B, J, 3]).
    Joints are regressed from the expression-shaped template, as FLAME does.
    """
    batch = expression.shape[0]
    shaped = template.unsqueeze(0) + blendshape_offsets(expression, shapedirs)  # [B, V, 3]
    joints = torch.einsum("jv,bvc->bjc", j_regressor, shaped)
    rotations = axis_angle_to_matrix(pose.reshape(batch, -1, 3))
    feat = pose_feature(rotations)
    posed = shaped + corrective_offsets(feat, posedirs)
    transforms, posed_joints = rigid_transforms(rotations, joints, parents)
    vertices = apply_transforms(blend_transforms(weights, transforms), posed)
    return vertices, feat, transforms, posed_joints


def with_ghost_bone(transforms: torch.Tensor) -> torch.Tensor:
    """Prepend the identity "ghost bone" (index 0) to joint transforms [B, J, 4, 4] -> [B, J + 1, 4, 4]."""
    eye = torch.eye(4, dtype=transforms.dtype, device=transforms.device)
    return torch.cat([eye.expand(transforms.shape[0], 1, 4, 4), transforms], dim=1)
