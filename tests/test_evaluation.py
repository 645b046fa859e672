"""End-to-end evaluation of a tiny trained avatar: files, metrics, videos, reenactment and .ply export,
and the avatar loaded from its checkpoint without an evaluator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v2 as imageio
import pytest
import torch

from dynavatar.cli import exp_runner, export_ply
from dynavatar.config import load_conf
from dynavatar.errors import CheckpointError
from dynavatar.subject_generator.subject import generate_subject
from dynavatar.data.reader import dataset_from_conf
from dynavatar.evaluate import evaluator
from dynavatar.evaluate.animation import orbit_world_mat, posed_gaussians, save_posed_ply
from dynavatar.evaluate.fitting import fit_frame_inputs, fitted_test_inputs, fitting_protocol
from dynavatar.evaluate.report import metric_means, nocloth_mask
from dynavatar.experiment import ExperimentPaths
from dynavatar.flame.novelty import frame_novelty
from dynavatar.evaluate.training_frames import protocol_inputs, spread_indices
from dynavatar.data.batch import batches
from dynavatar.losses import AvatarLoss
from dynavatar.metrics import Unavailable, psnr
from dynavatar.export.images import erode_dilate
from dynavatar.model.build import experiment_checkpoints, load_avatar
from dynavatar.model.frame_inputs import FrameInputs
from dynavatar.export.ply import load_gaussians_ply
from dynavatar.render import rasterize

REPO = Path(__file__).resolve().parents[1]
SUBJECT = "evalsubject"
N_FRAMES = 5
TURNTABLE = 6


def _count_video_frames(path: Path) -> int:
    with imageio.get_reader(path) as reader:
        return sum(1 for _ in reader)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Train 2 epochs through the command line (which then evaluates); returns (overrides, eval folder)."""
    root = tmp_path_factory.mktemp("eval")
    generate_subject(root / "datasets", SUBJECT, res=32, frames=N_FRAMES, seed=5)
    overrides = [
        f"dataset.data_folder={root / 'datasets'}", f"dataset.subject_name={SUBJECT}", "dataset.synthetic=false",
        "dataset.train.img_res=[32, 32]", "dataset.test.img_res=[32, 32]", f"train.exps_folder={root / 'exps'}",
        "train.learning_rate=3e-4", "model.point_cloud.n_init_points=100", f"evaluation.turntable_frames={TURNTABLE}",
        "evaluation.test_fit_steps=2", "train.optimize_expression=true", "train.optimize_camera=true",
    ]
    code = exp_runner.run(["--conf", str(REPO / "confs" / "demo.conf"), "--nepoch", "2", "--quiet", *overrides])
    assert code == 0
    folder = root / "exps" / SUBJECT / "demo" / "MVI_1810+MVI_1814" / "eval" / "MVI_1812" / "epoch_2"
    return overrides, folder


