"""The avatar: canonical Gaussians, their expression-guided deformation to a frame, and rendering.

One frame's data flow (each arrow one call here):
points -> canonical network (logits) -> deformer (E, P, W, d) -> undo the canonical FLAME frame and
apply the frame's (LBS) -> gaussian network on the offset -> activations (colours lit by the turned
normal with `model.shading`) -> rasterize per frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..cameras import Camera, imavatar_camera
from ..config import ModelConf
from ..data.batch import FrameBatch
from ..flame import FLAME
from ..flame.mesh import outward_winding, vertex_normals
from ..flame.lbs import (apply_transforms, blend_transforms, blendshape_offsets, coordinate_major, corrective_offsets,
                         inverse_points, polar_rotation, with_ghost_bone)
from ..render import rasterize_frames
from ..render.projection import quaternion_left_matrix, rotation_to_quaternion
from ..runtime import constant
from .networks import CanonicalAttributes, CanonicalNetwork, DeformerNetwork, DeformerOutput, GaussianNetwork
from .shading import Shading


@dataclass
class Gaussians:
    """Activated Gaussians of one or several frames (leading batch dimension optional)."""

    means: torch.Tensor  # [..., N, 3]
    quats: torch.Tensor  # [..., N, 4] wxyz, normalised
    scales: torch.Tensor  # [..., N, 3] including the point radius
    opacities: torch.Tensor  # [..., N]
    colors: torch.Tensor  # [..., N, 3] in [0, 1]

    def frame(self, index: int) -> "Gaussians":
        return Gaussians(self.means[index], self.quats[index], self.scales[index], self.opacities[index],
                         self.colors[index])


CHECKPOINT_POINTS = 20_000  # above this many points network activations are recomputed, this many at a time


@dataclass
class CanonicalState:
    """What the avatar's frames share: the canonical Gaussians' logits and their deformation bases."""

    logits: CanonicalAttributes  # [N, ...]
    deformer: DeformerOutput  # [N, ...] on the points (gradients reach them)
    shifted: torch.Tensor  # x' = x + d [N, 3]
    unposed: torch.Tensor  # x0: x' with the canonical frame undone [N, 3]
    prior: DeformerOutput | None = None  # the deformer on the detached points, for the FLAME priors
    rotation: torch.Tensor | None = None  # [N, 3, 3] canonical skinning rotation (with rotate_gaussians)
    nearest: torch.Tensor | None = None  # [N] long: each x's nearest canonical FLAME vertex (priors, shading)
    normals: torch.Tensor | None = None  # [N, 3] nearest vertex's normal, canonical turn undone (with shading)

    def for_reuse(self) -> "CanonicalState":
        """The same state with its per-point bases laid out for the per-frame products (no copy per frame)."""
        d = self.deformer
        deformer = DeformerOutput(d.shapedirs.contiguous(), coordinate_major(d.posedirs), d.lbs_weights.contiguous(),
                                  d.offset)
        return CanonicalState(self.logits, deformer, self.shifted, self.unposed.contiguous(), self.prior, self.rotation,
                              self.nearest, self.normals)


@dataclass
class PriorQuery:
    """What the FLAME priors compare: deformer outputs (no gradient to the points) and each point's
    nearest canonical FLAME vertex."""

    deformer: DeformerOutput  # [N, ...]
    nearest: torch.Tensor  # [N] long


@dataclass
class AvatarOutput:
    rgb: torch.Tensor  # [B, H, W, 3]
    alpha: torch.Tensor  # [B, H, W]
    depth: torch.Tensor  # [B, H, W] alpha-weighted camera depth
    gaussians: Gaussians  # [B, N, ...]
    prior: PriorQuery | None = None


def initial_points(n: int, radius: float, generator: torch.Generator) -> torch.Tensor:
    """n points [n, 3] on a sphere: a uniform cube sample pushed onto the sphere."""
    cube = torch.rand(n, 3, generator=generator) * 2.0 - 1.0
    return torch.nn.functional.normalize(cube, dim=1) * radius


class Avatar(nn.Module):
    """Animatable Gaussian head avatar (MonoGaussianAvatar).

    Persistent state (what checkpoints hold): the points, the three networks, the point radius
    (set by the training strategy), the canonical expression and pose, the subject's FLAME shape,
    (with `use_background`) the background and (with `model.shading`) the lighting's coefficients.
    """

    def __init__(self, model_conf: ModelConf, flame: FLAME, shape_params: torch.Tensor,
                 canonical_expression: torch.Tensor, canonical_jaw: float, img_res: Sequence[int],
                 use_background: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.flame = flame
        self.img_res = (int(img_res[0]), int(img_res[1]))  # (H, W)
        self.max_scale = model_conf.max_scale
        self.rasterizer = model_conf.rasterizer
        self.rotate_gaussians = model_conf.rotate_gaussians
        self.shading = Shading() if model_conf.shading else None
        self.canonical_net = CanonicalNetwork(**asdict(model_conf.geometry_network))
        self.deformer = DeformerNetwork(n_joints=flame.n_joints, **asdict(model_conf.deformer_network))
        self.gaussian_net = GaussianNetwork(**asdict(model_conf.gaussian_network))
        schedule = model_conf.point_cloud
        generator = torch.Generator().manual_seed(seed)
        self.points = nn.Parameter(initial_points(schedule.n_init_points, schedule.init_radius, generator))
        if model_conf.point_colors:  # colour-logit offsets [N, 3] that follow the points through prune/grow
            self.point_color = nn.Parameter(torch.zeros(schedule.n_init_points, 3))
        # The smallest Gaussian extent, added to every scale: set by the training strategy (which may
        # shrink it) or loaded from a checkpoint. float64, so that its repeated shrinking rounds as a
        # Python float does.
        self.register_buffer("point_radius", torch.tensor(0.0, dtype=torch.float64))
        num_exp = self.deformer.num_exp
        expression = torch.zeros(num_exp)
        expression[: min(num_exp, canonical_expression.numel())] = canonical_expression.reshape(-1)[:num_exp]
        self.register_buffer("canonical_expression", expression)  # [E]
        # The subject's FLAME shape [100] (already baked into `flame`), kept so that checkpoints are
        # self-contained for evaluation and reenactment.
        self.register_buffer("shape_params", torch.as_tensor(shape_params, dtype=torch.float32).reshape(-1).clone())
        self.register_buffer("canonical_pose", flame.canonical_pose(canonical_jaw)[0].cpu())  # [15]
        self.use_background = use_background
        if use_background:
            self.background = nn.Parameter(torch.zeros(*self.img_res, 3))
        self._canonical_flame: tuple | None = None  # (key, value) caches, see canonical_flame / canonical_state
        self._canonical_state: tuple | None = None
        self._canonical_normals: tuple | None = None  # (the vertices they belong to, normals)

    # ---- canonical FLAME frame -------------------------------------------------------------------

    def canonical_flame(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(canonical vertices [V, 3], pose feature [1, 36], transforms with ghost bone [1, J + 1, 4, 4]).

        Depends on buffers only; computed once and again whenever a buffer changes (a checkpoint
        load, a device move).
        """
        key = _tensors_key(self._watched()[1])
        if self._canonical_flame is None or self._canonical_flame[0] != key:
            with torch.no_grad():
                out = self.flame(self.canonical_expression[None], self.canonical_pose[None])
            transforms = with_ghost_bone(out.transforms) if self.deformer.ghostbone else out.transforms
            self._canonical_flame = (key, (out.vertices[0], out.pose_feature, transforms))
        return self._canonical_flame[1]

    def canonical_normals(self) -> torch.Tensor:
        """Outward vertex normals [V, 3] of the canonical FLAME mesh (recomputed with `canonical_flame`)."""
        vertices, _, _ = self.canonical_flame()
        if self._canonical_normals is None or self._canonical_normals[0] is not vertices:
            faces = self.flame.faces
            self._canonical_normals = (vertices, vertex_normals(vertices, faces, outward_winding(vertices, faces)))
        return self._canonical_normals[1]

    # ---- points ----------------------------------------------------------------------------------

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    def set_points(self, points: torch.Tensor, source: torch.Tensor | None = None) -> None:
        """Replace the point set (after prune/grow, or when loading a checkpoint). `source` [M] names
        the old point each new one copies (per-point attributes follow it); without it they restart."""
        device = self.points.device
        if self.has_point_colors:
            colors = (self.point_color.detach()[source.to(device)] if source is not None
                      else torch.zeros(points.shape[0], 3, device=device))
            self.point_color = nn.Parameter(colors.clone())
        self.points = nn.Parameter(points.detach().clone().to(device))

    @property
    def has_point_colors(self) -> bool:
        return "point_color" in self._parameters

    # ---- what the caches watch -------------------------------------------------------------------

    def _watched(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(parameters, buffers), listed once: walking the module tree costs about a millisecond."""
        if self.__dict__.get("_watched_tensors") is None:
            self.__dict__["_watched_tensors"] = (list(self.parameters()), list(self.buffers()))
        return self.__dict__["_watched_tensors"]

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, (nn.Module, torch.Tensor)):  # a replaced network, parameter or buffer
            self.__dict__["_watched_tensors"] = None
        super().__setattr__(name, value)

    def _apply(self, fn, recurse: bool = True):
        self.__dict__["_watched_tensors"] = None  # a device or dtype move may replace tensors
        self._canonical_flame = self._canonical_state = self._canonical_normals = None
        return super()._apply(fn, recurse)

    def set_point_radius(self, radius: float) -> None:
        self.point_radius.fill_(radius)

    # ---- deformation -----------------------------------------------------------------------------

    def canonical_state(self, with_prior: bool = False, nearest_chunk: int = 4096) -> CanonicalState:
        """What does not depend on the frame: canonical logits, the deformer's outputs, x' and x0.

        While the avatar cannot change (no gradient, or every parameter frozen, as when animating
        or fitting test inputs), the state is computed once and reused until a parameter, buffer or
        the point set changes. With `with_prior`, the deformer is also evaluated on the detached
        points (in the same call) for the FLAME priors, which must not move the points. The nearest
        canonical FLAME vertices (priors, shading) are searched `nearest_chunk` points at a time.
        """
        parameters, buffers = self._watched()
        frozen = not torch.is_grad_enabled() or not any(p.requires_grad for p in parameters)
        if frozen and not with_prior:
            key = _tensors_key(parameters + buffers)
            if self._canonical_state is None or self._canonical_state[0] != key:
                self._canonical_state = (key, self._compute_canonical_state(False, nearest_chunk).for_reuse())
            return self._canonical_state[1]
        return self._compute_canonical_state(with_prior, nearest_chunk)

    def _compute_canonical_state(self, with_prior: bool, nearest_chunk: int) -> CanonicalState:
        _, canonical_feature, canonical_transforms = self.canonical_flame()
        n = self.n_points
        # Above CHECKPOINT_POINTS only the networks' inputs are kept and their activations are
        # recomputed in the backward pass, a chunk of points at a time: at 100k points they would
        # hold about 3.5 GB (the same maths, about a third more network compute).
        recompute = torch.is_grad_enabled() and n > CHECKPOINT_POINTS
        run = _recomputed if recompute else (lambda net, x: net(x))
        logits = run(self.canonical_net, self.points.detach())
        if self.has_point_colors:
            logits = CanonicalAttributes(logits.color + self.point_color, logits.scale, logits.rotation, logits.opacity)
        if with_prior:  # one deformer call for both: rows [:N] carry gradients to the points, rows [N:] do not
            deformer, prior = run(self.deformer, torch.cat([self.points, self.points.detach()])).split(n)
        else:
            deformer, prior = run(self.deformer, self.points), None
        shifted = self.points + deformer.offset  # x'
        unposed = inverse_points(shifted, self.canonical_expression[None], canonical_feature, canonical_transforms,
                                 deformer.shapedirs, deformer.posedirs, deformer.lbs_weights)[0]  # x0 [N, 3]
        rotation = nearest = normals = None
        if self.rotate_gaussians or self.shading is not None:  # each point's skinning in the canonical frame
            canonical_blend = blend_transforms(deformer.lbs_weights, canonical_transforms)[0, :, :3, :3]  # [N, 3, 3]
        if self.rotate_gaussians:  # the canonical frame's turn of each point, undone before a frame's
            rotation = polar_rotation(canonical_blend)
        if with_prior or self.shading is not None:
            nearest = self.nearest_flame_vertex(shifted, nearest_chunk)
        if self.shading is not None:
            # The nearest vertex's normal with the canonical frame's turn undone (its transpose: blends of
            # joint rotations are near rotations). No gradient: normals steer the lighting, not the skinning.
            with torch.no_grad():
                normals = (canonical_blend.transpose(-1, -2) @ self.canonical_normals()[nearest][..., None])[..., 0]
                normals = torch.nn.functional.normalize(normals, dim=-1)
        return CanonicalState(logits, deformer, shifted, unposed, prior, rotation, nearest, normals)

    def pose(self, state: CanonicalState, expression: torch.Tensor, flame_pose: torch.Tensor) -> Gaussians:
        """Gaussians [B, N, ...] of the frames given by expression [B, E] and FLAME pose [B, 15]."""
        pose_feature, transforms = self.flame.transforms_only(expression, flame_pose)
        if self.deformer.ghostbone:
            transforms = with_ghost_bone(transforms)
        deformer, logits = state.deformer, state.logits
        shaped = (state.unposed[None] + blendshape_offsets(expression[:, : self.deformer.num_exp], deformer.shapedirs)
                  + corrective_offsets(pose_feature, deformer.posedirs))  # [B, N, 3]
        blended = blend_transforms(deformer.lbs_weights, transforms)  # [B, N, 4, 4]
        posed = apply_transforms(blended, shaped)
        offsets = self.gaussian_net(posed.detach() - state.shifted.detach()[None])  # [B, N, ...]
        quats = torch.nn.functional.normalize(logits.rotation[None] + offsets.rotation, dim=-1)
        colors = torch.sigmoid(logits.color[None] + offsets.color)
        if state.rotation is not None:  # turn = R(frame) R(canonical)^T, applied on the left: q_turn * q
            turn = polar_rotation(blended[..., :3, :3]) @ state.rotation.transpose(-1, -2)
            quats = (quaternion_left_matrix(rotation_to_quaternion(turn)) @ quats[..., None])[..., 0]
        if state.normals is not None:  # albedo x the lighting of the normal turned by the frame's skinning
            with torch.no_grad():  # renormalised blend instead of its polar factor: close enough for lighting
                normals = torch.nn.functional.normalize((blended[..., :3, :3] @ state.normals[None, ..., None])[..., 0],
                                                        dim=-1)  # [B, N, 3]
            colors = (colors * self.shading(normals)).clamp(0.0, 1.0)
        return Gaussians(
            means=posed,
            quats=quats,
            scales=torch.sigmoid(logits.scale[None] + offsets.scale) * self.max_scale + self.point_radius,
            opacities=torch.sigmoid(logits.opacity[None] + offsets.opacity)[..., 0],
            colors=colors,
        )

    def deform(self, expression: torch.Tensor, flame_pose: torch.Tensor) -> tuple[Gaussians, torch.Tensor]:
        """Gaussians of the frames given by expression [B, E] and FLAME pose [B, 15] -> (Gaussians [B, N, ...], x' [N, 3])."""
        state = self.canonical_state()
        return self.pose(state, expression, flame_pose), state.shifted

    def nearest_flame_vertex(self, shifted: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """The nearest canonical FLAME vertex [N] of each x' [N, 3] (searched in chunks of `chunk` points)."""
        vertices, _, _ = self.canonical_flame()
        return nearest_vertex(shifted.detach(), vertices, chunk)

    # ---- rendering -------------------------------------------------------------------------------

    def camera(self, world_mat: torch.Tensor, intrinsics: torch.Tensor) -> Camera:
        """The rasterizer camera of one frame (world_mat [3, 4], intrinsics [4]) at this avatar's resolution."""
        return imavatar_camera(world_mat, intrinsics, width=self.img_res[1], height=self.img_res[0])

    def render(self, gaussians: Gaussians, cameras: Sequence[Camera]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rasterize the frames of `gaussians` [B, N, ...], one camera each. Returns rgb [B, H, W, 3],
        alpha [B, H, W], depth [B, H, W]."""
        background = constant((0.0,) * 3 if self.use_background else (1.0,) * 3, gaussians.means.dtype,
                              gaussians.means.device)
        g = gaussians
        out = rasterize_frames(g.means, g.quats, g.scales, g.opacities, g.colors, cameras, background, self.rasterizer)
        image = out.image
        if self.use_background:  # the learnt background shows where the Gaussians do not cover
            image = image + (1.0 - out.alpha[..., None]) * self.background
        return image, out.alpha, out.depth

    def forward(self, batch: FrameBatch, with_prior: bool = False, prior_chunk: int = 4096) -> AvatarOutput:
        """Render the frames of a batch (its expressions, FLAME poses and cameras). With `with_prior`,
        the output also carries what the FLAME priors compare (`AvatarOutput.prior`; the nearest
        vertices are searched `prior_chunk` points at a time)."""
        state = self.canonical_state(with_prior, prior_chunk)
        gaussians = self.pose(state, batch.expression, batch.flame_pose)
        cameras = [self.camera(batch.world_mat[b], batch.intrinsics[b]) for b in range(len(batch))]
        rgb, alpha, depth = self.render(gaussians, cameras)
        prior = None
        if with_prior:
            prior = PriorQuery(state.prior, state.nearest)
        return AvatarOutput(rgb, alpha, depth, gaussians, prior)


def _recomputed(net: nn.Module, x: torch.Tensor):
    """net(x) for a per-point network, keeping only x for the backward pass, which recomputes the
    activations chunk by chunk (so that at most one chunk's activations exist at a time)."""
    outputs = [checkpoint(net, chunk, use_reentrant=False) for chunk in x.split(CHECKPOINT_POINTS)]
    if len(outputs) == 1:
        return outputs[0]
    return type(outputs[0])(*(torch.cat([getattr(o, f.name) for o in outputs]) for f in fields(outputs[0])))


def _tensors_key(tensors) -> tuple:
    """Identity and in-place version of tensors: it changes when any is replaced, moved or modified
    (`_version` counts a tensor's in-place changes, such as an optimizer step or a state load)."""
    return tuple((t.data_ptr(), t._version, t.shape) for t in tensors)


def nearest_vertex(points: torch.Tensor, vertices: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index [N] of the nearest of vertices [V, 3] for each of points [N, 3], in chunks of points
    so that memory stays at chunk x V. The squared distance |p|^2 - 2 p.v + |v|^2 is ranked without
    its |p|^2 term: one matrix product and an argmin per chunk."""
    out = []
    with torch.no_grad():
        norms = (vertices * vertices).sum(dim=1)  # [V]
        for start in range(0, points.shape[0], chunk):
            ranking = torch.addmm(norms, points[start:start + chunk], vertices.T, alpha=-2.0)  # [chunk, V]
            out.append(ranking.argmin(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=points.device)
