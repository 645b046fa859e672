"""FLAME loading (with chumpy-style pickles), mesh and point-wise skinning, and the synthetic model."""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import torch

from dynavatar.errors import FlameModelError
from dynavatar.flame import FLAME, build_synthetic_flame, load_flame_model, load_landmark_embedding
from dynavatar.flame.lbs import forward_points, inverse_points, with_ghost_bone


@pytest.fixture(scope="module")
def flame(synthetic_flame_paths):
    shape = torch.randn(100, generator=torch.Generator().manual_seed(3))
    return FLAME(*synthetic_flame_paths, shape_params=shape)


def random_inputs(flame, batch=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    expression = torch.randn(batch, 50, generator=gen) * 1.5
    pose = (torch.rand(batch, 15, generator=gen) - 0.5) * 0.8  # up to +-0.4 rad per axis
    return expression, pose


def test_pointwise_skinning_of_flame_vertices_equals_mesh_forward(flame):
    expression, pose = random_inputs(flame)
    out = flame(expression, pose)
    posed = forward_points(flame.v_template, expression, out.pose_feature, out.transforms,
                           flame.shapedirs, flame.posedirs, flame.lbs_weights)
    assert (posed - out.vertices).abs().max().item() <= 1e-5
    # The motion is real (not a trivially equal identity transform).
    assert (out.vertices - flame.v_template).abs().max().item() > 0.05


def test_ghost_bone_with_zero_weight_changes_nothing(flame):
    expression, pose = random_inputs(flame, seed=1)
    out = flame(expression, pose)
    weights = torch.cat([torch.zeros(flame.lbs_weights.shape[0], 1), flame.lbs_weights], dim=1)
    posed = forward_points(flame.v_template, expression, out.pose_feature, with_ghost_bone(out.transforms),
                           flame.shapedirs, flame.posedirs, weights)
    assert (posed - out.vertices).abs().max().item() <= 1e-5


def test_inverse_of_forward_is_identity(flame):
    expression, pose = random_inputs(flame, seed=2)
    out = flame(expression, pose)
    gen = torch.Generator().manual_seed(5)
    n = 500
    points = torch.randn(n, 3, generator=gen) * 0.3
    shapedirs = torch.randn(n, 3, 50, generator=gen) * 0.01
    posedirs = torch.randn(n, 36, 3, generator=gen) * 0.01
    weights = torch.softmax(torch.randn(n, 6, generator=gen) * 3, dim=1)
    transforms = with_ghost_bone(out.transforms)
    posed = forward_points(points, expression, out.pose_feature, transforms, shapedirs, posedirs, weights)
    back = inverse_points(posed, expression, out.pose_feature, transforms, shapedirs, posedirs, weights)
    assert (back - points).abs().max().item() <= 1e-5
    assert (posed - points).abs().max().item() > 0.05


def test_zero_pose_and_expression_give_the_shaped_template(synthetic_flame_paths):
    shape = torch.randn(100, generator=torch.Generator().manual_seed(7))
    shaped = FLAME(*synthetic_flame_paths, shape_params=shape)
    plain = FLAME(*synthetic_flame_paths)
    out = shaped(torch.zeros(2, 50), torch.zeros(2, 15))
    raw = load_flame_model(synthetic_flame_paths[0])
    expected = (raw.v_template + raw.shapedirs[:, :, :100] @ shape.double().numpy()) * 4.0
    assert np.abs(out.vertices[0].numpy() - expected).max() <= 1e-5
    assert (out.vertices[1] - shaped.v_template).abs().max().item() <= 1e-6
    # Shape really changes the template.
    assert (shaped.v_template - plain.v_template).abs().max().item() > 1e-3


def test_geometry_is_scaled_by_four(synthetic_flame_paths):
    raw = load_flame_model(synthetic_flame_paths[0])
    flame = FLAME(*synthetic_flame_paths)
    np.testing.assert_allclose(flame.v_template.numpy(), raw.v_template * 4, atol=1e-6)
    np.testing.assert_allclose(flame.shapedirs.numpy(), raw.shapedirs[:, :, 300:350] * 4, atol=1e-6)
    np.testing.assert_allclose(flame.posedirs.permute(0, 2, 1).numpy(), raw.posedirs * 4, atol=1e-6)


def test_landmarks_are_68_points_on_the_mesh(flame):
    expression, pose = random_inputs(flame, seed=4)
    out = flame(expression, pose)
    assert out.landmarks.shape == (4, 68, 3)
    # Each landmark lies within the bounding box of its face's corners.
    corners = out.vertices[:, flame.faces[flame.lmk_faces_idx]]  # [B, 68, 3, 3]
    assert (out.landmarks >= corners.min(dim=2).values - 1e-6).all()
    assert (out.landmarks <= corners.max(dim=2).values + 1e-6).all()


def test_transforms_only_matches_forward(flame):
    expression, pose = random_inputs(flame, seed=6)
    out = flame(expression, pose)
    feat, transforms = flame.transforms_only(expression, pose)
    assert torch.allclose(feat, out.pose_feature, atol=1e-6)
    assert torch.allclose(transforms, out.transforms, atol=1e-5)


def _write_chumpy_style_pickle(path, arrays):
    """A pickle whose arrays are chumpy `Ch` objects and whose regressor is a scipy csc matrix,
    written with stand-in classes under those module names (neither package is needed)."""
    ch_module = types.ModuleType("chumpy.ch")
    sparse_module = types.ModuleType("scipy.sparse._csc")

    class Ch:  # what chumpy pickles: the value lives in the instance dict under `x`
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()

    class csc_matrix:  # noqa: N801  (scipy's name)
        def __init__(self, dense):
            dense = np.asarray(dense)
            data, indices, indptr = [], [], [0]
            for col in range(dense.shape[1]):
                rows = np.nonzero(dense[:, col])[0]
                data.extend(dense[rows, col]); indices.extend(rows); indptr.append(len(data))
            self.data, self.indices, self.indptr = np.array(data), np.array(indices), np.array(indptr)
            self._shape = dense.shape

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    csc_matrix.__module__, csc_matrix.__qualname__ = "scipy.sparse._csc", "csc_matrix"
    ch_module.Ch, sparse_module.csc_matrix = Ch, csc_matrix
    saved = {name: sys.modules.get(name) for name in ("chumpy", "chumpy.ch", "scipy.sparse._csc")}
    sys.modules.update({"chumpy": types.ModuleType("chumpy"), "chumpy.ch": ch_module,
                        "scipy.sparse._csc": sparse_module})
    try:
        obj = dict(arrays)
        for key in ("v_template", "shapedirs", "posedirs", "weights"):
            obj[key] = Ch(arrays[key])
        obj["J_regressor"] = csc_matrix(arrays["J_regressor"])
        with open(path, "wb") as handle:
            pickle.dump(obj, handle, protocol=2)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def test_chumpy_pickle_loads_without_chumpy(tmp_path, synthetic_flame_paths):
    arrays = build_synthetic_flame().arrays
    path = tmp_path / "generic_model.pkl"
    _write_chumpy_style_pickle(path, arrays)
    assert b"chumpy.ch" in path.read_bytes() and b"csc_matrix" in path.read_bytes()
    assert "chumpy" not in sys.modules
    model = load_flame_model(path)
    np.testing.assert_array_equal(model.v_template, arrays["v_template"])
    np.testing.assert_array_equal(model.shapedirs, arrays["shapedirs"])
    np.testing.assert_array_equal(model.j_regressor, arrays["J_regressor"])
    flame = FLAME(path, synthetic_flame_paths[1])
    reference = FLAME(*synthetic_flame_paths)
    expression, pose = random_inputs(reference, seed=8)
    assert torch.allclose(flame(expression, pose).vertices, reference(expression, pose).vertices, atol=1e-6)


def test_missing_model_file_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "FLAME2020" / "generic_model.pkl"
    with pytest.raises(FlameModelError, match="generic_model.pkl.*flame.is.tue.mpg.de.*synthetic"):
        load_flame_model(missing)


def test_a_file_that_is_not_flame_is_rejected(tmp_path):
    path = tmp_path / "generic_model.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"weights": np.zeros(3)}, handle)
    with pytest.raises(FlameModelError, match="not a FLAME model file"):
        load_flame_model(path)
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(FlameModelError, match="not a readable FLAME model"):
        load_flame_model(path)


def test_landmark_file_errors(tmp_path):
    with pytest.raises(FlameModelError, match="landmark embedding not found"):
        load_landmark_embedding(tmp_path / "landmark_embedding.npy")
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array({"something": 1}, dtype=object), allow_pickle=True)
    with pytest.raises(FlameModelError, match="full_lmk_faces_idx"):
        load_landmark_embedding(bad)


