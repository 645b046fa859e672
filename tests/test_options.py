"""Options beyond the reference (each a conf key) and the recipe tools: Gaussians turned by the
skinning, pose-dependent shading, per-point colours, camera-translation refinement, fixed-size
epochs, Adam's moments carried across prune/grow, the colour head of the reference (earlier
checkpoints upgraded), and the quality-against-time script."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dynavatar.cli import quality_vs_time
from dynavatar.config import load_conf
from dynavatar.errors import ConfigError
from dynavatar.flame import FLAME
from dynavatar.flame.lbs import axis_angle_to_matrix
from dynavatar.flame.mesh import vertex_normals
from dynavatar.model.avatar import Avatar
from dynavatar.model.build import restore_avatar
from dynavatar.model.frame_inputs import FrameInputs
from dynavatar.render.projection import quaternion_to_rotation
from dynavatar.train.optimizer_state import carry_adam_state
from dynavatar.train.trainer import Trainer, TrainOptions
from tiny_experiment import DEMO, REPO, experiment_root, tiny_conf, tiny_overrides


def make_avatar(synthetic_flame_paths, *overrides: str) -> Avatar:
    conf = load_conf(REPO / "confs" / "subject1.conf", ["model.point_cloud.n_init_points=200", *overrides])
    shape = torch.zeros(100)
    flame = FLAME(*synthetic_flame_paths, shape_params=shape)
    torch.manual_seed(0)
    return Avatar(conf.model, flame, shape, torch.zeros(50), 0.4, (32, 32),
                  nearest_chunk=conf.loss.flame_distance_chunk)


def test_a_turned_head_turns_its_gaussians(synthetic_flame_paths):
    avatar = make_avatar(synthetic_flame_paths, "model.rotate_gaussians=true")
    still = make_avatar(synthetic_flame_paths)
    pose = torch.zeros(1, 15)
    pose[0, :3] = torch.tensor([0.0, 0.6, 0.0])  # the global (root) joint turns the whole head
    with torch.no_grad():
        for model in (avatar, still):  # every point skinned to the root joint alone (bone 1; 0 is the ghost)
            model.deformer.skinning.bias[1] = 5.0
        turned, _ = avatar.deform(torch.zeros(1, 50), pose)
        unturned, _ = still.deform(torch.zeros(1, 50), pose)
        # Half-way between the root and the ghost bone (the identity): half the angle, same axis.
        for model in (avatar, still):
            model.deformer.skinning.bias[0] = 5.0
            model.canonical_cache.clear()  # a weight changed in place while the avatar is frozen
        half, _ = avatar.deform(torch.zeros(1, 50), pose)
        half_unturned, _ = still.deform(torch.zeros(1, 50), pose)
    frame = quaternion_to_rotation(turned.quats[0])
    canonical = quaternion_to_rotation(unturned.quats[0])  # the same Gaussians, never turned
    root = axis_angle_to_matrix(pose[0, :3])
    assert torch.allclose(frame, root @ canonical, atol=1e-5)
    halfway = axis_angle_to_matrix(pose[0, :3] / 2)
    assert torch.allclose(quaternion_to_rotation(half.quats[0]),
                          halfway @ quaternion_to_rotation(half_unturned.quats[0]), atol=1e-5)


def test_shading_starts_as_albedo_and_lights_the_turned_normal(synthetic_flame_paths):
    avatar = make_avatar(synthetic_flame_paths, "model.shading=true")
    plain = make_avatar(synthetic_flame_paths)
    pose = torch.zeros(1, 15)
    pose[0, :3] = torch.tensor([0.0, 0.6, 0.0])  # the root joint turns the head about y
    with torch.no_grad():
        for model in (avatar, plain):  # every point skinned to the root joint alone (bone 1; 0 is the ghost)
            model.deformer.skinning.bias[1] = 30.0
        lit, _ = avatar.deform(torch.zeros(1, 50), pose)
        albedo, _ = plain.deform(torch.zeros(1, 50), pose)
        assert torch.allclose(lit.colors, albedo.colors, atol=1e-6)  # the identity lighting
        avatar.shading.coefficients.zero_()
        avatar.shading.coefficients[1] = torch.tensor([1.0, 0.5, 0.25])  # light from +x, less in G and B
        lit, _ = avatar.deform(torch.zeros(1, 50), pose)
        normals = avatar.canonical_state().normals
    assert torch.allclose(normals.norm(dim=1), torch.ones(len(normals)), atol=1e-5)
    turned = normals @ axis_angle_to_matrix(pose[0, :3]).T  # the canonical frame's root is not turned
    expected = (albedo.colors[0] * turned[:, :1] * torch.tensor([1.0, 0.5, 0.25])).clamp(0, 1)
    assert torch.allclose(lit.colors[0], expected, atol=1e-4)
    vertices, _, _ = avatar.canonical_flame()  # outward: along the vertex's offset from the head's centre
    outward = (avatar.canonical_normals() * (vertices - vertices.mean(0))).sum(1) > 0
    assert outward.float().mean() > 0.8


@pytest.mark.parametrize("normals", ["skinned", "flame"])
def test_flame_normals_bend_with_the_expression(synthetic_flame_paths, normals):
    """`model.shading_normals=flame` lights the nearest vertex's normal on FLAME's mesh in the frame,
    which an expression bends; `skinned` turns the canonical normal with the skinning alone."""
    avatar = make_avatar(synthetic_flame_paths, "model.shading=true", f"model.shading_normals={normals}")
    plain = make_avatar(synthetic_flame_paths)
    pose = torch.zeros(1, 15)
    pose[0, :3] = torch.tensor([0.0, 0.6, 0.0])
    smile = torch.zeros(1, 50)
    smile[0, :4] = torch.tensor([2.5, -2.0, 2.0, 1.5])
    light = torch.tensor([1.0, 0.5, 0.25])  # from +x, less in G and B
    lit = {}
    with torch.no_grad():
        avatar.shading.coefficients.zero_()
        avatar.shading.coefficients[1] = light
        nearest = avatar.canonical_state().nearest
        for name, expression in (("still", torch.zeros(1, 50)), ("smile", smile)):
            albedo = plain.deform(expression, pose)[0].colors[0]
            lit[name] = avatar.deform(expression, pose)[0].colors[0]
            if normals == "flame":
                mesh = avatar.flame(expression, pose).vertices[0]
                normal = vertex_normals(mesh, avatar.flame.faces, avatar.canonical_winding())[nearest]
                assert torch.allclose(lit[name], (albedo * normal[:, :1] * light).clamp(0, 1), atol=1e-4)
            lit[name] = lit[name] / albedo.clamp(min=1e-6)  # the lighting alone
    moved = (lit["smile"] - lit["still"]).abs().max()
    assert moved > 0.05 if normals == "flame" else moved < 0.05


def test_shading_normals_must_be_known():
    with pytest.raises(ConfigError, match="shading_normals"):
        load_conf(DEMO, ["model.shading_normals=smooth"])


def test_point_colors_follow_their_points_and_load(synthetic_flame_paths):
    avatar = make_avatar(synthetic_flame_paths, "model.point_colors=true")
    assert avatar.point_color.shape == (200, 3)
    with torch.no_grad():
        avatar.point_color.copy_(torch.arange(200.0)[:, None].expand(200, 3))
        before = avatar.canonical_state().logits.color
    source = torch.tensor([5, 5, 7, 199])
    avatar.set_points(avatar.points[source] + 0.01, source)
    assert torch.equal(avatar.point_color[:, 0], torch.tensor([5.0, 5.0, 7.0, 199.0]))
    with torch.no_grad():
        after = avatar.canonical_state().logits.color
    assert after.shape == (4, 3) and not torch.allclose(after, before[:4])
    again = make_avatar(synthetic_flame_paths, "model.point_colors=true")
    restore_avatar(again, {"model_state_dict": avatar.state_dict()}, Path("memory"))
    assert torch.equal(again.point_color, avatar.point_color)


def test_earlier_checkpoints_with_a_two_layer_colour_head_load_unchanged(synthetic_flame_paths):
    avatar = make_avatar(synthetic_flame_paths)
    head = avatar.canonical_net.color_head
    assert [type(m).__name__ for m in head] == ["Linear", "Softplus", "Linear", "Linear"]  # the reference's
    old_state = {k: v for k, v in avatar.state_dict().items() if "color_head.3" not in k}
    old_state["canonical_net.color_head.2.weight"] = avatar.state_dict()["canonical_net.color_head.3.weight"]
    old_state["canonical_net.color_head.2.bias"] = avatar.state_dict()["canonical_net.color_head.3.bias"]
    with torch.no_grad():  # the model an earlier version held: no middle layer
        head[2].weight.copy_(torch.eye(256))
        head[2].bias.zero_()
        expected = avatar.canonical_state().logits.color
    fresh = make_avatar(synthetic_flame_paths)
    assert restore_avatar(fresh, {"model_state_dict": old_state}, Path("old.pth")) is True
    with torch.no_grad():
        assert torch.allclose(fresh.canonical_state().logits.color, expected, atol=1e-6)


def test_camera_translation_reaches_the_renderer_only_when_asked():
    world = torch.eye(4)[:3].expand(2, 3, 4).clone()
    world[:, 2, 3] = -4.0
    for apply, moved in ((True, True), (False, False)):
        inputs = FrameInputs(torch.zeros(2, 50), torch.zeros(2, 15), world, True, True, apply_translation=apply)
        with torch.no_grad():
            inputs.camera_translation.weight.add_(1.0)
        from dynavatar.data.batch import FrameBatch
        batch = FrameBatch(torch.arange(2), [1, 2], ["a", "a"], torch.zeros(2, 50), torch.zeros(2, 15), world,
                           torch.zeros(2, 4))
        out = inputs.apply(batch)
        assert (not torch.equal(out.world_mat, world)) is moved
        assert inputs.refined == ["expression", "pose"] + (["camera_translation"] if apply else [])


def test_removing_the_shared_change_keeps_what_differs_per_frame():
    world = torch.eye(4)[:3].expand(3, 3, 4).clone()
    tracked = torch.randn(3, 50)
    inputs = FrameInputs(tracked, torch.zeros(3, 15), world, True, True)
    per_frame = torch.tensor([[1.0], [-2.0], [1.0]]) * torch.randn(1, 50)  # sums to zero over the frames
    with torch.no_grad():
        inputs.expression.weight.add_(per_frame + 0.3)
        inputs.flame_pose.weight.add_(0.05)
    inputs.remove_shared_change()
    assert torch.allclose(inputs.expression.weight, tracked + per_frame, atol=1e-6)
    assert torch.allclose(inputs.flame_pose.weight, torch.zeros(3, 15), atol=1e-7)
    assert "tracked_expression" not in inputs.state_dict()  # checkpoints keep their layout


def test_the_change_summary_measures_each_input_from_its_tracked_value():
    """Angles between tracked and refined rotations (not differences of axis-angle numbers), for a
    tracked pose that is not zero; the translation only when it reaches the renderer."""
    world = torch.eye(4)[:3].expand(2, 3, 4).clone()
    poses = torch.zeros(2, 15)
    poses[:, 0:3] = torch.tensor([0.0, 0.4, 0.0])  # the head turned by 0.4 rad about y
    for apply in (False, True):
        inputs = FrameInputs(torch.zeros(2, 50), poses, world, True, True, apply_translation=apply)
        with torch.no_grad():
            inputs.expression.weight[1, :2] = torch.tensor([3.0, 4.0])
            inputs.flame_pose.weight[0, 0:3] = torch.tensor([0.0, 0.45, 0.0])  # 0.05 rad further about y
            inputs.flame_pose.weight[1, 6:9] = torch.tensor([0.0, 0.0, 1e-3])  # the jaw by a milliradian
            inputs.camera_translation.weight[1, 2] += 0.3
        change = inputs.change_summary()
        assert change["expression_mean"] == pytest.approx(2.5) and change["expression_max"] == pytest.approx(5.0)
        assert change["global_deg_max"] == pytest.approx(math.degrees(0.05), rel=1e-4)
        assert change["global_deg_mean"] == pytest.approx(math.degrees(0.05) / 2, rel=1e-4)
        assert change["jaw_deg_max"] == pytest.approx(math.degrees(1e-3), rel=1e-3)  # exact for small angles
        assert change["neck_deg_max"] == 0.0
        assert ("camera_translation_max" in change) is apply
        if apply:
            assert change["camera_translation_max"] == pytest.approx(0.3)
        assert inputs.change_summary(torch.tensor([1]))["global_deg_max"] == pytest.approx(0.0, abs=1e-4)
    # A change about another axis than the tracked turn's: the angle between the two rotations
    # (15.62 deg here), not the length of the difference of their axis-angle vectors (17.19 deg).
    tracked = torch.zeros(1, 15)
    tracked[0, 3:6] = torch.tensor([0.0, 1.5, 0.0])
    inputs = FrameInputs(torch.zeros(1, 50), tracked, world[:1], True, True)
    with torch.no_grad():
        inputs.flame_pose.weight[0, 3:6] = torch.tensor([0.3, 1.5, 0.0])
    expected = torch.rad2deg(torch.acos((torch.trace(
        axis_angle_to_matrix(tracked[0, 3:6]).T @ axis_angle_to_matrix(torch.tensor([0.3, 1.5, 0.0]))) - 1) / 2))
    assert inputs.change_summary()["neck_deg_max"] == pytest.approx(float(expected), rel=1e-4)
    assert float(expected) == pytest.approx(15.62, abs=0.01)


@pytest.mark.parametrize("per_frame_only", [False, True])
def test_refinement_per_frame_only_leaves_no_shared_change(data_folder, tmp_path, per_frame_only, caplog):
    trainer = Trainer(tiny_conf(data_folder, tmp_path, "train.optimize_inputs_after_epoch=0",
                                f"train.refine_per_frame_only={str(per_frame_only).lower()}"), TrainOptions(nepoch=2))
    assert "has no effect" not in caplog.text
    trainer.train_epoch(0)
    trainer.train_epoch(1)  # refines the inputs
    change = trainer.inputs.expression.weight.detach() - trainer.train_data.expressions.to(trainer.device)  # [F, 50]
    assert float(change.abs().max()) > 1e-5  # refined either way
    shared = float(change.mean(dim=0).abs().max())
    assert (shared < 1e-6) is per_frame_only, shared


def test_refinement_per_frame_only_says_when_nothing_is_refined(data_folder, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="dynavatar.train.trainer"):
        Trainer(tiny_conf(data_folder, tmp_path, "train.optimize_inputs_after_epoch=1",
                          "train.refine_per_frame_only=true"), TrainOptions(nepoch=2))
    assert "refine_per_frame_only has no effect" in caplog.text  # epochs 0 and 1, refined after epoch 1: none


def test_frames_per_epoch_fixes_the_epoch_length(data_folder, tmp_path):
    trainer = Trainer(tiny_conf(data_folder, tmp_path, "train.frames_per_epoch=20"), TrainOptions(nepoch=1))
    order = trainer.epoch_order(0)
    assert len(order) == 20 and set(order.tolist()) == set(range(len(trainer.train_data)))
    assert torch.equal(order, trainer.epoch_order(0)) and not torch.equal(order, trainer.epoch_order(1))
    whole = Trainer(tiny_conf(data_folder, tmp_path, "train.methodname=b"), TrainOptions(nepoch=1))
    assert sorted(whole.epoch_order(0).tolist()) == list(range(len(whole.train_data)))


def test_carried_adam_moments_follow_their_points():
    net = torch.nn.Parameter(torch.randn(4, 3))
    points = torch.nn.Parameter(torch.randn(5, 3))
    old = torch.optim.Adam([net, points], lr=1e-3)
    for _ in range(3):
        old.zero_grad()
        ((net * net).sum() + (points.sum(1) * torch.arange(5.0)).sum()).backward()
        old.step()
    source = torch.tensor([0, 2, 4, 4])  # two points pruned, point 4 copied once
    grown = torch.nn.Parameter(points.detach()[source] + 0.01)
    new = carry_adam_state(old, torch.optim.Adam([net, grown], lr=1e-3), source)
    assert new.state[net] is old.state[net]
    moments = new.state[grown]
    assert torch.equal(moments["exp_avg"], old.state[points]["exp_avg"][source])
    assert torch.equal(moments["exp_avg_sq"], old.state[points]["exp_avg_sq"][source])
    assert float(moments["step"]) == 3.0
    # Replaced without knowing where its rows came from: that parameter starts afresh.
    unknown = torch.nn.Parameter(torch.randn(5, 3))
    assert unknown not in carry_adam_state(old, torch.optim.Adam([net, unknown]), None).state
    with pytest.raises(ValueError, match="cannot be matched"):
        carry_adam_state(old, torch.optim.Adam([net]), source)


@pytest.mark.parametrize("keep", [False, True])
def test_adam_restarts_while_the_points_grow_then_keeps_its_moments_when_asked(data_folder, tmp_path, keep):
    trainer = Trainer(tiny_conf(data_folder, tmp_path, f"train.keep_optimizer_state={str(keep).lower()}"),
                      TrainOptions(nepoch=3))
    weight = trainer.avatar.gaussian_net.color_head[0].weight
    trainer.train_epoch(0)
    trainer.train_epoch(1)  # starts with the last growth (100 -> 200 points): a fresh optimizer either way
    steps = -(-len(trainer.train_data) // trainer.batch_size())
    assert trainer.avatar.n_points == 200 and float(trainer.optimizer.state[weight]["step"]) == steps
    before = trainer.optimizer
    trainer.begin_epoch(2)
    assert trainer.optimizer is not before
    if keep:
        assert [id(v) for v in trainer.optimizer.state.values()] == [id(v) for v in before.state.values()]
        assert torch.equal(trainer.optimizer.state[weight]["exp_avg"], before.state[weight]["exp_avg"])
    else:
        assert not trainer.optimizer.state


def quality_vs_time_args(data_folder: Path, tmp_path: Path, *options: str) -> list[str]:
    """quality_vs_time.py on the tiny experiment, writing its rows to tmp_path / "q.json"."""
    return ["--conf", DEMO, *options, "--json", str(tmp_path / "q.json"),
            *tiny_overrides(data_folder, tmp_path / "exps")]


def test_quality_vs_time_evaluates_at_each_budget(data_folder, tmp_path):
    out = tmp_path / "q.json"
    epochs = []

    def half_a_minute(stats: dict[str, float]) -> float:  # a fake clock: every epoch takes 30 s
        epochs.append(stats)
        return 30.0

    args = quality_vs_time_args(data_folder, tmp_path, "--budgets", "0.2,0.5,100", "--nepoch", "2", "--figure", "2")
    assert quality_vs_time.run(args, epoch_seconds=half_a_minute) == 0
    assert len(epochs) == 2
    rows = json.loads(out.read_text())["rows"]
    assert [r["budget_min"] for r in rows] == [0.2, 0.5, 100.0]
    # The first epoch passes two budgets; the last budget, beyond the recipe's end, gets its final model.
    assert [(r["epochs"], r["train_min"]) for r in rows] == [(1, 0.5), (1, 0.5), (2, 1.0)]
    assert all(5 < r["test_psnr"] < 60 and r["fitted_inputs"] == ["expression", "pose"] for r in rows)
    root = experiment_root(tmp_path / "exps", "demo-quality_vs_time")
    assert (root / "figure_100min.png").is_file() and (root / "quality_vs_time.md").is_file()


def test_quality_vs_time_evaluates_after_given_epochs(data_folder, tmp_path):
    assert quality_vs_time.run(quality_vs_time_args(data_folder, tmp_path, "--epochs", "2,1")) == 0
    rows = json.loads((tmp_path / "q.json").read_text())["rows"]
    assert [(r["budget_min"], r["epochs"]) for r in rows] == [(None, 1), (None, 2)]
    assert rows[0]["test_psnr"] != rows[1]["test_psnr"]  # two models, each evaluated
    with pytest.raises(ConfigError, match="--epochs"):
        quality_vs_time.run(quality_vs_time_args(data_folder, tmp_path, "--epochs", "1,x"))


def test_quality_vs_time_writes_under_its_own_name_and_never_replaces_a_run(data_folder, tmp_path):
    exps = tmp_path / "exps"
    Trainer(tiny_conf(data_folder, exps), TrainOptions(nepoch=1)).run()  # a normal run of the conf
    normal = experiment_root(exps)
    before = sorted(p.relative_to(normal) for p in normal.rglob("*"))
    args = quality_vs_time_args(data_folder, tmp_path, "--epochs", "1")
    assert quality_vs_time.run(args) == 0
    assert sorted(p.relative_to(normal) for p in normal.rglob("*")) == before  # left where and as it was
    assert sorted(p.name for p in normal.parent.iterdir()) == [normal.name]
    own = experiment_root(exps, "demo-quality_vs_time")
    assert (own / "quality_vs_time.md").is_file()
    with pytest.raises(ConfigError, match=r"already holds a run: pass --overwrite .* train\.methodname="):
        quality_vs_time.run(args)
    # A train.methodname= override names the run (as --name does), and no other folder is touched.
    assert quality_vs_time.run([*args, "train.methodname=mine"]) == 0
    assert json.loads((tmp_path / "q.json").read_text())["name"] == "mine"
    assert (experiment_root(exps, "mine") / "quality_vs_time.md").is_file()
    with pytest.raises(ConfigError, match="--name other and train.methodname=mine"):
        quality_vs_time.run([*args, "--name", "other", "train.methodname=mine"])
    assert quality_vs_time.run([*args, "--overwrite"]) == 0  # asked for: the earlier run moves aside, whole
    assert [p.name for p in own.parent.iterdir() if p.name.startswith(f"{own.name}.replaced-")]
    assert sorted(p.name for p in normal.parent.iterdir()) == [normal.name]
