"""The avatar: canonical Gaussians, their expression-guided deformation to a frame, and rendering.

One frame's data flow (each arrow one call here):
points -> canonical network (logits) -> deformer (E, P, W, d) -> undo the canonical FLAME frame and
apply the frame's (LBS) -> gaussian network on the offset -> activations -> rasterize per frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

from ..cameras import Camera, imavatar_camera
from ..config import ModelConf
from ..data.batch import FrameBatch
from ..flame import FLAME
from ..flame.lbs import forward_points, inverse_points, with_ghost_bone
from ..render import rasterize
from .networks import CanonicalNetwork, DeformerNetwork, DeformerOutput, GaussianNetwork


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


@dataclass
class AvatarOutput:
    rgb: torch.Tensor  # [B, H, W, 3]
    alpha: torch.Tensor  # [B, H, W]
    depth: torch.Tensor  # [B, H, W] alpha-weighted camera depth
    gaussians: Gaussians  # [B, N, ...]


def initial_points(n: int, radius: float, generator: torch.Generator) -> torch.Tensor:
    """n points [n, 3] on a sphere: a uniform cube sample pushed onto the sphere."""
    cube = torch.rand(n, 3, generator=generator) * 2.0 - 1.0
    return torch.nn.functional.normalize(cube, dim=1) * radius


class Avatar(nn.Module):
    """Animatable Gaussian head avatar (MonoGaussianAvatar).

    Persistent state (what checkpoints hold): the points, the three networks, the point radius
    (set by the training strategy), the canonical expression and pose, the subject's FLAME shape,
    and (with `use_background`) the background.
    """

    def __init__(self, model_conf: ModelConf, flame: FLAME, shape_params: torch.Tensor,
                 canonical_expression: torch.Tensor, canonical_jaw: float, img_res: Sequence[int],
                 use_background: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.flame = flame
        self.img_res = (int(img_res[0]), int(img_res[1]))  # (H, W)
        self.max_scale = model_conf.max_scale
        self.rasterizer = model_conf.rasterizer
        self.canonical_net = CanonicalNetwork(**asdict(model_conf.geometry_network))
        self.deformer = DeformerNetwork(n_joints=flame.n_joints, **asdict(model_conf.deformer_network))
        self.gaussian_net = GaussianNetwork(**asdict(model_conf.gaussian_network))
        schedule = model_conf.point_cloud
        generator = torch.Generator().manual_seed(seed)
        self.points = nn.Parameter(initial_points(schedule.n_init_points, schedule.init_radius, generator))
        # The smallest Gaussian extent, added to every scale; the coarse-to-fine strategy shrinks it.
        # float64, so that its repeated shrinking rounds as a Python float does.
        self.register_buffer("point_radius", torch.tensor(schedule.initial_radius(), dtype=torch.float64))
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

    # ---- canonical FLAME frame -------------------------------------------------------------------

    def canonical_flame(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(canonical vertices [V, 3], pose feature [1, 36], transforms with ghost bone [1, J + 1, 4, 4]).

        Recomputed on each call: one FLAME forward is cheap next to rendering, and this way it can
        never go stale after a checkpoint load or a device move.
        """
        with torch.no_grad():
            out = self.flame(self.canonical_expression[None], self.canonical_pose[None])
        transforms = with_ghost_bone(out.transforms) if self.deformer.ghostbone else out.transforms
        return out.vertices[0], out.pose_feature, transforms

    # ---- points ----------------------------------------------------------------------------------

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    def set_points(self, points: torch.Tensor) -> None:
        """Replace the point set (after prune/grow, or when loading a checkpoint)."""
        self.points = nn.Parameter(points.detach().clone().to(self.points.device))

    def set_point_radius(self, radius: float) -> None:
        self.point_radius.fill_(radius)

    # ---- deformation -----------------------------------------------------------------------------

    def deform(self, expression: torch.Tensor, flame_pose: torch.Tensor) -> tuple[Gaussians, torch.Tensor]:
        """Gaussians of the frames given by expression [B, E] and FLAME pose [B, 15] -> (Gaussians [B, N, ...], x' [N, 3])."""
        _, canonical_feature, canonical_transforms = self.canonical_flame()
        pose_feature, transforms = self.flame.transforms_only(expression, flame_pose)
        if self.deformer.ghostbone:
            transforms = with_ghost_bone(transforms)
        logits = self.canonical_net(self.points.detach())
        deformer = self.deformer(self.points)
        shifted = self.points + deformer.offset  # x'
        blend = (deformer.shapedirs, deformer.posedirs, deformer.lbs_weights)
        unposed = inverse_points(shifted, self.canonical_expression[None], canonical_feature,
                                 canonical_transforms, *blend)[0]  # x0 [N, 3]
        posed = forward_points(unposed, expression[:, : self.deformer.num_exp], pose_feature, transforms, *blend)
        offsets = self.gaussian_net(posed.detach() - shifted.detach()[None])  # [B, N, ...]
        gaussians = Gaussians(
            means=posed,
            quats=torch.nn.functional.normalize(logits.rotation[None] + offsets.rotation, dim=-1),
            scales=torch.sigmoid(logits.scale[None] + offsets.scale) * self.max_scale + self.point_radius,
            opacities=torch.sigmoid(logits.opacity[None] + offsets.opacity)[..., 0],
            colors=torch.sigmoid(logits.color[None] + offsets.color),
        )
        return gaussians, shifted

    def prior_query(self, chunk: int = 4096) -> tuple[DeformerOutput, torch.Tensor]:
        """Deformer outputs on the detached points, for the FLAME priors (which must not move the
        points), and the nearest canonical FLAME vertex of each x' = x + d [N] (searched in chunks
        of `chunk` points)."""
        deformer = self.deformer(self.points.detach())
        vertices, _, _ = self.canonical_flame()
        return deformer, nearest_vertex(self.points.detach() + deformer.offset.detach(), vertices, chunk)

    # ---- rendering -------------------------------------------------------------------------------

    def camera(self, world_mat: torch.Tensor, intrinsics: torch.Tensor) -> Camera:
        """The rasterizer camera of one frame (world_mat [3, 4], intrinsics [4]) at this avatar's resolution."""
        return imavatar_camera(world_mat, intrinsics, width=self.img_res[1], height=self.img_res[0])

    def render(self, gaussians: Gaussians, cameras: Sequence[Camera]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rasterize each frame (one call per frame). Returns rgb [B, H, W, 3], alpha [B, H, W], depth [B, H, W]."""
        background = torch.zeros(3) if self.use_background else torch.ones(3)
        background = background.to(gaussians.means)
        images, alphas, depths = [], [], []
        for index, camera in enumerate(cameras):
            g = gaussians.frame(index)
            out = rasterize(g.means, g.quats, g.scales, g.opacities, g.colors, camera, background, self.rasterizer)
            image = out.image
            if self.use_background:  # the learnt background shows where the Gaussians do not cover
                image = image + (1.0 - out.alpha[..., None]) * self.background
            images.append(image)
            alphas.append(out.alpha)
            depths.append(out.depth)
        return torch.stack(images), torch.stack(alphas), torch.stack(depths)

    def forward(self, batch: FrameBatch) -> AvatarOutput:
        """Render the frames of a batch (its expressions, FLAME poses and cameras)."""
        gaussians, _ = self.deform(batch.expression, batch.flame_pose)
        cameras = [self.camera(batch.world_mat[b], batch.intrinsics[b]) for b in range(len(batch))]
        rgb, alpha, depth = self.render(gaussians, cameras)
        return AvatarOutput(rgb, alpha, depth, gaussians)


def nearest_vertex(points: torch.Tensor, vertices: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index [N] of the nearest of vertices [V, 3] for each of points [N, 3], in chunks of points
    so that memory stays at chunk x V."""
    out = []
    with torch.no_grad():
        for start in range(0, points.shape[0], chunk):
            out.append(torch.cdist(points[start:start + chunk], vertices).argmin(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=points.device)
