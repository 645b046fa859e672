"""The avatar's deformation path, its networks' initial state, and the point schedule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from dynavatar.config import default_conf, load_conf
from dynavatar.flame import FLAME
from dynavatar.model.avatar import Avatar, nearest_vertex
from dynavatar.model.networks import CanonicalNetwork, DeformerNetwork, DeformerOutput
from dynavatar.train.strategy import CoarseToFine, prune_and_grow
from dynavatar.train.strategy.coarse_to_fine import initial_radius, noise_size, radius_factor_at, target_points

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def avatar(synthetic_flame_paths):
    conf = load_conf(REPO / "confs" / "subject1.conf")
    shape = torch.randn(100, generator=torch.Generator().manual_seed(1))
    flame = FLAME(*synthetic_flame_paths, shape_params=shape)
    expression = torch.randn(50, generator=torch.Generator().manual_seed(2)) * 0.5
    return Avatar(conf.model, flame, shape, expression, 0.4, (32, 32))


class FlameDeformer(torch.nn.Module):
    """Stands in for the deformer network: FLAME's own blendshapes, correctives and weights (ghost 0)
    for points that are the canonical FLAME vertices, and no offset."""

    def __init__(self, flame: FLAME) -> None:
        super().__init__()
        self.flame, self.num_exp, self.ghostbone = flame, flame.n_exp, True

    def forward(self, points: torch.Tensor) -> DeformerOutput:
        weights = torch.cat([torch.zeros(points.shape[0], 1), self.flame.lbs_weights], dim=1)
        return DeformerOutput(self.flame.shapedirs, self.flame.posedirs, weights, torch.zeros_like(points))


def test_points_at_canonical_flame_vertices_land_on_the_frames_mesh(avatar):
    canonical_vertices, _, _ = avatar.canonical_flame()
    network = avatar.deformer
    try:
        avatar.deformer = FlameDeformer(avatar.flame)
        avatar.set_points(canonical_vertices)
        gen = torch.Generator().manual_seed(4)
        expression = torch.randn(3, 50, generator=gen)
        pose = (torch.rand(3, 15, generator=gen) - 0.5) * 0.6
        gaussians, _ = avatar.deform(expression, pose)
        mesh = avatar.flame(expression, pose).vertices
        assert (gaussians.means - mesh).abs().max().item() <= 1e-4
        assert (mesh - canonical_vertices).abs().max().item() > 0.05  # the frames really differ
    finally:
        avatar.deformer = network


def test_canonical_frame_is_the_jaw_opened_mean_expression(avatar):
    vertices, feature, transforms = avatar.canonical_flame()
    assert transforms.shape == (1, 6, 4, 4)  # ghost bone + 5 FLAME joints
    assert torch.allclose(transforms[0, 0], torch.eye(4))
    assert avatar.canonical_pose[6].item() == pytest.approx(0.4)
    expected = avatar.flame(avatar.canonical_expression[None], avatar.canonical_pose[None]).vertices[0]
    assert torch.allclose(vertices, expected)


def test_deformer_starts_with_no_blendshapes_and_uniform_weights():
    deformer = DeformerNetwork()
    out = deformer(torch.randn(50, 3))
    assert out.shapedirs.abs().max() == 0 and out.posedirs.abs().max() == 0 and out.offset.abs().max() == 0
    assert torch.allclose(out.lbs_weights, torch.full((50, 6), 1 / 6))
    assert out.shapedirs.shape == (50, 3, 50) and out.posedirs.shape == (50, 36, 3)


def test_canonical_network_features_vary_across_points():
    torch.manual_seed(0)  # the spread depends on the initialisation: not on what earlier tests drew
    net = CanonicalNetwork()
    points = torch.nn.functional.normalize(torch.randn(200, 3), dim=1) * 0.5
    attrs = net(points)
    assert attrs.color.shape == (200, 3) and attrs.rotation.shape == (200, 4) and attrs.opacity.shape == (200, 1)
    # The reference's SDF-style init of the last trunk layer leaves about 1e-4 of spread (a dead softplus).
    assert attrs.color.std(0).min() > 1e-3


def test_activations_and_shapes(avatar):
    gaussians, shifted = avatar.deform(torch.zeros(2, 50), torch.zeros(2, 15))
    n = avatar.n_points
    assert gaussians.means.shape == (2, n, 3) and shifted.shape == (n, 3)
    assert torch.allclose(gaussians.quats.norm(dim=-1), torch.ones(2, n), atol=1e-5)
    assert (gaussians.scales >= avatar.point_radius).all()
    assert (gaussians.scales <= avatar.point_radius + avatar.max_scale).all()
    assert ((gaussians.opacities > 0) & (gaussians.opacities < 1)).all()


def test_nearest_vertex_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    points, vertices = torch.randn(1000, 3, generator=gen), torch.randn(300, 3, generator=gen)
    brute = ((points[:, None] - vertices[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(nearest_vertex(points, vertices, chunk=128), brute)


class TestSchedule:
    def test_paper_targets_and_radius(self):
        s = default_conf().model.point_cloud
        targets = {e: target_points(s, e) for e in (0, 4, 5, 9, 10, 15, 20, 25, 30, 39, 40, 50, 60, 200)}
        assert targets == {0: 400, 4: 400, 5: 800, 9: 800, 10: 1600, 15: 3200, 20: 6400, 25: 10000,
                           30: 20000, 39: 20000, 40: 40000, 50: 80000, 60: 100000, 200: 100000}
        assert initial_radius(s) == pytest.approx(0.15 * 0.75 ** 2)
        assert [radius_factor_at(s, e) for e in (5, 6, 40, 60, 61, 65, 70)] == [0.75, 1.0, 0.75, 0.9, 1.0, 0.75, 0.75]
        assert noise_size(s, 100, 0.01) == 0.01 and noise_size(s, 101, 0.01) == pytest.approx(0.004)

    def test_prune_and_grow(self):
        gen = torch.Generator().manual_seed(0)
        points = torch.randn(10, 3)
        keep = torch.tensor([True, False] * 5)
        new, source = prune_and_grow(points, keep, 12, 0.1, gen)
        assert new.shape == (12, 3) and source.shape == (12,)
        assert torch.equal(new[:5], points[keep]) and torch.equal(source[:5], torch.tensor([0, 2, 4, 6, 8]))
        assert keep[source].all()  # every new point copies a survivor
        # Each grown point is a survivor plus noise within [-0.05, 0.05].
        offsets = (new[5:, None] - points[keep][None]).abs().amax(-1).min(1).values
        assert (offsets <= 0.05 + 1e-6).all()

    def test_strategy_prunes_invisible_and_shrinks_radius(self):
        schedule = dataclasses.replace(default_conf().model.point_cloud, n_init_points=8, schedule_epochs=(1, 2),
                                       schedule_points=(12, 16), radius_factors=(0.5, 0.5), max_points=14)
        cloud = PointCloud(torch.randn(8, 3), 0.0)
        strategy = CoarseToFine(schedule, 0.1)
        strategy.initialize(cloud)
        assert float(cloud.point_radius) == initial_radius(schedule)
        strategy.observe(torch.tensor([[0.5] * 6 + [0.05] * 2]))  # two points below the prune threshold
        strategy.epoch_start(cloud, 1, torch.Generator().manual_seed(0))
        assert cloud.points.shape == (12, 3)
        assert float(cloud.point_radius) == pytest.approx(initial_radius(schedule) / 2)
        strategy.observe(torch.ones(2, 12))
        strategy.epoch_start(cloud, 2, torch.Generator().manual_seed(0))
        assert cloud.points.shape == (14, 3)  # capped by max_points
        strategy.observe(torch.ones(1, 14))
        before = cloud.points
        strategy.epoch_start(cloud, 3, torch.Generator().manual_seed(0))
        assert cloud.points is before  # nothing to prune or grow: the point set is kept


class PointCloud:
    """What the strategy edits on an avatar: its points and point radius."""

    def __init__(self, points: torch.Tensor, radius: float) -> None:
        self.points, self.point_radius = points, torch.tensor(radius, dtype=torch.float64)

    @property
    def n_points(self) -> int:
        return self.points.shape[0]

    def set_points(self, points: torch.Tensor, source: torch.Tensor | None = None) -> None:
        self.points = points

    def set_point_radius(self, radius: float) -> None:
        self.point_radius.fill_(radius)
