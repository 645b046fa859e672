"""Head models other than the default: variants of the synthetic FLAME-format head and the subjects
generated with them (vertex counts, components, sizes, determinism, the default head unchanged). That
the shipped recipes train on each of them is tests/test_collapse.py's."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dynavatar.cli.make_synthetic_subject import main as make_subject
from dynavatar.config import load_conf
from dynavatar.errors import DatasetError
from dynavatar.flame import FLAME, build_synthetic_flame, load_flame_model
from dynavatar.flame.synthetic_head import HEAD_VARIANTS, HeadVariant, head_variant
from dynavatar.subject_generator.subject import HEAD_MODEL_DIR, ensure_synthetic_subject, generate_subject

DEMO_CONF = Path(__file__).resolve().parents[1] / "confs" / "demo.conf"


@pytest.fixture(scope="module")
def models():
    return {name: build_synthetic_flame(0, name) for name in HEAD_VARIANTS}


def test_the_default_head_is_unchanged(models):
    """Fingerprints of the default head as it was before variants existed (the demo depends on it)."""
    model = models["default"]
    a = model.arrays
    assert a["v_template"].shape == (3970, 3) and a["f"].shape == (7866, 3) and a["shapedirs"].shape[2] == 400
    sums = {"v_template": 549.5125238805659, "shapedirs": 320.9392256883598, "posedirs": 79.48311570718565,
            "J": 0.5498594537200332}
    squares = {"v_template": 36.05060629234427, "shapedirs": 0.1607453526440361, "posedirs": 0.15184479124970673,
               "weights": 3812.5744186230318, "J_regressor": 0.14684139784946237}
    for key, value in sums.items():
        assert np.abs(a[key]).sum() == pytest.approx(value, rel=1e-10), key
    for key, value in squares.items():
        assert (a[key] ** 2).sum() == pytest.approx(value, rel=1e-10), key
    assert int(a["f"].astype(np.int64).sum()) == 46442576
    assert model.lmk_faces_idx[:17].tolist() == [4451, 4711, 5098, 5486, 5744, 6132, 6265, 6397, 6526, 6403, 6279,
                                                 6154, 5775, 5520, 5140, 4761, 4509]
    # Every spelling of the default builds the same arrays.
    for spec in (None, "default", HeadVariant()):
        again = build_synthetic_flame(0, spec).arrays
        for key in ("v_template", "f", "shapedirs", "posedirs", "weights", "J_regressor"):
            np.testing.assert_array_equal(again[key], a[key])


@pytest.mark.parametrize("name, n_vertices", [("dense", 5892), ("flame", 5023), ("coarse", 1888),
                                              ("large", 3970), ("long", 3970)])
def test_vertex_counts(models, name, n_vertices):
    a = models[name].arrays
    assert a["v_template"].shape == (n_vertices, 3)
    assert a["shapedirs"].shape == (n_vertices, 3, 400)  # FLAME's 300 shape + 100 expression components
    assert a["posedirs"].shape == (n_vertices, 3, 36)
    assert a["weights"].shape == (n_vertices, 5) and a["J_regressor"].shape == (5, n_vertices)


@pytest.mark.parametrize("name", sorted(HEAD_VARIANTS))
def test_every_variant_is_a_valid_flame_model(models, name):
    model = models[name]
    a = model.arrays
    n = a["v_template"].shape[0]
    faces = a["f"].astype(np.int64)
    assert faces.min() == 0 and faces.max() == n - 1 and len(np.unique(faces)) == n  # every vertex is used
    np.testing.assert_allclose(a["weights"].sum(1), 1.0)
    np.testing.assert_allclose(a["J_regressor"].sum(1), 1.0)
    assert (model.lmk_bary_coords >= -1e-9).all()
    np.testing.assert_allclose(model.lmk_bary_coords.sum(1), 1.0)
    # Faces point outward (eyeball faces excluded), as the renderer and the normals assume.
    n_head = int(np.nonzero(a["weights"][:, 3])[0].min())
    head = faces[(faces < n_head).all(1)]
    v = a["v_template"]
    normals = np.cross(v[head[:, 1]] - v[head[:, 0]], v[head[:, 2]] - v[head[:, 0]])
    area = np.linalg.norm(normals, axis=1)
    outward = (normals * (v[head].mean(1) - v[:n_head].mean(0))).sum(1) > 0
    assert outward[area > 1e-12].mean() > 0.95
    # Landmarks stay where the default head has them, relative to the head's size.
    default = models["default"]
    scale = HEAD_VARIANTS[name].axis_scale
    lmk = (v[faces[model.lmk_faces_idx]] * model.lmk_bary_coords[..., None]).sum(1)
    dv, df = default.arrays["v_template"], default.arrays["f"].astype(np.int64)
    lmk_default = (dv[df[default.lmk_faces_idx]] * default.lmk_bary_coords[..., None]).sum(1)
    assert np.abs(lmk / scale - lmk_default).max() < 0.006  # metres: within a few grid cells


def test_sizes_and_proportions_scale_all_geometry(models):
    default, large, long_ = (models[k].arrays for k in ("default", "large", "long"))
    np.testing.assert_allclose(large["v_template"], 1.3 * default["v_template"], rtol=1e-12)
    np.testing.assert_allclose(large["J"], 1.3 * default["J"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(large["shapedirs"], 1.3 * default["shapedirs"], rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(large["posedirs"], 1.3 * default["posedirs"], rtol=1e-12, atol=1e-18)
    factors = np.array([0.9, 1.15, 1.05])
    np.testing.assert_allclose(long_["v_template"], factors * default["v_template"], rtol=1e-12)
    np.testing.assert_array_equal(long_["weights"], default["weights"])  # skinning is not geometry


def test_variants_are_deterministic_per_seed(models):
    again = build_synthetic_flame(0, "flame").arrays
    for key in ("v_template", "f", "shapedirs", "posedirs", "weights", "J_regressor"):
        np.testing.assert_array_equal(again[key], models["flame"].arrays[key])
    other = build_synthetic_flame(1, "flame").arrays
    np.testing.assert_array_equal(other["v_template"], again["v_template"])  # the mesh does not depend on it
    assert not np.array_equal(other["shapedirs"], again["shapedirs"])  # the random components do


def test_overrides_and_their_errors():
    variant = head_variant("dense,scale=1.5,proportions=0.9:1.1:1,n_expression=50")
    assert (variant.rows, variant.cols, variant.scale, variant.proportions, variant.n_expression) == (
        72, 80, 1.5, (0.9, 1.1, 1.0), 50)
    a = build_synthetic_flame(0, "coarse,n_expression=60").arrays
    assert a["shapedirs"].shape[2] == 360
    with pytest.raises(ValueError, match="unknown head variant 'bogus'.*dense"):
        head_variant("bogus")
    with pytest.raises(ValueError, match="expected key=value"):
        head_variant("dense,size=2")
    with pytest.raises(ValueError, match="not a number"):
        head_variant("dense,scale=big")
    with pytest.raises(ValueError, match="n_expression >= 50"):
        head_variant("default,n_expression=10")
    with pytest.raises(ValueError, match="positive scale"):
        head_variant("default,scale=-1")


def test_a_subject_of_a_variant_carries_its_head_model(tmp_path):
    target = generate_subject(tmp_path, "big", res=16, frames=2, seed=1, head="large", train_videos=["a"],
                              test_videos=["b"])
    model_file = target / HEAD_MODEL_DIR / "generic_model.pkl"
    assert load_flame_model(model_file).v_template.shape == (3970, 3)
    marker = json.loads((target / ".dynavatar-synthetic").read_text())
    assert marker["head"] == "large"
    params = json.loads((target / "big" / "a" / "flame_params.json").read_text())
    # The camera stands 1.3 times farther from the 1.3 times larger head: the image frames it alike.
    assert params["frames"][0]["world_mat"][2][3] == pytest.approx(-4.0 * 1.3, abs=0.2)
    flame = FLAME(model_file, target / HEAD_MODEL_DIR / "landmark_embedding.npy",
                  shape_params=torch.tensor(params["shape_params"]))
    assert flame.v_template.shape == (3970, 3)
    with pytest.raises(DatasetError, match="either it or a FLAME model file"):
        generate_subject(tmp_path, "both", res=16, frames=1, head="dense", flame_model_path=model_file)
    with pytest.raises(DatasetError, match="unknown head variant"):
        generate_subject(tmp_path, "bad", res=16, frames=1, head="bogus")


def test_a_variant_subject_is_regenerated_with_its_head(tmp_path):
    target = generate_subject(tmp_path, "variant", res=16, frames=1, seed=0, head="coarse", train_videos=["a"],
                              test_videos=["b"])
    model_dir = target / HEAD_MODEL_DIR
    conf = load_conf(DEMO_CONF, [
        f"dataset.data_folder={tmp_path}", "dataset.subject_name=variant", "dataset.synthetic=true",
        "dataset.synthetic_frames=2", "dataset.train.sub_dir=[a]", "dataset.test.sub_dir=[b]",
        "dataset.train.img_res=[16, 16]", f"model.flame_model_path={model_dir}/generic_model.pkl",
        f"model.flame_landmark_path={model_dir}/landmark_embedding.npy"])
    ensure_synthetic_subject(conf)  # two frames now: generated again, with the same head
    assert json.loads((target / ".dynavatar-synthetic").read_text())["frames"] == 2
    assert load_flame_model(model_dir / "generic_model.pkl").v_template.shape == (1888, 3)
    assert len(list((target / "variant" / "a" / "image").iterdir())) == 2


def test_cli_head_option(tmp_path, caplog):
    assert make_subject(["--out", str(tmp_path), "--subject", "s", "--res", "16", "--frames", "1",
                         "--head", "coarse", "--train-videos", "a", "--test-videos", "b"]) == 0
    assert load_flame_model(tmp_path / "s" / HEAD_MODEL_DIR / "generic_model.pkl").v_template.shape == (1888, 3)
    assert make_subject(["--out", str(tmp_path), "--subject", "t", "--res", "16", "--head", "nope"]) == 1
    assert "unknown head variant 'nope'" in caplog.text
