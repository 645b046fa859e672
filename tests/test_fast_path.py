"""The training step's fast path computes the method's maths: its losses and gradients equal those of
a straightforward implementation (the deformer evaluated twice, a batched LU solve for the inverse
skinning, LU-based polar factors for the Gaussians' turn, one rasterizer call per frame, the canonical
FLAME frame recomputed) on a fixed batch, with the options beyond the reference (turned Gaussians,
per-point colours, shading) on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynavatar.config import load_conf
from dynavatar.flame.lbs import with_ghost_bone
from dynavatar.flame.mesh import outward_winding, vertex_normals
from dynavatar.model.nearest import nearest_vertex
from dynavatar.model.recompute import RecomputePolicy
from dynavatar.model.shading import sh_basis
from dynavatar.render import rasterize
from dynavatar.render.projection import rotation_to_quaternion
from dynavatar.subject_generator import generate_subject
from dynavatar.train.trainer import Trainer, TrainOptions

REPO = Path(__file__).resolve().parents[1]
SUBJECT = "fast"


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")
    generate_subject(root / "datasets", SUBJECT, res=32, frames=4, seed=7)
    conf = load_conf(REPO / "confs" / "demo.conf", [
        f"dataset.data_folder={root / 'datasets'}", f"dataset.subject_name={SUBJECT}", "dataset.synthetic=false",
        "dataset.train.img_res=[32, 32]", "dataset.test.img_res=[32, 32]", f"train.exps_folder={root / 'exps'}",
        "model.point_cloud.n_init_points=300", "loss.flame_distance_chunk=128", "model.rotate_gaussians=true",
        "model.point_colors=true", "model.shading=true",  # every option beyond the reference ...
        "loss.ssim_weight=0.25"])  # ... and every loss term the recipes use
    trainer = Trainer(conf, TrainOptions(nepoch=1))
    # Give the networks non-trivial outputs (the deformer's last layers start at zero).
    with torch.no_grad():
        for p in trainer.avatar.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return trainer


def straightforward_loss(trainer: Trainer, batch) -> dict[str, torch.Tensor]:
    """The loss terms of one step written out directly from the method's description."""
    avatar, loss = trainer.avatar, trainer.loss
    with torch.no_grad():
        out = avatar.flame(avatar.canonical_expression[None], avatar.canonical_pose[None])
    canonical_transforms = with_ghost_bone(out.transforms)
    logits = avatar.canonical_net(avatar.points.detach())
    color_logits = logits.color + avatar.point_color if avatar.has_point_colors else logits.color
    deformer = avatar.deformer(avatar.points)
    shifted = avatar.points + deformer.offset
    blended = torch.einsum("nj,jxy->nxy", deformer.lbs_weights, canonical_transforms[0])  # [N, 4, 4]
    unskinned = torch.linalg.solve(blended[:, :3, :3], (shifted - blended[:, :3, 3])[..., None])[..., 0]
    unposed = (unskinned - torch.einsum("e,nce->nc", avatar.canonical_expression, deformer.shapedirs)
               - torch.einsum("p,npc->nc", out.pose_feature[0], deformer.posedirs))
    pose_feature, transforms = avatar.flame.transforms_only(batch.expression, batch.flame_pose)
    shaped = (unposed[None] + torch.einsum("be,nce->bnc", batch.expression, deformer.shapedirs)
              + torch.einsum("bp,npc->bnc", pose_feature, deformer.posedirs))
    frame = torch.einsum("nj,bjxy->bnxy", deformer.lbs_weights, with_ghost_bone(transforms))
    posed = (frame[..., :3, :3] @ shaped[..., None])[..., 0] + frame[..., :3, 3]
    offsets = avatar.gaussian_net(posed.detach() - shifted.detach()[None])
    quats = torch.nn.functional.normalize(logits.rotation[None] + offsets.rotation, dim=-1)
    if avatar.rotate_gaussians:  # turn by polar(frame) polar(canonical)^T
        turn = polar_by_inverse(frame[..., :3, :3]) @ polar_by_inverse(blended[:, :3, :3]).transpose(-1, -2)
        quats = hamilton(rotation_to_quaternion(turn), quats)
    scales = torch.sigmoid(logits.scale[None] + offsets.scale) * avatar.max_scale + avatar.point_radius
    opacities = torch.sigmoid(logits.opacity[None] + offsets.opacity)[..., 0]
    colors = torch.sigmoid(color_logits[None] + offsets.color)
    prior = avatar.deformer(avatar.points.detach())
    nearest = nearest_vertex(avatar.points.detach() + prior.offset.detach(), out.vertices[0], 64)
    if avatar.shading is not None:  # albedo x lighting of the nearest vertex's normal turned by the skinning
        vertices, faces = out.vertices[0], avatar.flame.faces  # (no gradient reaches the skinning through it)
        normal = vertex_normals(vertices, faces, outward_winding(vertices, faces))[nearest]
        canonical, posed_frame = blended[:, :3, :3].detach(), frame[..., :3, :3].detach()
        unturned = torch.nn.functional.normalize((canonical.transpose(-1, -2) @ normal[..., None])[..., 0], dim=-1)
        turned = torch.nn.functional.normalize((posed_frame @ unturned[None, ..., None])[..., 0], dim=-1)
        colors = (colors * (sh_basis(turned) @ avatar.shading.coefficients)).clamp(0, 1)
    images = []
    for b in range(len(batch)):
        camera = avatar.camera(batch.world_mat[b], batch.intrinsics[b])
        images.append(rasterize(posed[b], quats[b], scales[b], opacities[b], colors[b], camera, torch.ones(3),
                                "torch").image)
    terms = loss.photometric(torch.stack(images), batch.rgb)
    terms.update(loss.flame_prior(prior, nearest, avatar.flame))
    return terms