def test_evaluation_writes_every_file(experiment):
    _, folder = experiment
    for name in ("rgb", "rgb_erode_dilate", "gt", "alpha", "error"):
        assert sorted(p.name for p in (folder / name).iterdir()) == [f"{k}.png" for k in range(1, N_FRAMES + 1)], name
    rows = (folder / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == N_FRAMES + 1 and rows[0].startswith("sub_dir,frame_id,l1,mse,psnr,ssim,lpips")
    report = json.loads((folder / "metrics.json").read_text())
    assert report["epoch"] == 2 and report["n_frames"] == N_FRAMES and report["test_inputs_fitted"] is True
    assert report["checkpoint"].endswith("ModelParameters/2.pth") and report["conf"].endswith("runconf.conf")
    for section in ("all", "no_cloth"):  # the synthetic subject has semantic maps
        metrics = report["metrics"][section]
        assert 5.0 < metrics["psnr"] < 60.0 and 0.0 < metrics["ssim"] <= 1.0 and metrics["l1"] > 0
        lpips = metrics["lpips"]
        assert isinstance(lpips, float) or "weights" in lpips["unavailable"]  # never a number from random weights
    assert _count_video_frames(folder / "video.mp4") == N_FRAMES
    assert _count_video_frames(folder / "turntable.mp4") == TURNTABLE
    assert (folder / "canonical.ply").is_file()
    # The metrics are those of the erode-dilated rendering against the ground truth.
    gt = torch.from_numpy(imageio.imread(folder / "gt" / "1.png")).float() / 255
    pred = torch.from_numpy(imageio.imread(folder / "rgb_erode_dilate" / "1.png")).float() / 255
    first = dict(zip(rows[0].split(","), rows[1].split(",")))
    assert float(first["l1"]) == pytest.approx(float((pred - gt).abs().mean()), abs=2e-3)
    # Beside them, the rendering without the opening, and the ground truth through it.
    plain = torch.from_numpy(imageio.imread(folder / "rgb" / "1.png")).float() / 255
    assert float(first["psnr_unopened"]) == pytest.approx(float(psnr(plain, gt)), abs=0.05)
    assert float(first["psnr_ground_truth_opened"]) == pytest.approx(float(psnr(erode_dilate(gt), gt)), abs=0.01)  # gt.png: uint8
    opening = report["opening"]
    assert opening["psnr_unopened"] != report["metrics"]["all"]["psnr"]
    assert opening["psnr_ground_truth_opened"] > report["metrics"]["all"]["psnr"]
    # Each frame's distances to the training frames (the synthetic test video's head turns and
    # expressions are not the training videos'), and their summary.
    assert rows[0].endswith("head_novelty_deg,jaw_novelty_deg,expression_novelty")
    overrides, _ = experiment
    conf = load_conf(REPO / "confs" / "demo.conf", overrides)
    expected = frame_novelty(dataset_from_conf(conf, "test", is_eval=True, only_json=True),
                             dataset_from_conf(conf, "train", only_json=True))
    for k, line in enumerate(rows[1:]):  # each frame's own distances
        row = dict(zip(rows[0].split(","), line.split(",")))
        assert int(row["frame_id"]) == k + 1
        for name, values in expected.items():
            assert float(row[name]) == pytest.approx(float(values[k]))
    head = report["novelty"]["head_novelty_deg"]
    assert head["max"] >= head["mean"] > 0 and -1.0 <= head["correlation_with_psnr"] <= 1.0
    # How far the fit moved the test frames' inputs: the saved fitted expressions against the tracked.
    saved = torch.load(folder.parents[2] / "train" / "checkpoints" / "TestInputParameters" / "2.pth",
                       map_location="cpu")
    tracked = dataset_from_conf(conf, "test", is_eval=True, only_json=True).expressions
    moved = (saved["inputs_state_dict"]["expression.weight"] - tracked).norm(dim=1)
    change = report["fit_change"]
    assert change["expression_mean"] == pytest.approx(float(moved.mean()), rel=1e-4) and moved.mean() > 0
    assert change["expression_max"] == pytest.approx(float(moved.max()), rel=1e-4)
    assert change["jaw_deg_max"] >= change["jaw_deg_mean"] > 0 and "camera_translation_mean" not in change
    assert set(change) == {f"{name}_{stat}" for name in ("expression", "global_deg", "neck_deg", "jaw_deg")
                           for stat in ("mean", "max")}


def test_fitted_test_inputs_are_saved_and_reused(experiment, caplog):
    overrides, folder = experiment
    checkpoints = folder.parents[2] / "train" / "checkpoints" / "TestInputParameters"
    assert (checkpoints / "2.pth").is_file()
    before = (folder / "metrics.json").read_text()
    caplog.set_level("INFO")
    assert exp_runner.run(["--conf", str(REPO / "confs" / "demo.conf"), "--is_eval", "--no_videos", *overrides]) == 0
    assert "using the test inputs fitted before" in caplog.text
    assert json.loads((folder / "metrics.json").read_text())["metrics"] == json.loads(before)["metrics"]


@pytest.mark.parametrize("setting", ["evaluation.test_fit_steps=3", "evaluation.test_fit_learning_rate=2e-3"])
def test_saved_test_inputs_are_not_reused_by_an_evaluation_that_fits_otherwise(experiment, caplog, setting):
    """Another number of steps or another rate after the experiment's fit (2 steps at
    train.learning_rate_cam) fits again: reusing the earlier fit would report its metrics under the
    new setting."""
    overrides, folder = experiment
    caplog.set_level("INFO")
    args = ["--conf", str(REPO / "confs" / "demo.conf"), "--is_eval", "--no_videos", *overrides]
    assert exp_runner.run([*args, setting]) == 0
    assert "using the test inputs fitted before" not in caplog.text
    assert "another fitting protocol; fitting again" in caplog.text
    caplog.clear()
    assert exp_runner.run([*args, setting]) == 0  # the same protocol: reused
    assert "using the test inputs fitted before" in caplog.text
    saved = torch.load(folder.parents[2] / "train" / "checkpoints" / "TestInputParameters" / "2.pth",
                       map_location="cpu")
    protocol = saved["fingerprint"]["protocol"]  # fitted as asked, at the rate of its own key when given
    assert (protocol["steps"], protocol["learning_rate"]) == ((3, 5e-4) if "steps" in setting else (2, 2e-3))


def test_each_test_video_reports_how_far_the_fit_moved_its_own_frames(experiment, tmp_path):
    """Two test videos (the test video and a training video as a second one): each metrics.json's
    fit_change is that of its own frames' rows of the saved fitted inputs."""
    overrides, folder = experiment
    args = ["--conf", str(REPO / "confs" / "demo.conf"), "--is_eval", "--no_videos", *overrides,
            "dataset.test.sub_dir=[MVI_1812, MVI_1810]", f"train.exps_folder={tmp_path / 'exps'}"]
    shutil.copytree(folder.parents[2], tmp_path / "exps" / SUBJECT / "demo" / "MVI_1810+MVI_1814")
    assert exp_runner.run(args) == 0
    root = tmp_path / "exps" / SUBJECT / "demo" / "MVI_1810+MVI_1814"
    saved = torch.load(root / "train" / "checkpoints" / "TestInputParameters" / "2.pth", map_location="cpu")
    conf = load_conf(REPO / "confs" / "demo.conf", args[4:])
    data = dataset_from_conf(conf, "test", is_eval=True, only_json=True)
    moved = (saved["inputs_state_dict"]["expression.weight"] - data.expressions).norm(dim=1)  # [F]
    means = {}
    for video in ("MVI_1812", "MVI_1810"):
        rows = torch.tensor([i for i, r in enumerate(data.frames) if r.sub_dir == video])
        change = json.loads((root / "eval" / video / "epoch_2" / "metrics.json").read_text())["fit_change"]
        assert change["expression_mean"] == pytest.approx(float(moved[rows].mean()), rel=1e-4)
        means[video] = change["expression_mean"]
    assert means["MVI_1812"] != means["MVI_1810"]


def test_the_fits_rate_is_its_own_or_the_training_frames_input_rate():
    conf = load_conf(REPO / "confs" / "demo.conf", ["train.learning_rate_cam=7e-4"])
    assert fitting_protocol(conf, 100)["learning_rate"] == pytest.approx(7e-4)  # the paper's rule
    conf = load_conf(REPO / "confs" / "demo.conf", ["train.learning_rate_cam=7e-4",
                                                    "evaluation.test_fit_learning_rate=3e-3"])
    assert fitting_protocol(conf, 100)["learning_rate"] == pytest.approx(3e-3)


@pytest.mark.parametrize("other, seed", [(SUBJECT, 6), ("othersubject", 7)])
def test_another_subjects_test_video_is_fitted_anew_and_kept_apart(experiment, tmp_path, caplog, other, seed):
    """The checkpoint evaluated on another subject's test video of the same name and length (in another
    data folder, under the trained subject's name or its own): the inputs fitted to the trained
    subject's frames are not applied to the other's, and another subject's results go under
    eval/<subject>/, never over the trained subject's."""
    overrides, folder = experiment
    generate_subject(tmp_path / "datasets", other, res=32, frames=N_FRAMES, seed=seed)
    before = (folder / "metrics.json").read_text()
    args = ["--conf", str(REPO / "confs" / "demo.conf"), "--is_eval", "--no_videos", *overrides,
            f"dataset.data_folder={tmp_path / 'datasets'}", f"dataset.subject_name={other}",
            "--load_path", str(folder.parents[2] / "train")]
    caplog.set_level("INFO")
    assert exp_runner.run(args) == 0
    assert "using the test inputs fitted before" not in caplog.text
    assert "other test frames or another fitting protocol; fitting again" in caplog.text
    written = folder if other == SUBJECT else folder.parents[1] / other / "MVI_1812" / "epoch_2"
    if other != SUBJECT:
        assert written.is_dir() and (folder / "metrics.json").read_text() == before
        assert json.loads((written / "metrics.json").read_text())["metrics"] != json.loads(before)["metrics"]
    # Its frames are measured against the frames the avatar was trained on (the runconf's), not against
    # the training videos of the data folder the conf names.
    trained = dataset_from_conf(load_conf(folder.parents[2] / "train" / "runconf.conf"), "train", only_json=True)
    tested = dataset_from_conf(load_conf(REPO / "confs" / "demo.conf", args[4:-2]), "test", is_eval=True,
                               only_json=True)
    expected = frame_novelty(tested, trained)["head_novelty_deg"].mean()
    novelty = json.loads((written / "metrics.json").read_text())["novelty"]
    assert novelty["head_novelty_deg"]["mean"] == pytest.approx(float(expected))


def test_without_the_training_videos_tracking_the_distances_say_why(experiment, tmp_path, monkeypatch):
    """The test frames' distances to the training frames need the training videos' flame_params.json;
    without them the evaluation still writes the metrics, and metrics.json says what is missing."""
    overrides, folder = experiment
    copy = tmp_path / "experiment"
    shutil.copytree(folder.parents[2], copy, ignore=shutil.ignore_patterns("eval"))
    gone = load_conf(REPO / "confs" / "demo.conf", [*overrides, "dataset.train.sub_dir=[MVI_gone]"])
    monkeypatch.setattr(ExperimentPaths, "trained_conf", lambda self: gone)
    args = ["--conf", str(REPO / "confs" / "demo.conf"), "--is_eval", "--no_videos", *overrides,
            "--load_path", str(copy / "train")]
    assert exp_runner.run(args) == 0
    report = json.loads((copy / "eval" / "MVI_1812" / "epoch_2" / "metrics.json").read_text())
    assert 5.0 < report["metrics"]["all"]["psnr"] < 60.0
    assert "MVI_gone" in report["novelty"]["unavailable"]
    header = (copy / "eval" / "MVI_1812" / "epoch_2" / "metrics.csv").read_text().splitlines()[0]
    assert "head_novelty_deg" not in header


def test_an_evaluation_of_its_own_takes_the_confs_arithmetic(experiment, monkeypatch):
    """`--is_eval` sets `train.tf32` as training does, so it fits and renders as the evaluation that
    followed training in the same process did."""
    overrides, _ = experiment
    seen = []
    monkeypatch.setattr(evaluator, "configure_device", lambda device, tf32: seen.append((device.type, tf32)))
    args = ["--conf", str(REPO / "confs" / "demo.conf"), "--is_eval", "--no_videos", "--only_json", *overrides]
    assert exp_runner.run([*args, "train.tf32=true"]) == 0
    assert seen == [("cpu", True)]


def _trained_avatar(overrides: list[str], *more: str):
    """(conf, avatar, epoch) of the experiment's latest checkpoint, on the CPU."""
    conf = load_conf(REPO / "confs" / "demo.conf", [*overrides, *more])
    avatar, epoch = load_avatar(conf, experiment_checkpoints(conf), "latest", device=torch.device("cpu"))
    return conf, avatar, epoch


def test_test_time_fitting_lowers_the_loss_of_perturbed_inputs(experiment):
    overrides, _ = experiment
    conf, avatar, _ = _trained_avatar(overrides)
    data = dataset_from_conf(conf, "test", is_eval=True)
    noisy = data.expressions + 0.5 * torch.randn(data.expressions.shape, generator=torch.Generator().manual_seed(0))
    inputs = FrameInputs(noisy, data.flame_poses, data.world_mats, True, True)
    loss = AvatarLoss(conf.loss, None, None, torch.device("cpu"), perceptual=False)
    losses = fit_frame_inputs(avatar, inputs, batches(data, 8, torch.arange(len(data))), 1, 15, 5e-2,
                              loss, torch.device("cpu"))
    (first, last), = losses
    assert last < first
    assert not torch.equal(inputs.expression.weight.detach(), noisy)
    assert all(p.requires_grad for p in avatar.parameters())  # the avatar is unfrozen afterwards


def test_zero_fitting_steps_keep_the_tracked_inputs(experiment, tmp_path):
    overrides, _ = experiment
    conf, avatar, epoch = _trained_avatar(overrides, "evaluation.test_fit_steps=0")
    data = dataset_from_conf(conf, "test", is_eval=True)
    assert fitted_test_inputs(conf, avatar, data, tmp_path, epoch, torch.device("cpu")) is None
    assert list(tmp_path.iterdir()) == []  # nothing fitted, nothing saved


def test_training_frames_fitted_as_the_test_frames_change_only_the_frames_scored(experiment):
    """The fitted side of quality_vs_time's gap: the tracked inputs of the scored training frames are
    fitted by the test protocol (steps, rate, loss), the other frames keep theirs, and a protocol that
    fits nothing scores the tracked inputs as they are."""
    overrides, _ = experiment
    conf, avatar, _ = _trained_avatar(overrides, "evaluation.test_fit_steps=3")
    data = dataset_from_conf(conf, "train", load_images=False, use_mean_expression=False, use_var_expression=False)
    order = spread_indices(len(data), 2)
    inputs = protocol_inputs(conf, avatar, data, order, torch.device("cpu"))
    moved = (inputs.expression.weight.detach() != data.expressions).any(dim=1)
    assert moved.nonzero().flatten().tolist() == order.tolist()
    unfitted, _, _ = _trained_avatar(overrides, "evaluation.test_fit_steps=0")
    assert protocol_inputs(unfitted, avatar, data, order, torch.device("cpu")) is None


def test_missing_checkpoint_is_one_clear_error(experiment, capsys):
    overrides, _ = experiment
    with pytest.raises(SystemExit) as info:
        exp_runner.main(["--conf", str(REPO / "confs" / "demo.conf"), "--is_eval", "--checkpoint", "7", *overrides])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "7.pth not found; epochs available: 2 and latest" in err and "Traceback" not in err


def test_ply_round_trip_renders_the_same_image(experiment, tmp_path):
    overrides, _ = experiment
    _, avatar, _ = _trained_avatar(overrides)
    path = save_posed_ply(avatar, tmp_path / "canonical.ply")
    direct = posed_gaussians(avatar, avatar.canonical_expression, avatar.canonical_pose)
    loaded = load_gaussians_ply(path)
    assert loaded.means.shape == direct.means.shape
    camera = avatar.camera(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -4.0]]),
                                     torch.tensor([-3.0, 3.0, 0.5, 0.5]))
    white = torch.ones(3)
    a = rasterize(direct.means, direct.quats, direct.scales, direct.opacities, direct.colors, camera, white, "torch")
    b = rasterize(loaded.means, loaded.quats, loaded.scales, loaded.opacities, loaded.colors, camera, white, "torch")
    assert (a.image - b.image).abs().max().item() < 1e-4
    assert (a.image - 1).abs().max().item() > 0.1  # the avatar is in view


