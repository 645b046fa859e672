"""Configuration: the paper's conf is accepted as is, defaults fill the gaps, errors name key, file and fix;
every key is declared once, and the defaults, their text and runconf.conf are derived from that."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from dynavatar.config import default_conf, defaults, defaults_text, load_conf, to_hocon
from dynavatar.config.compat import IGNORED_KEYS, RENAMED_KEYS
from dynavatar.config.schema import SECTIONS
from dynavatar.config.section import default, doc, walk
from dynavatar.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SCHEMA_KEYS = {key for name, section in SECTIONS.items() for key, _, _ in walk(section, name + ".")}

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


def config_logs(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("dynavatar.config") and r.levelno == logging.INFO]


def test_paper_conf_is_accepted_as_is(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    conf = load_conf(write(tmp_path, PAPER_STYLE_CONF))
    assert conf.dataset.train.sub_dir == ("MVI_1810", "MVI_1814")
    assert conf.dataset.test.subsample == 200
    assert conf.train.optimize_camera is True
    # The paper's names of renamed keys are read as the new names.
    assert conf.train.prune_grow_every == 1 and conf.dataset.canonical_jaw == pytest.approx(0.4)
    assert conf.loss.flame_prior_milestones == (20, 30, 50, 70) and conf.loss.flame_prior_factor == 0.5
    # Keys the paper's conf leaves out take the defaults.
    assert conf.model.rasterizer == "auto"
    assert conf.model.point_cloud.schedule_points[-1] == 100000
    # Each ignored key (a whole section counts once) and each old name is logged once, at INFO.
    logs = config_logs(caplog)
    for key in ("train.num_pixels", "train.dataset_class", "loss.eikonal_weight", "model.rendering_network",
                "model.geometry_network.bias", "model.gaussian_network.multires_pnts"):
        assert sum(f" {key} is ignored (" in line for line in logs) == 1, (key, logs)
    for old, new in RENAMED_KEYS.items():
        assert sum(f" {old} is read as {new}" in line for line in logs) == 1, (old, logs)
    assert not any("rendering_network." in line for line in logs)  # the section, not each of its keys


def test_ignored_keys_and_old_names_are_not_fields():
    """The paper's unused keys and the old names are data of `compat`, never fields of the typed sections."""
    for key in [*IGNORED_KEYS, *RENAMED_KEYS]:
        assert key not in SCHEMA_KEYS and not any(k.startswith(key + ".") for k in SCHEMA_KEYS), key
    assert set(RENAMED_KEYS.values()) <= SCHEMA_KEYS
    conf = default_conf()
    assert not hasattr(conf.model, "rendering_network") and not hasattr(conf.train, "num_pixels")
    assert not hasattr(conf.train, "upsample_freq") and not hasattr(conf.dataset, "canonical_pose")


