"""Configuration: the paper's conf is accepted as is, defaults fill the gaps, errors name key, file and fix."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from dynavatar.config import defaults, load_conf, to_hocon
from dynavatar.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# The paper's subject1.conf structure, with keys as its authors wrote them (paths changed).
PAPER_STYLE_CONF = """
train{
    exps_folder = ./data/experiments/
    methodname = yufeng
    dataset_class = datasets.real_dataset.FaceDataset
    learning_rate = 1.0e-4
    learning_rate_cam = 5.0e-4
    num_pixels = 2048
    max_points_training = 102400
    max_batch = 8
    upsample_freq = 1
    plot_freq = 1
    sched_milestones = [80, 100]
    sched_factor = 0.5
    GT_lbs_milestones = [20, 30, 50, 70]
    GT_lbs_factor = 0.5
    optimize_expression=True
    optimize_camera=True
}
loss{
    lbs_weight = 10.0
    eikonal_weight = 0.1
    sdf_consistency_weight =1.0
    vgg_feature_weight = 0.1
}
dataset{
    data_folder = ./data/datasets
    subject_name = yufeng
    json_name = flame_params.json
    use_mean_expression=True
    use_var_expression=True
    canonical_pose=0.4
    train{
        sub_dir = [MVI_1810, MVI_1814]
        img_res = [512, 512]
        subsample = 1
        load_images = True
    }
    test{
        sub_dir = [MVI_1812]
        img_res = [512, 512]
        subsample=  200
        load_images = True
    }
}
model{
    prune_thresh=0.1
    geometry_network
    {
        d_in = 3
        d_out = 1
        feature_vector_size = 3
        dims = [256, 256, 256, 256, 256, 256, 256]
        geometric_init = True
        bias = 0.6
        skip_in = [3]
        weight_norm = True
        multires = 6
    }
    rendering_network
    {
        d_in = 3
        feature_vector_size = 0
        d_out = 3
        dims = [64, 64]
        weight_norm = True
        multires_view = 0
        multires_pnts = 0
    }
    gaussian_network
    {
        d_in = 3
        feature_vector_size = 0
        d_out = 8
        dims = [64, 64, 64]
        weight_norm = True
        multires_view = 0
        multires_pnts = 0
    }
    deformer_network
    {
        d_in = 3
        dims = [128, 128, 128, 128]
        weight_norm = True
        multires = 0
	    num_exp = 50
	    ghostbone = True
	    deform_c = True
    }
    point_cloud
    {
        n_init_points=400
        max_points=100000
    }
}
"""


def write(tmp_path, text, name="my.conf"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_paper_conf_is_accepted_as_is(tmp_path):
    conf = load_conf(write(tmp_path, PAPER_STYLE_CONF))
    assert conf.dataset.train.sub_dir == ("MVI_1810", "MVI_1814")
    assert conf.dataset.test.subsample == 200
    assert conf.train.optimize_camera is True
    # Keys the paper's conf leaves out take the defaults.
    assert conf.model.rasterizer == "auto"
    assert conf.model.point_cloud.schedule_points[-1] == 100000


def test_missing_keys_take_the_papers_defaults(tmp_path):
    conf = load_conf(write(tmp_path, "dataset { subject_name = me }"))
    assert conf.train.learning_rate == pytest.approx(1e-4)
    assert conf.train.sched_milestones == (80, 100)
    assert conf.loss.vgg_feature_weight == pytest.approx(0.1)
    assert conf.dataset.canonical_pose == pytest.approx(0.4)
    assert conf.model.prune_thresh == pytest.approx(0.1)
    assert conf.model.point_cloud.n_init_points == 400


def test_shipped_confs_load():
    for name, train, test in [("subject1", ["MVI_1810", "MVI_1814"], ["MVI_1812"]),
                              ("subject2", ["MVI_1797", "MVI_1801"], ["MVI_1802"])]:
        conf = load_conf(REPO / "confs" / f"{name}.conf")
        assert conf.dataset.train.sub_dir == tuple(train)
        assert conf.dataset.test.sub_dir == tuple(test)
        assert conf.dataset.data_folder.startswith("./data")
        assert conf.train.exps_folder.startswith("./data")


def test_unknown_key_names_key_file_and_nearest_valid_key(tmp_path):
    path = write(tmp_path, "train { learnig_rate = 1e-3 }")
    with pytest.raises(ConfigError) as info:
        load_conf(path)
    message = str(info.value)
    assert "train.learnig_rate" in message and str(path) in message and "train.learning_rate" in message


def test_unknown_section_is_caught(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'modle'.*'model'"):
        load_conf(write(tmp_path, "modle { prune_thresh = 0.2 }"))


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, 'train { max_batch = "eight" }')
    with pytest.raises(ConfigError) as info:
        load_conf(path)
    assert "train.max_batch" in str(info.value) and str(path) in str(info.value) and "integer" in str(info.value)
    with pytest.raises(ConfigError, match="model.point_cloud.n_init_points"):
        load_conf(write(tmp_path, "model { point_cloud { n_init_points = [1, 2] } }", "b.conf"))


def test_command_line_overrides(tmp_path):
    path = write(tmp_path, PAPER_STYLE_CONF)
    conf = load_conf(path, ["train.learning_rate=2e-4", "model.rasterizer=torch",
                            "dataset.train.sub_dir=[A, B]", "dataset.test.subsample=[0, 10]"])
    assert conf.train.learning_rate == pytest.approx(2e-4)
    assert conf.model.rasterizer == "torch"
    assert conf.dataset.train.sub_dir == ("A", "B")
    assert conf.dataset.test.subsample == (0, 10)
    with pytest.raises(ConfigError, match="train.learnig_rate.*train.learning_rate"):
        load_conf(path, ["train.learnig_rate=2e-4"])
    with pytest.raises(ConfigError, match="key=value"):
        load_conf(path, ["train.learning_rate"])
    with pytest.raises(ConfigError, match="train.max_batch"):
        load_conf(path, ["train.max_batch=1.5"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found.*nope.conf"):
        load_conf(tmp_path / "nope.conf")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_conf(write(tmp_path, "train { learning_rate = [1, 2 }", "broken.conf"))


def test_runconf_round_trip(tmp_path):
    conf = load_conf(write(tmp_path, PAPER_STYLE_CONF), ["model.rasterizer=torch"])
    again = load_conf(write(tmp_path, to_hocon(conf), "runconf.conf"))
    assert again == conf
    assert set(defaults().keys()) == {"train", "loss", "dataset", "model", "evaluation"}


def test_every_default_key_is_a_typed_field_or_a_compatibility_key():
    """The defaults and the dataclasses describe the same keys: none is validated but then lost."""
    from dynavatar.config.loader import _flatten
    from dynavatar.config.schema import SECTIONS, Section, section_keys

    def walk(section: type[Section], prefix: str, tree) -> None:
        assert set(str(k) for k in tree.keys()) == section_keys(section), prefix
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            hint = hints[f.name]
            if isinstance(hint, type) and issubclass(hint, Section):
                walk(hint, f"{prefix}.{f.name}", tree[f.metadata.get("key", f.name)])

    tree = defaults()
    for name, section in SECTIONS.items():
        walk(section, name, tree[name])
    assert _flatten(tree)  # the defaults parse


def test_typed_values_and_one_name_as_sub_dir(tmp_path):
    conf = load_conf(write(tmp_path, "dataset { train { sub_dir = one_video } }"))
    assert conf.dataset.train.sub_dir == ("one_video",)
    assert isinstance(conf.train.learning_rate, float) and conf.train.lbs_milestones == (20, 30, 50, 70)
    with pytest.raises(dataclasses.FrozenInstanceError):
        conf.train.learning_rate = 1.0  # type: ignore[misc]


def test_range_errors_name_key_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"my.conf: key 'dataset.train.img_res' must be \[height, width\]"):
        load_conf(write(tmp_path, "dataset { train { img_res = [512] } }"))
    with pytest.raises(ConfigError, match="my.conf: key 'model.point_cloud.schedule_epochs'.*same length"):
        load_conf(write(tmp_path, "model { point_cloud { schedule_epochs = [1] } }"))


@pytest.mark.parametrize("override, key", [
    ("train.learning_rate=-1", "train.learning_rate"), ("train.learning_rate=0", "train.learning_rate"),
    ("train.learning_rate_cam=-5e-4", "train.learning_rate_cam"), ("train.max_batch=0", "train.max_batch"),
    ("train.max_points_training=0", "train.max_points_training"), ("train.nepoch=0", "train.nepoch"),
    ("train.save_freq=0", "train.save_freq"), ("train.seed=-1", "train.seed"),
    ("train.max_nonfinite_steps=0", "train.max_nonfinite_steps"), ("loss.ssim_weight=-0.1", "loss.ssim_weight"),
    ("dataset.synthetic_frames=0", "dataset.synthetic_frames"), ("dataset.test.subsample=0", "dataset.test.subsample"),
    ("evaluation.video_fps=0", "evaluation.video_fps"), ("model.max_scale=0", "model.max_scale"),
    ("model.point_cloud.n_init_points=0", "model.point_cloud.n_init_points"),
    ("model.point_cloud.schedule_points=[800, 0, 3200, 6400, 10000, 20000, 40000, 80000, 100000]",
     "model.point_cloud.schedule_points"),
    ("model.deformer_network.dims=[128, 0]", "model.deformer_network.dims"),
])
def test_out_of_range_values_are_refused_at_load_naming_the_key(tmp_path, override, key):
    """Values that used to crash later with a traceback (a negative learning rate, no initial points)
    or that ran as something else (max_batch 0 ran with batch 1) stop at load."""
    path = write(tmp_path, PAPER_STYLE_CONF)
    with pytest.raises(ConfigError, match=rf"my.conf: key '{key}' must be") as info:
        load_conf(path, [override])
    assert "\n" not in str(info.value)