def polar_by_inverse(matrices: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """The polar rotation by the plain Newton iteration X <- (X + X^-T) / 2 with LU inverses (an SVD's
    gradient is undefined for the nearly equal singular values of a near-rotation)."""
    x = matrices
    for _ in range(iterations):
        x = 0.5 * (x + torch.linalg.inv(x).transpose(-1, -2))
    return x


def hamilton(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The quaternion product p * q, (w, x, y, z) last."""
    pw, px, py, pz = p.unbind(-1)
    qw, qx, qy, qz = q.unbind(-1)
    return torch.stack([pw * qw - px * qx - py * qy - pz * qz, pw * qx + px * qw + py * qz - pz * qy,
                        pw * qy - px * qz + py * qw + pz * qx, pw * qz + px * qy - py * qx + pz * qw], dim=-1)


def _gradients(trainer: Trainer, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    trainer.avatar.zero_grad(set_to_none=True)
    trainer.loss.total(terms).backward()
    return {name: p.grad.clone() for name, p in trainer.avatar.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recomputed"])
def test_fast_step_equals_the_straightforward_step(trainer, recompute, monkeypatch):
    # model.recompute: off keeps every activation; on recomputes them in the backward pass, here in
    # chunks of 128 points (300 points: three chunks)
    monkeypatch.setattr(trainer.avatar, "recompute", RecomputePolicy("on" if recompute else "off", 128))
    batch = trainer.train_data.batch([0, 3, 5])
    trainer.loss.set_epoch(0)
    out = trainer.avatar(batch, prior_terms=trainer.loss.prior_terms(trainer.avatar.flame),
                         prior_chunk=trainer.conf.loss.flame_distance_chunk)  # as a training step asks
    fast = trainer.loss.photometric(out.rgb, batch.rgb)
    fast.update(out.prior_terms)
    fast_grads = _gradients(trainer, fast)
    reference = straightforward_loss(trainer, batch)
    reference_grads = _gradients(trainer, reference)
    assert fast.keys() == reference.keys() and len(fast) == 5
    for name in fast:
        assert torch.allclose(fast[name], reference[name], rtol=1e-5, atol=1e-7), name
    assert fast_grads.keys() == reference_grads.keys() and "points" in fast_grads
    for name, grad in fast_grads.items():
        error = (grad - reference_grads[name]).norm() / reference_grads[name].norm().clamp_min(1e-12)
        assert error <= 1e-4, (name, float(error))
    assert float(trainer.loss.total(fast).detach()) > 0


def test_animation_reuses_the_frame_independent_state_until_the_avatar_changes(trainer):
    avatar = trainer.avatar
    expression, pose = torch.zeros(1, 50), torch.zeros(1, 15)
    with torch.no_grad():
        first = avatar.canonical_state()
        assert avatar.canonical_state() is first  # reused
        gaussians, _ = avatar.deform(expression, pose)
    with torch.enable_grad():  # training recomputes it, with gradients, and drops the kept one
        assert avatar.canonical_state() is not first
    with torch.no_grad():
        again = avatar.canonical_state()
        assert again is not first and torch.equal(again.unposed, first.unposed)
        avatar.deformer.blendshapes.bias.add_(0.01)  # an in-place change while frozen ...
        avatar.canonical_cache.clear()  # ... is announced by whoever makes it
        second = avatar.canonical_state()
        assert second is not again and not torch.equal(second.unposed, first.unposed)
        avatar.set_points(avatar.points[:-10])  # prune/grow replaces the point set
        assert avatar.canonical_state().unposed.shape[0] == avatar.n_points
        avatar.deformer.blendshapes.bias.sub_(0.01)
        avatar.canonical_cache.clear()
    assert gaussians.means.shape == (1, avatar.n_points + 10, 3)
