"""Mesh geometry of FLAME-like meshes: connected parts, outward face winding and vertex normals.

Used by the synthetic subject's renderer and by the avatar's shading (the normals of the canonical
FLAME mesh, or of FLAME's mesh in each frame). Device follows the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor, face_sign: torch.Tensor | float = 1.0
                   ) -> torch.Tensor:
    """Area-weighted vertex normals [..., V, 3] of meshes [..., V, 3] with faces [F, 3]; `face_sign` [F]
    (or a scalar) flips faces so that cross(v1 - v0, v2 - v0) points outwards (see `outward_winding`)."""
    v0, v1, v2 = vertices[..., faces, :].unbind(-2)  # [..., F, 3] each
    face_n = torch.cross(v1 - v0, v2 - v0, dim=-1) * (face_sign[:, None] if torch.is_tensor(face_sign)
                                                       else face_sign)  # [..., F, 3], length = 2 x area
    normals = torch.zeros_like(vertices).index_add_(-2, faces.reshape(-1), face_n.repeat_interleave(3, -2))
    return F.normalize(normals, dim=-1, eps=1e-12)


def connected_components(faces: torch.Tensor, n_vertices: int) -> torch.Tensor:
    """Component id [V] of every vertex (faces sharing a vertex are connected)."""
    label = torch.arange(n_vertices, device=faces.device)
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # [3F, 2]
    while True:  # min-label propagation; a few dozen rounds for a head mesh
        low = torch.minimum(label[edges[:, 0]], label[edges[:, 1]])
        new = label.clone().scatter_reduce_(0, edges.reshape(-1), low.repeat_interleave(2), reduce="amin")
        new = new[new]  # pointer jumping speeds up long chains
        if torch.equal(new, label):
            return label
        label = new


def outward_winding(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Per-face sign [F]: +1 where cross(v1 - v0, v2 - v0) points out of the face's mesh part, else -1.

    Decided per connected part (head, each eyeball) from its signed volume, so parts wound either way
    (and open surfaces such as FLAME's, with holes at neck, mouth and eyes) are handled alike."""
    component = connected_components(faces, len(vertices))[faces[:, 0]]  # [F]
    v0, v1, v2 = vertices[faces].unbind(1)
    n_parts = int(component.max()) + 1
    count = torch.zeros(n_parts, dtype=vertices.dtype, device=vertices.device).index_add_(
        0, component, torch.ones(len(faces), dtype=vertices.dtype, device=vertices.device))
    centre = vertices.new_zeros(n_parts, 3).index_add_(0, component, (v0 + v1 + v2) / 3) / count.clamp(min=1)[:, None]
    c = centre[component]
    volume = ((v0 - c) * torch.cross(v1 - c, v2 - c, dim=-1)).sum(-1)  # [F] 6 x signed tetra volume
    part_volume = vertices.new_zeros(n_parts).index_add_(0, component, volume)
    return torch.where(part_volume[component] >= 0, 1.0, -1.0).to(vertices.dtype)
