"""A photometric term for FLAME tracking: each mesh point keeps its colour from frame to frame.

Landmarks and the silhouette leave the head's turn and the jaw partly free: a face detector places
a human face's points on whatever head it sees, and the outline hardly changes when the jaw opens.
The frames themselves do not: the skin, the lips and the eyes each have their colour, and a mesh
point that follows the head samples the same colour in every frame. Every mesh vertex that faces
the camera samples the (slightly blurred) frame at its projection, bilinearly, so the term is
differentiable in the fitted parameters; its cost is a robust distance to the vertex's mean colour
over the frames that see it. No rasterizer is needed: back-facing vertices are left out by their
normal (a cheek hidden behind the nose is the rare exception the robust distance absorbs), and
where masks are given, vertices outside the mask too. Lighting that changes with the head's turn
changes a vertex's colour a little; the robust distance keeps such changes from dominating. With
tracking's `photometric_shading`, each vertex's colour is compared instead with its albedo times a shading linear in its
normal (one light fixed to the camera, fitted to all frames), which follows those changes.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .robust import pseudo_huber_of_squared

# The frames are sampled at this size at most: finer brings nothing to a blurred comparison and
# would cost memory for long videos (a 256 px frame is 0.8 MB in float32).
MAX_RES = 256
BLUR_PX = 1.0  # Gaussian blur of the frames at MAX_RES: gradients reach a pixel or two further
HUBER = 0.05  # pseudo-Huber scale of a colour difference (RGB in [0, 1])
SHADING_ROUNDS = 3  # alternations of albedo and light in `shaded_reference`
MIN_SHADE = 0.05  # a fitted shading is kept above this (a vertex's colour never comes from a zero shade)
MIN_FACING = 0.2  # cosine between a vertex's normal and its ray to the camera, below which it is left out


def sampling_size(res: int) -> int:
    """The size the frames of a `res` px fit are sampled at."""
    return min(res, MAX_RES)


def prepare_frames(frames: Iterable[np.ndarray], res: int) -> torch.Tensor:
    """Frames [res, res, 3] uint8 (the crops tracking fits), one at a time so that a long video is
    never held at full size -> float [N, 3, S, S] in [0, 1] at the sampling size S, area-averaged
    when smaller and blurred by BLUR_PX (scaled to S)."""
    size = sampling_size(res)
    sigma = BLUR_PX * size / MAX_RES
    out = []
    for frame in frames:
        image = torch.as_tensor(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 255.0  # [1, 3, res, res]
        if size != res:
            image = F.interpolate(image, size=(size, size), mode="area")
        out.append(torch.from_numpy(ndimage.gaussian_filter(image[0].numpy(), (0, sigma, sigma))))
    return torch.stack(out)


def facing(normals: torch.Tensor, camera_points: torch.Tensor) -> torch.Tensor:
    """Cosine [N, V] between outward normals [N, V, 3] and the ray from each point to the camera,
    for points [N, V, 3] in a frame whose origin is the camera (any axes)."""
    return (normals * -camera_points).sum(-1) / camera_points.square().sum(-1).sqrt().clamp_min(1e-9)


def weighted_mean(colours: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each vertex's mean colour [V, C] over the frames, of colours [N, V, C] weighted by [N, V]."""
    return (colours * weights[..., None]).sum(0) / weights.sum(0).clamp_min(1e-9)[:, None]


def shaded_reference(colours: torch.Tensor, weights: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """Each vertex's colour in each frame [N, V, C] as its albedo [V, C] times a shading that is linear
    in its normal [N, V, 3], s = l_0 + l . n per channel (a light fixed to the camera, shared by every
    vertex and frame: Lambert's law where the light reaches), fitted to the samples colours [N, V, C]
    by least squares weighted by [N, V], albedo and light in turn from the mean colour and uniform light.

    The light's normal equations are sums over frames and vertices of w a^2 b b^T and w a b c (b the
    basis [1, n]); the frames' part of them, per vertex, is summed once, so that each round costs a
    pass over the vertices rather than over every sample."""
    basis = torch.cat([torch.ones_like(normals[..., :1]), normals], dim=-1)  # [N, V, 4]
    weighted = (basis * weights[..., None]).permute(1, 2, 0)  # [V, 4, N]
    gram = weighted @ basis.transpose(0, 1)  # [V, 4, 4]: sum over frames of w b b^T
    moments = weighted @ colours.transpose(0, 1)  # [V, 4, C]: sum over frames of w b c
    albedo = weighted_mean(colours, weights)  # [V, C]
    # A ridge relative to the equations' scale: only a light the samples cannot tell apart (too few
    # vertices seen, or all facing one way) is held near zero in its undetermined directions.
    eye = torch.eye(4, dtype=colours.dtype, device=colours.device)
    for _ in range(SHADING_ROUNDS):
        normal_matrix = torch.einsum("vc,vij->cij", albedo.square(), gram)  # [C, 4, 4]
        scale = normal_matrix.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)[:, None, None]
        light = torch.linalg.solve(normal_matrix + 1e-6 * scale * eye,
                                   torch.einsum("vc,vic->ci", albedo, moments))  # [C, 4]
        shade = (basis @ light.T).clamp_min(MIN_SHADE)  # [N, V, C]
        weighted_shade = shade * weights[..., None]
        albedo = (weighted_shade * colours).sum(0) / (weighted_shade * shade).sum(0).clamp_min(1e-9)
    return albedo * shade


def consistency_loss(colours: torch.Tensor, weights: torch.Tensor, normals: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Mean pseudo-Huber distance of sampled colours [N, V, C] to each vertex's weighted mean over the
    frames, weighted by `weights` [N, V] (0: not seen); given the vertices' normals [N, V, 3] in axes
    fixed to the camera (tracking's world, whose world_mat is [I | t]), to each vertex's shaded albedo
    in that frame (`shaded_reference`) instead. The reference is held fixed: the gradient moves each
    frame's samples toward the others', not the others toward an outlier."""
    with torch.no_grad():
        if normals is None:
            reference = weighted_mean(colours, weights)
        else:
            reference = shaded_reference(colours, weights, normals)
    squared = (colours - reference).square().sum(-1)  # [N, V]
    return (pseudo_huber_of_squared(squared, HUBER) * weights).sum() / weights.sum().clamp_min(1e-9)


def visibility(normals: torch.Tensor, camera_points: torch.Tensor) -> torch.Tensor:
    """Weights [N, V] in [0, 1]: 0 for vertices facing away or seen edge-on, rising with the cosine."""
    return ((facing(normals, camera_points) - MIN_FACING) / (1.0 - MIN_FACING)).clamp(0.0, 1.0)
