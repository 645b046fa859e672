"""scripts/measure_own_video.py on a tiny grid: one seed, 6 frames per video, 4 epochs, the variants
exact, preprocessed and refined (which continues the preprocessed run's checkpoint). Checks the
table's rows, the json and csv, and that the figures come from real runs."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest

from test_preprocess_units import needs_detector, needs_opencv


def table_rows(printed: str, title: str) -> list[str]:
    """The first cell of each row of the markdown table printed under the line starting with `title`."""
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 3  # title, header, rule
    rows = []
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        rows.append(line.split("|")[1].strip())
    return rows


def test_tiny_grid_reports_each_variant(tmp_path, capsys):
    needs_opencv()
    needs_detector()
    from dynavatar.cli.measure_own_video import run

    out_json, out_csv = tmp_path / "gap.json", tmp_path / "gap.csv"
    # A numbered checkpoint every epoch, so that "refined" (inputs refined after epoch 1) continues
    # the "preprocessed" run from its epoch 1; a short fit of the test inputs, to keep the test fast.
    assert run(["--seeds", "0", "--variants", "exact", "preprocessed", "refined", "--frames", "6", "--epochs", "4",
                "--refine_after", "1", "--steps", "150", "--work", str(tmp_path / "work"), "--json", str(out_json),
                "--csv", str(out_csv), "-q", "train.save_freq=1", "evaluation.test_fit_steps=2"]) == 0
    printed = capsys.readouterr().out
    assert table_rows(printed, "test PSNR") == ["exact", "preprocessed", "refined"], printed
    # One preprocessing run ("pre": exact, preprocessed and refined share it), on the device auto picks.
    assert table_rows(printed, "preprocessing") == ["0"], printed

    results = json.loads(out_json.read_text())
    seed = results["seeds"]["0"]
    assert seed["backdrop"] == "textured" and results["setup"]["epochs"] == 4
    variants = seed["variants"]
    for name in ("exact", "preprocessed", "refined"):
        psnr = variants[name]["psnr"]
        # Four epochs learn little, but a real evaluation of a rendered head scores well above 5 dB.
        assert math.isfinite(psnr) and 5.0 < psnr < 60.0, (name, psnr)
        assert variants[name]["seconds"] > 0
    assert variants["refined"]["resumed_from"] == 1 and variants["preprocessed"]["resumed_from"] is None
    # The inputs refined in epoch 3 are trained on in epoch 4: the two runs are not one run read twice.
    assert variants["refined"]["psnr"] != variants["preprocessed"]["psnr"]
    assert set(seed["report"]["videos"]) == {"train1", "train2", "test1"}

    with open(out_csv, newline="") as f:
        lines = list(csv.DictReader(f))
    assert [line["variant"] for line in lines] == ["exact", "preprocessed", "refined"]
    assert float(lines[0]["psnr"]) == pytest.approx(variants["exact"]["psnr"])


def test_table_rows_and_differences_per_seed():
    """Every variant a row, in VARIANTS order; the differences are taken seed by seed, against the
    references of the same seed (here made-up inputs to the formatting, not measurements)."""
    from dynavatar.preprocess.own_video_gap import VARIANTS, rows, table

    def run(psnr):
        return {"psnr": psnr, "seconds": 1.0}

    results = {"seeds": {
        "0": {"variants": {"generator": run(28.0), "exact": run(26.0), "preprocessed": run(21.0),
                           "silhouette": run(22.0), "photometric": run(22.8), "true_focal": run(22.5),
                           "exact_head": run(25.0), "exact_face": run(22.2), "refined": run(21.5)}},
        "1": {"variants": {"exact": run(27.0), "preprocessed": run(23.0), "silhouette": run(23.0),
                           "refined": run(23.5)}}}}
    by_name = {r["variant"]: r for r in rows(results)}
    assert list(by_name) == list(VARIANTS)
    assert by_name["preprocessed"]["minus_exact_mean"] == pytest.approx(-4.5)
    assert by_name["preprocessed"]["minus_exact_std"] == pytest.approx(0.5 ** 0.5)  # -5 and -4: ddof 1
    assert by_name["generator"]["psnr_std"] == 0.0  # one seed
    assert by_name["preprocessed"]["minus_generator_mean"] == pytest.approx(-7.0)  # seed 0 alone has it
    assert by_name["generator"]["seeds"] == 1 and by_name["refined"]["psnr_mean"] == pytest.approx(22.5)
    printed = table(results).splitlines()
    assert [line.split("|")[1].strip() for line in printed[2:]] == list(VARIANTS)


def _generator_video(folder, intrinsics, res=32):
    """A SyntheticVideo whose generator folder holds just what `exact_tracking_in_crop` reads: the
    intrinsics, one frame's keypoints and an image of the generator's size."""
    import numpy as np

    from dynavatar.data.images import write_rgb
    from dynavatar.preprocess.synthetic_video import SyntheticVideo

    (folder / "image").mkdir(parents=True)
    write_rgb(folder / "image" / "1.png", np.zeros((res, res, 3)))
    frame = {"file_path": "./image/1", "flame_keypoints": [[0.0, 0.0]] * 68}
    (folder / "flame_params.json").write_text(json.dumps({"intrinsics": intrinsics, "frames": [frame]}))
    return SyntheticVideo(folder.with_suffix(".mp4"), folder, (8, 10), (2.0, 2.0), (96, 80))


def test_true_focal_is_the_focal_option_of_the_generators_camera(tmp_path):
    """The "true_focal" variant's --focal: with each video's crop, `video_focals` gives back the
    normalised focal of the generator's camera in that crop (the mean of its fx and fy); videos of
    other cameras, or crops of other videos, are refused."""
    from dynavatar.preprocess.crop import Crop
    from dynavatar.preprocess.own_video_gap import true_focal
    from dynavatar.preprocess.synthetic_video import exact_tracking_in_crop
    from dynavatar.preprocess.tracking import video_focals

    camera = [-3.1, 2.9, 0.5, 0.5]
    videos = {name: _generator_video(tmp_path / name, camera) for name in ("a", "b", "c")}
    crops = {"a": Crop(10, 12, 40, 64), "b": Crop(8, 6, 50, 64), "c": Crop(9, 9, 46, 64)}
    focal = true_focal(videos, crops)
    assert focal == pytest.approx(3.0 * 32 * 2.0 / 46)  # the generator's 3.0 at 32 px, scaled 2, in a 46 px crop
    exact = [exact_tracking_in_crop(videos[n], crops[n])["intrinsics"] for n in videos]
    assert video_focals(focal, [crops[n].size for n in videos]) == pytest.approx([(fy - fx) / 2 for fx, fy, *_ in exact])
    with pytest.raises(ValueError, match="differ"):
        true_focal(videos, {"a": crops["a"], "b": crops["b"]})
    videos["c"] = _generator_video(tmp_path / "other", [-3.5, 3.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="not one camera"):
        true_focal(videos, crops)


def test_exact_head_and_face_split_the_tracking(tmp_path):
    """"exact_head": the generator's camera, shape and head turn with the preprocessed face
    (expressions, jaw, eyes); "exact_face" the other way round; both on the preprocessed images and
    masks, the generator's part re-expressed for the video's crop. Trackings of other frames, or an
    unknown part, are refused."""
    from dataclasses import asdict

    from dynavatar.preprocess.crop import Crop
    from dynavatar.preprocess.own_video_gap import exact_subject, hybrid_tracking
    from dynavatar.preprocess.synthetic_video import exact_tracking_in_crop

    video = _generator_video(tmp_path / "generator" / "train1", [-3.1, 2.9, 0.5, 0.5])
    generator = json.loads((video.subject_video / "flame_params.json").read_text())
    generator["shape_params"] = [0.5, -0.5]
    generator["frames"][0].update(expression=[1.0, 2.0], pose=[float(k) for k in range(15)],
                                  world_mat=[[1, 0, 0, 0.1], [0, 1, 0, 0.2], [0, 0, 1, -4.0]])
    (video.subject_video / "flame_params.json").write_text(json.dumps(generator))
    tracked = {"intrinsics": [-3.0, 3.0, 0.5, 0.5], "shape_params": [0.1, 0.1],
               "frames": [{"file_path": "./image/1", "expression": [-1.0, -2.0], "pose": [-1.0] * 15,
                           "world_mat": [[1, 0, 0, 0.0], [0, 1, 0, 0.0], [0, 0, 1, -3.8]],
                           "flame_keypoints": [[0.1, 0.1]] * 68, "bbox": [0.1, 0.1, 0.1, 0.1]}]}
    crop = Crop(8, 6, 50, 64)
    pre = tmp_path / "data" / "silhouette"
    (pre / "silhouette" / "train1" / "mask").mkdir(parents=True)
    (pre / "silhouette" / "train1" / "mask" / "1.png").write_bytes(b"the preprocessed mask")
    (pre / "silhouette" / "train1" / "flame_params.json").write_text(json.dumps(tracked))
    (pre / "preprocess").mkdir()
    (pre / "preprocess" / "report.json").write_text(json.dumps({"videos": {"train1": {"crop": asdict(crop)}}}))
    exact = exact_tracking_in_crop(video, crop)

    for subject, camera, face in (("exact_head", exact, tracked), ("exact_face", tracked, exact)):
        root = exact_subject(pre, {"train1": video}, tmp_path / "data", subject)
        assert (root / subject / "train1" / "mask" / "1.png").read_bytes() == b"the preprocessed mask"
        mixed = json.loads((root / subject / "train1" / "flame_params.json").read_text())
        frame = mixed["frames"][0]
        for key in ("intrinsics", "shape_params"):
            assert mixed[key] == camera[key]
        assert frame["world_mat"] == camera["frames"][0]["world_mat"]
        assert frame["flame_keypoints"] == camera["frames"][0]["flame_keypoints"]
        assert frame["expression"] == face["frames"][0]["expression"]
        assert frame["pose"] == camera["frames"][0]["pose"][:6] + face["frames"][0]["pose"][6:]
    assert mixed["intrinsics"] == [-3.0, 3.0, 0.5, 0.5]  # "exact_face" keeps the tracked camera
    assert tracked["frames"][0]["pose"] == [-1.0] * 15  # the inputs are left as they were

    other = json.loads(json.dumps(tracked))
    other["frames"][0]["file_path"] = "./image/2"
    with pytest.raises(ValueError, match="different frames"):
        hybrid_tracking(other, exact, "head")
    with pytest.raises(ValueError, match="expected 'head' or 'face'"):
        hybrid_tracking(tracked, exact, "jaw")


def test_tracking_args_reach_the_tracked_variants_preprocessing(tmp_path, monkeypatch):
    """--tracking_args: the tracked variants' preprocess.py runs get them after their own options, so
    that they win over the variant's weights; the "photometric" variant's own options parse."""
    from dynavatar.cli.measure_own_video import build_parser
    from dynavatar.cli.preprocess import build_parser as preprocess_parser, options_from_args
    from dynavatar.preprocess import own_video_gap
    from dynavatar.preprocess.own_video_gap import Setup, _variant_inputs
    from dynavatar.preprocess.pipeline import preprocessing_tracking

    args = build_parser().parse_intermixed_args(["--tracking_args=--photometric_weight 5e3 --expression_prior 0.02"])
    assert args.tracking_args == "--photometric_weight 5e3 --expression_prior 0.02"
    calls = {}

    def fake_preprocess(videos, data, subject, setup, extra=()):
        calls[subject] = list(extra)
        return data / subject

    def tracking(extra):  # what preprocess.py makes of a variant's options
        return options_from_args(preprocess_parser().parse_args(["--subject", "s", "--video", "v.mp4", *extra])).tracking

    monkeypatch.setattr(own_video_gap, "preprocess", fake_preprocess)
    (tmp_path / "datasets").mkdir()
    for variant in ("silhouette", "photometric"):
        _variant_inputs(variant, 0, tmp_path, {}, tmp_path / "datasets" / "pre", Setup())
    # "silhouette" is preprocessing's defaults; "photometric" the term without its light, weaker
    assert calls["silhouette"][0] == "--landmarks" and len(calls["silhouette"]) == 2, calls
    assert tracking(calls["silhouette"]) == preprocessing_tracking()
    own = tracking(calls["photometric"])
    assert (own.photometric_weight, own.expression_prior, own.photometric_shading) == (3.0e3, 1.0e-2, False)
    setup = Setup(tracking_args=["--photometric_weight", "5e3", "--photometric_shading"])
    for variant in ("silhouette", "photometric"):
        _variant_inputs(variant, 0, tmp_path, {}, tmp_path / "datasets" / "pre", setup)
        assert calls[variant][-3:] == ["--photometric_weight", "5e3", "--photometric_shading"], calls
        extra = tracking(calls[variant])
        assert (extra.photometric_weight, extra.photometric_shading) == (5.0e3, True), (variant, extra)
    assert tracking(calls["photometric"]).expression_prior == 1.0e-2  # the variant's own, not overridden
    assert own_video_gap.Setup().tracking_args == []


# fast.conf made tiny and CPU-runnable: a few frames an epoch instead of 1,000, three epochs (the
# run's length as the recipe, overrides included, sets it: no --epochs), no VGG weights to load,
# no per-epoch plots, a short fit of the test inputs.
TINY_FAST = ["train.device=cpu", "model.rasterizer=torch", "train.frames_per_epoch=4", "train.nepoch=3",
             "loss.vgg_feature_weight=0", "train.plot_freq=100", "evaluation.test_fit_steps=2"]


def test_conf_option_trains_with_that_recipe(tmp_path, capsys, monkeypatch):
    """--conf: the variant's conf includes that recipe, the run is of its method and length, and the
    grid splits as the 512 px measurement splits it: the datasets first (--prepare_only, nothing
    trained), then the training in another invocation that reads the videos and datasets back. The
    recipe and the work folder are given relative to the current folder, which is neither the
    repository nor where preprocessing and training run."""
    needs_opencv()
    needs_detector()
    from dynavatar.cli.measure_own_video import run
    from dynavatar.preprocess.own_video_gap import DEMO_CONF

    fast = DEMO_CONF.parent.resolve() / "fast.conf"
    work, out_json, out_csv = tmp_path / "work", tmp_path / "fast.json", tmp_path / "fast.csv"
    monkeypatch.chdir(tmp_path)
    common = ["--conf", os.path.relpath(fast, tmp_path), "--seeds", "0", "--variants", "exact", "--frames", "6",
              "--steps", "150", "--work", "work", "-q", *TINY_FAST]
    assert run([*common, "--prepare_only"]) == 0
    seed = work / "seed_0"
    assert not (seed / "runs").exists()
    conf = (seed / "exact.conf").read_text()
    assert f'include required(file("{fast.as_posix()}"))' in conf and "demo.conf" not in conf
    assert "flame_model_path = synthetic" in conf  # the model the videos were generated and tracked with
    video = seed / "videos" / "train1.mp4"
    made = video.stat().st_mtime_ns
    capsys.readouterr()

    assert run([*common, "--json", str(out_json), "--csv", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert "after 3 epochs at 64 px (fast.conf)" in printed and table_rows(printed, "test PSNR") == ["exact"]
    assert video.stat().st_mtime_ns == made  # read back, not generated again
    results = json.loads(out_json.read_text())
    assert results["setup"]["epochs"] == 3 and results["setup"]["recipe"] == str(fast)
    exact = results["seeds"]["0"]["variants"]["exact"]
    assert exact["epochs"] == 3 and exact["recipe"] == str(fast) and 5.0 < exact["psnr"] < 60.0
    # fast.conf's method names the experiment; the evaluation is that of the recipe's last epoch.
    assert list((seed / "runs" / "exact").glob("exact/fast/*/eval/test1/epoch_3/metrics.json"))
    pre = results["seeds"]["0"]["preprocessing"]["pre"]
    assert pre["device"] == "cpu" and pre["seconds"] > 0 and set(pre["steps"]) == {"frames", "tracking", "masks"}
    with open(out_csv, newline="") as f:
        line = next(csv.DictReader(f))
    assert line["preprocessing"] == "pre" and line["preprocess_device"] == "cpu"
    assert float(line["tracking_seconds"]) == pytest.approx(pre["steps"]["tracking"])


def test_recipe_sets_the_length_the_refinement_and_the_generated_frame():
    """The epochs follow the recipe (95 for demo.conf, 45 for fast.conf), and so does the refinement's
    start; "refined" is no variant of subject1.conf, which refines the inputs itself; a 512 px avatar
    gets a frame that no crop upsamples."""
    from dynavatar.cli.measure_own_video import run
    from dynavatar.preprocess.errors import PreprocessError
    from dynavatar.preprocess.own_video_gap import DEMO_CONF, VARIANTS, Setup, default_variants, generator_frame

    fast, paper = DEMO_CONF.parent / "fast.conf", DEMO_CONF.parent / "subject1.conf"
    demo = Setup()
    assert (demo.epochs, demo.refine_after, demo.generator_res, demo.scale) == (95, 60, 128, 2.0)
    assert default_variants(demo) == list(VARIANTS)
    at_512 = Setup(res=512, recipe=str(fast))
    assert (at_512.epochs, at_512.refine_after) == (45, 22) and default_variants(at_512) == list(VARIANTS)
    assert "refined" not in default_variants(Setup(res=512, recipe=str(paper)))
    assert (at_512.generator_res, at_512.scale) == generator_frame(512) == (640, 1.0)
    assert 0.88 * at_512.generator_res >= 512  # the smallest crop seen, 0.88 of the frame, holds 512 px
    with pytest.raises(PreprocessError, match="refines the per-frame inputs"):
        run(["--conf", str(paper), "--variants", "refined", "--res", "512"])


@pytest.mark.parametrize("saved_epoch", [2, None])
def test_an_interrupted_run_is_continued_from_its_latest_checkpoint(tmp_path, monkeypatch, saved_epoch):
    """A run killed after a checkpoint (a time limit, a crash) continues from it; one killed before
    any save starts afresh. The training child is stood in for: what is checked is what it is asked."""
    from dynavatar.preprocess import own_video_gap as gap

    exps = tmp_path / "runs" / "exact"
    checkpoints = exps / "exact" / "fast" / "train1+train2" / "train" / "checkpoints"
    checkpoints.mkdir(parents=True)
    stale = exps / "exact" / "fast" / "train1+train2" / "train" / "runconf.conf"
    stale.write_text("from the interrupted run\n")
    if saved_epoch is not None:
        (checkpoints / "latest.json").write_text(json.dumps({"epoch": saved_epoch, "parts": ["ModelParameters"]}))
    asked = []

    def child(module, args, cwd, timeout, threads=1):
        asked.append(list(args))
        metrics = exps / "exact" / "fast" / "train1+train2" / "eval" / "test1" / "epoch_4" / "metrics.json"
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text(json.dumps({"metrics": {"all": {"psnr": 21.5, "ssim": 0.9, "l1": 0.02}}}))
        return gap.subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(gap, "_python", child)
    setup = gap.Setup(res=64, frames=6, epochs=4)
    result = gap.train_and_evaluate(tmp_path / "exact.conf", exps, setup)

    assert len(asked) == 1 and result["psnr"] == 21.5
    if saved_epoch is None:  # nothing to continue: the folder was cleared and the run started afresh
        assert "--is_continue" not in asked[0] and not stale.exists()
        assert result["resumed_from"] is None
    else:  # its own latest checkpoint, not another run's (no --load_path)
        assert "--is_continue" in asked[0] and "--load_path" not in asked[0] and stale.exists()
        assert result["resumed_from"] == saved_epoch
    assert json.loads((exps / "result.json").read_text())["psnr"] == 21.5


def test_overrides_written_after_seeds_or_variants_stay_overrides(capsys, monkeypatch):
    """--seeds and --variants take every word after them; a key=value among those is a conf override,
    kept in the command line's order (the last of one key wins), also when the option is repeated; a
    misspelt variant or a word that is no seed stops with what is expected; `run` parses so."""
    import dynavatar.cli.measure_own_video as cli

    args = cli.parse_args(["--seeds", "0", "1", "train.seed=3", "--variants", "exact", "silhouette",
                           "loss.vgg_feature_weight=0", "--work", "w", "train.nepoch=3"])
    assert args.seeds == [0, 1] and args.variants == ["exact", "silhouette"]
    assert args.overrides == ["train.seed=3", "loss.vgg_feature_weight=0", "train.nepoch=3"]
    assert cli.parse_args(["model.shading=false"]).seeds == [0, 1, 2]  # the defaults stay
    assert cli.parse_args(["a.x=1", "--seeds", "0", "a.x=2"]).overrides == ["a.x=1", "a.x=2"]
    assert cli.parse_args(["--variants", "exact", "x.a=1", "--seeds", "0", "y.a=2"]).overrides == ["x.a=1", "y.a=2"]
    repeated = cli.parse_args(["--seeds", "0", "a.b=1", "--seeds", "5"])
    assert repeated.seeds == [5] and repeated.overrides == ["a.b=1"]
    for argv, message in ((["--variants", "exakt"], "exakt: choose from generator, exact"),
                          (["--variants", "a.b=1"], "no variant before the key=value overrides"),
                          (["--seeds", "x"], "'x' is neither a seed"),
                          (["--seeds", "a.b=1"], "give at least one seed")):
        with pytest.raises(SystemExit) as stop:
            cli.parse_args(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err, argv

    class Measured(Exception):
        pass

    def measure(seeds, work, variants, setup, train=True):
        raise Measured(seeds, variants, setup.overrides)

    monkeypatch.setattr(cli, "measure", measure)
    with pytest.raises(Measured) as measured:
        cli.run(["--seeds", "0", "train.save_freq=1", "--variants", "exact", "--work", "w"])
    assert measured.value.args == ([0], ["exact"], ["train.save_freq=1"])