def test_reenactment_writes_one_frame_per_driving_frame(experiment):
    overrides, folder = experiment
    conf = load_conf(REPO / "confs" / "demo.conf", overrides)
    drive = Path(conf.dataset.data_folder) / SUBJECT / SUBJECT / "MVI_1814" / "flame_params.json"
    assert exp_runner.run(["--conf", str(REPO / "confs" / "demo.conf"), "--drive", str(drive), *overrides]) == 0
    out = folder.parents[1] / "reenact_MVI_1814" / "epoch_2"
    n_drive = len(json.loads(drive.read_text())["frames"])
    assert len(list((out / "rgb").iterdir())) == n_drive
    assert _count_video_frames(out / "video.mp4") == n_drive


def test_export_one_frame(experiment, tmp_path):
    overrides, _ = experiment
    out = tmp_path / "frame3.ply"
    assert export_ply.run(["--conf", str(REPO / "confs" / "demo.conf"), "--out", str(out), "--frame", "3",
                           *overrides]) == 0
    frame = load_gaussians_ply(out)
    canonical = load_gaussians_ply(export_ply_canonical(overrides, tmp_path))
    assert frame.means.shape == canonical.means.shape
    assert (frame.means - canonical.means).abs().max() > 1e-3  # the frame is posed, not the canonical avatar
    with pytest.raises(SystemExit) as info:
        export_ply.main(["--conf", str(REPO / "confs" / "demo.conf"), "--out", str(out), "--frame", "999", *overrides])
    assert info.value.code == 2