@pytest.fixture(scope="module")
def model():
    return build_synthetic_flame()


class TestSyntheticModel:
    def test_deterministic(self, model):
        again = build_synthetic_flame()
        for key in ("v_template", "shapedirs", "posedirs", "weights", "J_regressor"):
            np.testing.assert_array_equal(model.arrays[key], again.arrays[key])

    def test_flame_file_layout(self, model):
        a = model.arrays
        n = a["v_template"].shape[0]
        assert 1000 <= n <= 5000
        assert a["shapedirs"].shape == (n, 3, 400)
        assert a["posedirs"].shape == (n, 3, 36)
        assert a["J_regressor"].shape == (5, n) and a["weights"].shape == (n, 5)
        assert a["kintree_table"].shape == (2, 5)
        np.testing.assert_allclose(a["weights"].sum(1), 1.0)
        np.testing.assert_allclose(a["J_regressor"].sum(1), 1.0)
        assert model.lmk_faces_idx.shape == (68,) and model.lmk_bary_coords.shape == (68, 3)
        np.testing.assert_allclose(model.lmk_bary_coords.sum(1), 1.0)
        assert (model.lmk_bary_coords >= -1e-9).all()

    def test_faces_point_outward(self, model):
        v, f = model.arrays["v_template"], model.arrays["f"].astype(np.int64)
        n_head = int(np.nonzero(model.arrays["weights"][:, 3])[0].min())  # eyeballs come last
        head = f[(f < n_head).all(1)]
        normals = np.cross(v[head[:, 1]] - v[head[:, 0]], v[head[:, 2]] - v[head[:, 0]])
        area = np.linalg.norm(normals, axis=1)
        outward = (normals * v[head].mean(1)).sum(1) > 0
        assert outward[area > 1e-12].mean() > 0.97

    def test_jaw_opens_the_mouth_and_moves_only_the_lower_face(self, synthetic_flame_paths):
        flame = FLAME(*synthetic_flame_paths)
        pose = torch.zeros(1, 15)
        pose[0, 6] = 0.3
        out = flame(torch.zeros(1, 50), pose)
        moved = (out.vertices[0] - flame.v_template).norm(dim=1)
        y = flame.v_template[:, 1]
        lm = flame.landmarks(flame.v_template[None])[0]
        mouth_y = lm[48:68, 1].mean()
        assert moved[y > mouth_y + 0.1].max() < 1e-6  # forehead, eyes, nose stay
        assert moved[y < mouth_y - 0.05].max() > 0.05  # chin drops
        # Inner lips separate: upper (61-63) and lower (65-67) inner lip landmarks move apart.
        gap_closed = (lm[61:64] - lm[65:68].flip(0)).norm(dim=1).max()
        gap_open = (out.landmarks[0, 61:64] - out.landmarks[0, 65:68].flip(0)).norm(dim=1).min()
        assert gap_closed < 1e-6 and gap_open > 0.05

    def test_expressions_move_different_regions_smoothly(self, synthetic_flame_paths):
        flame = FLAME(*synthetic_flame_paths)
        rest = flame.landmarks(flame.v_template[None])[0]
        regions = {"mouth": slice(48, 68), "brows": slice(17, 27)}
        moves: dict[str, list[int]] = {name: [] for name in regions}
        for k in range(10):
            e = torch.zeros(1, 50)
            e[0, k] = 2.0
            out = flame(e, torch.zeros(1, 15))
            assert (out.vertices[0] - flame.v_template).norm(dim=1).max() > 0.005, f"expression {k} does nothing"
            shift = (out.landmarks[0] - rest).norm(dim=1)
            for name, index in regions.items():
                if shift[index].max() > 0.01:
                    moves[name].append(k)
        assert {0, 1, 4} <= set(moves["mouth"]) and {2, 3} <= set(moves["brows"])
        assert 2 not in moves["mouth"] and 0 not in moves["brows"]
        # Cheeks: the cheek-puff component moves the cheek vertices outwards, the brow raise does not.
        cheek = flame.v_template[:, 1].abs() < 0.15  # mid-face height band
        puff, raise_ = torch.zeros(1, 50), torch.zeros(1, 50)
        puff[0, 5], raise_[0, 2] = 2.0, 2.0
        sideways = lambda e: (flame(e, torch.zeros(1, 15)).vertices[0] - flame.v_template)[cheek, 0].abs().max()  # noqa
        assert sideways(puff) > 0.01 and sideways(raise_) < 0.002
        # Different components give different fields.
        fields = []
        for k in range(10):
            e = torch.zeros(1, 50)
            e[0, k] = 1.0
            fields.append((flame(e, torch.zeros(1, 15)).vertices[0] - flame.v_template).flatten())
        fields = torch.stack(fields)
        cos = torch.nn.functional.normalize(fields, dim=1) @ torch.nn.functional.normalize(fields, dim=1).T
        assert (cos - torch.eye(10)).abs().max() < 0.95


def test_runs_writing_the_synthetic_model_at_once_each_finish(tmp_path, monkeypatch):
    # Two runs that start together both write the cached synthetic model (model.flame_model_path =
    # synthetic). Here the second write happens while the first is half-way: each must move a complete
    # file of its own into place, and leave no temporary behind.
    from dynavatar.flame import synthetic_head

    real_dump, nested, started = pickle.dump, [], []
    model = synthetic_head.build_synthetic_flame(0)  # built once: only the writing is under test

    def dump_with_a_second_writer(obj, handle, protocol=None):
        if not started:
            started.append(True)
            nested.append(synthetic_head.write_synthetic_flame(tmp_path))
        real_dump(obj, handle, protocol=protocol)

    monkeypatch.setattr(synthetic_head, "build_synthetic_flame", lambda seed, variant=None: model)
    monkeypatch.setattr(synthetic_head.pickle, "dump", dump_with_a_second_writer)
    model_path, landmark_path = synthetic_head.write_synthetic_flame(tmp_path)
    monkeypatch.undo()
    assert nested == [(model_path, landmark_path)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([model_path.name, landmark_path.name])
    FLAME(model_path, landmark_path)  # both files complete