def test_ignored_keys_are_accepted_anywhere_with_any_value(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    conf = load_conf(write(tmp_path, "model { rendering_network { anything = [1, 2] } }"),
                     ["train.num_pixels=4096", "model.rendering_network.dims=[8]"])
    assert conf == default_conf()
    assert sum(" train.num_pixels is ignored" in line for line in config_logs(caplog)) == 1


def test_old_names_are_read_as_new_ones(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path = write(tmp_path, "train { upsample_freq = 3, GT_lbs_milestones = [1, 2], GT_lbs_factor = 0.25 }\n"
                           "dataset { canonical_pose = 0.2 }")
    conf = load_conf(path)
    assert conf.train.prune_grow_every == 3 and conf.dataset.canonical_jaw == pytest.approx(0.2)
    assert conf.loss.flame_prior_milestones == (1, 2) and conf.loss.flame_prior_factor == 0.25
    assert f"{path}: train.upsample_freq is read as train.prune_grow_every, its new name" in config_logs(caplog)
    # On the command line too, after the file.
    conf = load_conf(path, ["train.upsample_freq=4", "loss.flame_prior_factor=0.75"])
    assert conf.train.prune_grow_every == 4 and conf.loss.flame_prior_factor == 0.75
    # An old name's value is checked as the new key's.
    with pytest.raises(ConfigError, match="key 'train.prune_grow_every' must be at least 1"):
        load_conf(path, ["train.upsample_freq=0"])
    with pytest.raises(ConfigError, match="my.conf: key 'loss.flame_prior_milestones' must be a list"):
        load_conf(write(tmp_path, "train { GT_lbs_milestones = 20 }"))


@pytest.mark.parametrize("text", [
    "train { upsample_freq = 2, prune_grow_every = 2 }",
    "train { GT_lbs_factor = 0.5 }\nloss { flame_prior_factor = 0.5 }",
    'include "subject1.conf"\ndataset { canonical_pose = 0.3 }',  # the included file gives the new name
])
def test_old_and_new_name_together_is_an_error(tmp_path, text):
    (tmp_path / "subject1.conf").write_text((REPO / "confs" / "subject1.conf").read_text())
    path = write(tmp_path, text)
    old = next(o for o in RENAMED_KEYS if o.rsplit(".", 1)[1] in text)
    with pytest.raises(ConfigError) as info:
        load_conf(path)
    message = str(info.value)
    assert str(path) in message and f"'{old}'" in message and f"'{RENAMED_KEYS[old]}'" in message


def test_runconf_written_with_the_old_names_still_loads(caplog):
    """A runconf.conf written before the renames (old names, the paper's unused keys) loads as the
    same configuration under the new names."""
    caplog.set_level(logging.INFO)
    old = load_conf(REPO / "tests" / "data" / "runconf_old_names.conf")
    assert old.train.prune_grow_every == 2 and old.dataset.canonical_jaw == pytest.approx(0.3)
    assert old.loss.flame_prior_factor == 0.25 and old.model.rasterizer == "torch"
    assert any("model.rendering_network is ignored" in line for line in config_logs(caplog))


def test_missing_keys_take_the_papers_defaults(tmp_path):
    conf = load_conf(write(tmp_path, "dataset { subject_name = me }"))
    assert conf.train.learning_rate == pytest.approx(1e-4)
    assert conf.train.sched_milestones == (80, 100)
    assert conf.loss.vgg_feature_weight == pytest.approx(0.1)
    assert conf.dataset.canonical_jaw == pytest.approx(0.4)
    assert conf.model.prune_thresh == pytest.approx(0.1)
    assert conf.model.point_cloud.n_init_points == 400


def test_shipped_confs_load(caplog):
    for name, train, test in [("subject1", ["MVI_1810", "MVI_1814"], ["MVI_1812"]),
                              ("subject2", ["MVI_1797", "MVI_1801"], ["MVI_1802"])]:
        conf = load_conf(REPO / "confs" / f"{name}.conf")
        assert conf.dataset.train.sub_dir == tuple(train)
        assert conf.dataset.test.sub_dir == tuple(test)
        assert conf.dataset.data_folder.startswith("./data")
        assert conf.train.exps_folder.startswith("./data")
    # Every shipped conf loads, and speaks the current names only (nothing ignored, nothing renamed).
    caplog.set_level(logging.INFO)
    shipped = sorted((REPO / "confs").glob("*.conf"))
    assert {p.name for p in shipped} >= {"subject1.conf", "subject2.conf", "demo.conf", "fast.conf"}
    for path in shipped:
        load_conf(path)
    assert config_logs(caplog) == []


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
    # The items of a list of numbers are checked too.
    with pytest.raises(ConfigError, match=r"c.conf: key 'model.deformer_network.dims' must be a list of integers"):
        load_conf(write(tmp_path, "model { deformer_network { dims = [128, 1.5] } }", "c.conf"))
    with pytest.raises(ConfigError, match=r"key 'model.point_cloud.radius_factors' must be a list of numbers"):
        load_conf(write(tmp_path, "dataset { }", "d.conf"), ["model.point_cloud.radius_factors=[0.75, true]"])


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
    text = to_hocon(conf)
    again = load_conf(write(tmp_path, text, "runconf.conf"))
    assert again == conf
    # Written with the current names, without the paper's unused keys.
    assert "prune_grow_every = 1" in text and "canonical_jaw = 0.4" in text
    assert not any(name in text for name in ("upsample_freq", "GT_lbs", "canonical_pose", "num_pixels",
                                             "rendering_network", "d_in"))
    assert set(defaults().keys()) == {"train", "loss", "dataset", "model", "evaluation"}


def fits(value, hint) -> bool:
    """Whether a Python value is exactly of type `hint` (a float key's default is a float, not an int)."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        return isinstance(value, tuple) and all(fits(v, typing.get_args(hint)[0]) for v in value)
    if origin is not None:  # a union
        return any(fits(value, arg) for arg in typing.get_args(hint))
    return type(value) is hint


def test_every_key_is_declared_once_with_its_default_and_meaning():
    """Each field has a one-line description and a default of its own type; the defaults are the
    paper's subject conf without its data."""
    for name, section in SECTIONS.items():
        for key, f, hint in walk(section, name + "."):
            assert doc(f).strip() and "\n" not in doc(f), key
            assert fits(default(f), hint), (key, default(f), hint)
    assert default_conf() == load_conf(REPO / "confs" / "subject1.conf",
                                       ["dataset.train.sub_dir=[]", "dataset.test.sub_dir=[]",
                                        "dataset.train.load_images=false", "dataset.test.load_images=false",
                                        "dataset.test.subsample=1"])


def described_keys(text: str) -> dict[str, str]:
    """Dotted key -> the comment right above its line (or its section's opening line) in HOCON `text`."""
    out, path, comment = {}, [], []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            comment.append(line.lstrip("#").strip())
            continue
        if line.endswith("{") or " = " in line:
            name = line.split()[0]
            out[".".join([*path, name])] = " ".join(comment)
            if line.endswith("{"):
                path.append(name)
        elif line == "}":
            path.pop()
        comment = []
    return out


def test_defaults_text_lists_every_key_with_its_meaning_and_loads_back(tmp_path):
    text = defaults_text()
    declared = {key: doc(f) for name, section in SECTIONS.items() for key, f, _ in walk(section, name + ".")}
    shown = {key: comment for key, comment in described_keys(text).items() if key not in SECTIONS}
    assert shown == declared
    for key in [*IGNORED_KEYS, *RENAMED_KEYS]:
        assert key in text
    # It is a conf: loaded, it is the default configuration.
    assert load_conf(write(tmp_path, text, "defaults.conf")) == default_conf()
    # `python -m dynavatar.config` prints it.
    printed = subprocess.run([sys.executable, "-m", "dynavatar.config"], capture_output=True, text=True,
                             timeout=120, check=True)
    assert printed.stdout == text


def test_defaults_tree_holds_exactly_the_schema_keys():
    """The tree user confs are merged onto and checked against has every declared key and no other."""
    from dynavatar.config.loader import _flatten

    assert set(_flatten(defaults())) == SCHEMA_KEYS | set(SECTIONS)


def test_typed_values_and_one_name_as_sub_dir(tmp_path):
    conf = load_conf(write(tmp_path, "dataset { train { sub_dir = one_video } }"))
    assert conf.dataset.train.sub_dir == ("one_video",)
    assert isinstance(conf.train.learning_rate, float) and conf.loss.flame_prior_milestones == (20, 30, 50, 70)
    conf = load_conf(write(tmp_path, "dataset { train { sub_dir = [1810, MVI_1814] } }", "b.conf"))
    assert conf.dataset.train.sub_dir == ("1810", "MVI_1814")  # a video may be named by a number
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
    ("train.prune_grow_every=0", "train.prune_grow_every"), ("loss.flame_prior_factor=0", "loss.flame_prior_factor"),
    ("loss.flame_prior_milestones=[-1]", "loss.flame_prior_milestones"),
])
def test_out_of_range_values_are_refused_at_load_naming_the_key(tmp_path, override, key):
    """Values that used to crash later with a traceback (a negative learning rate, no initial points)
    or that ran as something else (max_batch 0 ran with batch 1) stop at load."""
    path = write(tmp_path, PAPER_STYLE_CONF)
    with pytest.raises(ConfigError, match=rf"my.conf: key '{key}' must be") as info:
        load_conf(path, [override])
    assert "\n" not in str(info.value)