def export_ply_canonical(overrides: list[str], folder: Path) -> Path:
    out = folder / "canonical.ply"
    assert export_ply.run(["--conf", str(REPO / "confs" / "demo.conf"), "--out", str(out), *overrides]) == 0
    return out


def test_export_loads_the_avatar_without_an_evaluator(experiment, tmp_path, monkeypatch):
    overrides, folder = experiment

    def refuse(*args, **kwargs):
        raise AssertionError("export_ply constructed an Evaluator")

    monkeypatch.setattr(evaluator.Evaluator, "__init__", refuse)
    out = tmp_path / "cli.ply"
    assert export_ply.run(["--conf", str(REPO / "confs" / "demo.conf"), "--out", str(out), *overrides]) == 0
    _, avatar, epoch = _trained_avatar(overrides)
    assert epoch == 2 and not avatar.training and avatar.n_points == len(load_gaussians_ply(out).means)
    direct = save_posed_ply(avatar, tmp_path / "direct.ply")
    assert out.read_bytes() == direct.read_bytes()
    assert out.read_bytes() == (folder / "canonical.ply").read_bytes()  # what evaluation wrote


def test_a_checkpoint_of_another_model_is_one_error_naming_the_file_and_the_fix(experiment, tmp_path, capsys):
    overrides, _ = experiment
    other = "model.deformer_network.dims=[64, 64]"  # the checkpoint's deformer is [128, 128, 128, 128]
    with pytest.raises(CheckpointError, match=r"ModelParameters/latest\.pth does not fit the model.*wrong sizes"):
        _trained_avatar(overrides, other)
    with pytest.raises(SystemExit) as info:
        export_ply.main(["--conf", str(REPO / "confs" / "demo.conf"), "--out", str(tmp_path / "a.ply"), *overrides,
                          other])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "ModelParameters/latest.pth does not fit the model" in err
    assert "use the runconf.conf the checkpoint was trained with" in err and not (tmp_path / "a.ply").exists()


def test_nocloth_mask_and_means_that_say_why_a_metric_is_missing():
    mask = torch.tensor([[1.0, 0.5], [1.0, 1.0]])
    semantic = torch.tensor([[15, 1], [16, 2]])  # necklace, skin, cloth, skin
    assert torch.equal(nocloth_mask(mask, semantic), torch.tensor([[0.0, 0.5], [0.0, 1.0]]))
    rows = [{"sub_dir": "v", "frame_id": k, "l1": 0.1 * k, "mse": 0.0, "psnr": 20.0 + k, "ssim": 0.5,
             "lpips": None} for k in (1, 2)]
    means = metric_means(rows, Unavailable("no weights"))
    assert means["all"]["psnr"] == pytest.approx(21.5) and means["all"]["l1"] == pytest.approx(0.15)
    assert means["all"]["lpips"] == {"unavailable": "no weights"}
    assert means["no_cloth"] == {"unavailable": "the test split has no semantic maps"}


def test_a_full_orbit_returns_to_the_stored_camera():
    world_mat = torch.tensor([[1.0, 0, 0, 0.1], [0, 1, 0, 0.2], [0, 0, 1, -4.0]])
    assert torch.allclose(orbit_world_mat(world_mat, 2 * torch.pi), world_mat, atol=1e-6)
    half = orbit_world_mat(world_mat, torch.pi)
    assert torch.allclose(half[:, 3], world_mat[:, 3]) and torch.allclose(half[0, 0], torch.tensor(-1.0), atol=1e-6)
