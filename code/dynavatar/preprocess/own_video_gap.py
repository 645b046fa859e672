"""What preprocessing costs an avatar, end to end: test PSNR of a recipe (confs/demo.conf unless
another is named) trained on generated videos that went through `scripts/preprocess.py` (face
detector, FLAME tracking, masks), against the same videos with exact tracking.

Per seed, one generated subject (`synthetic_video.make_synthetic_videos`: two training videos and a
test video whose head turns and jaw reach 1.5 times the training extremes, beyond ±20°), composited
over a textured or a white backdrop and encoded to mp4; the generated frame is large enough for the
avatar's size (`generator_frame`). The variants, each trained with the recipe and evaluated on the
test video:

- generator: the generator's own images, masks and tracking (read at the avatar's size);
- exact: the preprocessed images and masks with the generator's exact tracking re-expressed for the
  crop (`exact_tracking_in_crop`), so that it differs from "preprocessed" only in its tracking;
- preprocessed: preprocessing with the detector's landmarks alone (`--silhouette_weight 0
  --photometric_weight 0 --expression_prior 1e-3`, the landmarks-only fit that was preprocessing's
  default before the silhouette term, so that "exact" keeps the images and masks it always had;
  else defaults);
- silhouette: preprocessing as a user runs it with the default options (the silhouette term, the photometric
  term under a light fixed to the camera and the stronger expression prior; the same detected landmarks);
- photometric: "silhouette" with the photometric term as it was before its light (PHOTOMETRIC_VARIANT_ARGS: each
  vertex against its mean colour, at a weaker weight and expression prior), so that what the light, the weight
  and the prior add together is measured;
- true_focal: "silhouette" tracked with the generator's true focal length (`true_focal`) instead of
  the default `--focal` 3.0, so that the focal's share of the silhouette variant's gap is measured;
- exact_head, exact_face: "silhouette" with part of its tracking replaced by the exact one, so that
  its gap to "exact" is split between the head and the face: exact_head takes the exact camera
  (intrinsics and world_mats), shape and head turn (global and neck rotations) and keeps the tracked
  face (expressions, jaw and eyes); exact_face keeps the tracked camera, shape and head turn and takes
  the exact face (`hybrid_tracking`);
- refined: "preprocessed" trained with per-frame input refinement (expression and pose; the camera
  translation is only refined where the conf renders with it) after epoch `refine_after`. Until
  then it is the "preprocessed" run itself (resuming is bitwise exact), so it continues that run's
  numbered checkpoint when there is one. Only for a recipe that does not refine the inputs itself
  (demo.conf and fast.conf never do; subject1.conf does from epoch 11, in every variant).

Everything is kept under one work folder; videos, datasets and a variant whose evaluation is already
there are read back, not made again, so that a grid can be split over several invocations, also
running at once: one per seed, or, once a seed's datasets are made (`prepare_only`), one per seed
and variant. Each preprocessing run's wall time and device are recorded beside its dataset.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np


log = logging.getLogger(__name__)

VARIANTS = ("generator", "exact", "preprocessed", "silhouette", "photometric", "true_focal", "exact_head",
            "exact_face", "refined")
# Training order: the comparison that matters first, "refined" right after the run it continues.
RUN_ORDER = ("exact", "preprocessed", "refined", "silhouette", "exact_head", "exact_face", "photometric",
             "true_focal", "generator")
VIDEOS = ("train1", "train2", "test1")
TRAIN, TEST = ("train1", "train2"), ("test1",)
DEMO_CONF = Path(__file__).resolve().parents[3] / "confs" / "demo.conf"
METRICS = ("psnr", "ssim", "l1")
# The preprocessing run whose images and masks each variant trains on ("generator": none, the
# generator's own folder).
PREPROCESSING_OF = {"exact": "pre", "preprocessed": "pre", "refined": "pre", "silhouette": "silhouette",
                    "photometric": "photometric", "true_focal": "true_focal", "exact_head": "silhouette",
                    "exact_face": "silhouette"}
# What of the exact tracking each variant built on it takes: all of it, or the head or the face part.
EXACT_PARTS = {"exact": "all", "exact_head": "head", "exact_face": "face"}
HEAD_POSE = 6  # FLAME's 15 pose numbers start with the global and the neck rotation (3 each)
# The "photometric" variant's tracking options: the term without the light fixed to the camera, at the weight and
# expression prior that were best for it (preprocessing's default before the light, docs/PREPROCESSING.md).
PHOTOMETRIC_VARIANT_ARGS = ("--photometric_weight", "3e3", "--expression_prior", "1e-2", "--no-photometric_shading")
GENERATOR_RES = 128  # the smallest generated frame, the one the 64 px measurements used
# The crop preprocessing places is 0.88-0.96 of the generated frame's side (seeds 0-2, head turns
# of the extrapolating test video included), so a frame this many times the avatar's size gives
# every avatar image at least its own size in generated pixels.
GENERATOR_MARGIN = 1.25


def generator_frame(res: int) -> tuple[int, float]:
    """(generator_res, scale) for avatars of `res` px: the generated frame at least GENERATOR_MARGIN
    times `res` (a multiple of 64, at least GENERATOR_RES), so that no avatar image is upsampled from
    fewer generated pixels; the canvas (1.5 frames wide) scaled up to 384 px wide, the video the 64 px
    measurements used, and never down, which would lose generated pixels (a larger canvas is kept as
    it is). 64 px: (128, 2.0); 512 px: (640, 1.0)."""
    side = max(GENERATOR_RES, 64 * math.ceil(GENERATOR_MARGIN * res / 64))
    return side, max(1.0, 2.0 * GENERATOR_RES / side)


def recipe_train(recipe: str | Path, overrides: Sequence[str] = ()):
    """The recipe's `train` section, with the overrides every run gets."""
    from ..config import load_conf

    return load_conf(recipe, overrides).train


def default_refine_after(train, epochs: int) -> int:
    """The recipe's first learning-rate milestone before `epochs` (the demo's 60: its point count is
    final from epoch 30, so the inputs move only against a settled avatar), else two thirds of `epochs`."""
    early = [m for m in train.sched_milestones if 0 < m < epochs]
    return min(early) if early else max(1, 2 * epochs // 3)


def recipe_refines_inputs(train, epochs: int) -> bool:
    """Whether the recipe itself refines the training frames' inputs within `epochs` (subject1.conf
    does from epoch 11): then every variant is refined, and "refined" is no variant of its own."""
    return (train.optimize_expression or train.optimize_camera) and train.optimize_inputs_after_epoch < epochs


@dataclass
class Setup:
    """What every seed shares. None: derived in __post_init__ (the generated frame from `res`, the
    epochs and the refinement's start from the recipe)."""

    res: int = 64  # the avatar's image size (preprocess --res, the recipe's img_res)
    frames: int = 30  # per video
    epochs: int | None = None  # None: the recipe's train.nepoch (95 for the demo)
    refine_after: int | None = None  # None: `default_refine_after` (60 for the demo)
    generator_res: int | None = None  # the generated frame; the video is it scaled by `scale`
    scale: float | None = None  # None for both: `generator_frame(res)`
    hair: bool = False
    tracking_steps: int | None = None  # preprocess --steps (None: its default)
    # More preprocess.py options for the tracked variants' runs (silhouette, photometric, true_focal and
    # the exact_head/exact_face built on "silhouette"), after their own: e.g. a tracking setting that
    # is not preprocessing's default, measured end to end. Not for "pre" (the detected landmarks).
    tracking_args: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # extra conf overrides for every run
    recipe: str = str(DEMO_CONF)  # the conf every variant includes
    device: str = "auto"  # preprocess --device: the tracking's (auto: the GPU when there is one)
    threads: int = 1  # OMP_NUM_THREADS of every preprocessing and training child

    def __post_init__(self) -> None:
        self.recipe = str(Path(self.recipe).resolve())
        frame, scale = generator_frame(self.res)
        self.generator_res = frame if self.generator_res is None else self.generator_res
        self.scale = scale if self.scale is None else self.scale
        if self.epochs is None or self.refine_after is None:
            train = recipe_train(self.recipe, self.overrides)
            self.epochs = train.nepoch if self.epochs is None else self.epochs
            if self.refine_after is None:
                self.refine_after = default_refine_after(train, self.epochs)


def backdrop_of(seed: int) -> str:
    """Backdrops alternate over the seeds (white for odd ones): one grid covers both kinds."""
    return "white" if seed % 2 else "textured"


def _python(module: str, args: Sequence[str], cwd: Path, timeout: float, threads: int = 1
            ) -> subprocess.CompletedProcess:
    """Run `module`'s main() in a child on `threads` threads (one by default: at 64 px the tensors are
    small, and a thread pool on shared cores costs more than it gains)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    code = f"from {module} import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _checked(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {result.stderr[-3000:]}")


def make_videos(folder: Path, seed: int, setup: Setup) -> dict:
    """The seed's generated videos. Cached: a folder whose record (videos.json) names the same
    generation and holds all three mp4s is read back, not generated again (also so that several
    processes of one seed can share it once it is there)."""
    from .synthetic_video import SyntheticVideo, make_synthetic_videos

    params = {"seed": seed, "generator_res": setup.generator_res, "scale": setup.scale, "frames": setup.frames,
              "backdrop": backdrop_of(seed), "hair": setup.hair, "test_motion": "extrapolate"}
    record = folder / "videos.json"
    if record.exists():
        kept = json.loads(record.read_text(encoding="utf-8"))
        if kept["params"] == params and all((folder / f"{name}.mp4").exists() for name in VIDEOS):
            return {name: SyntheticVideo(folder / v["path"], folder / v["subject_video"], tuple(v["offset"]),
                                         tuple(v["scale"]), tuple(v["canvas_size"]))
                    for name, v in kept["videos"].items()}
        record.unlink()  # another generation: made afresh below
    videos = make_synthetic_videos(folder, res=setup.generator_res, frames=setup.frames, seed=seed, videos=VIDEOS,
                                   scale=setup.scale, test_motion=params["test_motion"], backdrop=params["backdrop"],
                                   hair=setup.hair)
    written = {name: {"path": v.path.relative_to(folder).as_posix(),
                      "subject_video": v.subject_video.relative_to(folder).as_posix(),
                      "offset": list(v.offset), "scale": list(v.scale), "canvas_size": list(v.canvas_size)}
               for name, v in videos.items()}
    record.write_text(json.dumps({"params": params, "videos": written}), encoding="utf-8")  # written last
    return videos


def _timing_record(data: Path, subject: str) -> Path:
    """Where a preprocessing run's wall time is kept (beside the datasets, not in preprocess.py's folder)."""
    return data.parent / "preprocessing" / f"{subject}.json"


def preprocess(videos: Path, data: Path, subject: str, setup: Setup, extra: Sequence[str] = ()) -> Path:
    """scripts/preprocess.py on the three videos -> the subject's folder (kept when already complete,
    when it is of the avatar's size). Its wall time, from the child's start to its end (imports and
    the tracking device's start included), is recorded for `preprocessing_record`."""
    root = data / subject
    report = root / "preprocess" / "report.json"
    if report.exists():
        res = json.loads(report.read_text(encoding="utf-8"))["res"]
        if res != setup.res:
            raise RuntimeError(f"{root} was preprocessed at {res} px, not {setup.res}: use another work folder")
        return root
    args = ["--subject", subject, "--out", str(data), "--res", str(setup.res), "--flame", "synthetic",
            "--device", setup.device, "--no_contact_sheet", "--overwrite", "-q", *extra]
    if setup.tracking_steps is not None:
        args += ["--steps", str(setup.tracking_steps)]
    for name in VIDEOS:
        args += ["--test-video" if name in TEST else "--video", str(videos / f"{name}.mp4")]
    start = time.perf_counter()
    _checked(_python("dynavatar.cli.preprocess", args, cwd=data, timeout=3600, threads=setup.threads),
             f"preprocess {subject}")
    record = _timing_record(data, subject)
    record.parent.mkdir(exist_ok=True)
    record.write_text(json.dumps({"seconds": round(time.perf_counter() - start, 1)}), encoding="utf-8")
    _warn_if_upsampled(root, setup)
    return root


def preprocessing_record(data: Path, subject: str) -> dict:
    """One preprocessing run: its wall time (None where it was not recorded), the tracking's device
    and each step's seconds as preprocess.py reports them (frames, tracking, masks)."""
    report = json.loads((data / subject / "preprocess" / "report.json").read_text(encoding="utf-8"))
    record = _timing_record(data, subject)
    seconds = json.loads(record.read_text(encoding="utf-8"))["seconds"] if record.exists() else None
    return {"seconds": seconds, "device": report.get("device"), "steps": report.get("seconds", {})}


def _warn_if_upsampled(subject: Path, setup: Setup) -> None:
    """A crop holding fewer generated pixels than the avatar's size means upsampled images (a
    generated frame too small for `res`)."""
    for name, crop in _crops(subject).items():
        generated = crop.size / max(setup.scale, 1.0)
        if generated < setup.res:
            log.warning("%s %s: the crop holds %.0f generated pixels for %d px images: they are upsampled "
                        "(a larger --generator_res avoids it)", subject.name, name, generated, setup.res)


def exact_subject(preprocessed: Path, videos: dict, data: Path, subject: str = "exact") -> Path:
    """The preprocessed images and masks with the generator's exact tracking in each video's crop:
    all of it (subject "exact"), or its head or face part beside the preprocessed tracking's
    ("exact_head", "exact_face": `hybrid_tracking`)."""
    from .synthetic_video import exact_tracking_in_crop

    part = EXACT_PARTS[subject]
    root = data / subject
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(preprocessed / preprocessed.name, root / subject)
    crops = _crops(preprocessed)
    for name, video in videos.items():
        path = root / subject / name / "flame_params.json"
        params = exact_tracking_in_crop(video, crops[name])
        if part != "all":
            params = hybrid_tracking(json.loads(path.read_text(encoding="utf-8")), params, part)
        path.write_text(json.dumps(params), encoding="utf-8")
    return root


def hybrid_tracking(tracked: dict, exact: dict, exact_part: str) -> dict:
    """One video's flame_params.json from two trackings of its frames. `exact_part` "head": the camera
    (intrinsics and world_mats), the shape and the head's turn (global and neck rotations) of `exact`,
    the face (expressions, jaw and eye rotations) of `tracked`; "face": the other way round. Keypoints
    and boxes are those of the camera's tracking."""
    if exact_part not in ("head", "face"):
        raise ValueError(f"exact_part {exact_part!r}: expected 'head' or 'face'")
    head, face = (exact, tracked) if exact_part == "head" else (tracked, exact)
    if [f["file_path"] for f in head["frames"]] != [f["file_path"] for f in face["frames"]]:
        raise ValueError("the two trackings are of different frames")
    mixed = json.loads(json.dumps(head))  # a deep copy
    for frame, other in zip(mixed["frames"], face["frames"]):
        frame["expression"] = list(other["expression"])
        frame["pose"] = list(frame["pose"][:HEAD_POSE]) + list(other["pose"][HEAD_POSE:])
    return mixed


def write_conf(path: Path, data_folder: Path, subject: str, res: int, recipe: str | Path = DEMO_CONF) -> Path:
    """A conf that includes the recipe and only names the subject, its videos, the size and the FLAME
    model: the synthetic one whatever the recipe names (fast.conf names FLAME 2020's file), because
    the videos are of it and preprocessing tracked with it (`--flame synthetic`)."""
    path.write_text(f'include required(file("{Path(recipe).as_posix()}"))\n'
                    "model { flame_model_path = synthetic }\n"
                    "dataset {\n"
                    f'    data_folder = "{data_folder.as_posix()}"\n'
                    "    synthetic = false\n"
                    f"    subject_name = {subject}\n"
                    f"    train {{ sub_dir = [{', '.join(TRAIN)}], img_res = [{res}, {res}] }}\n"
                    f"    test {{ sub_dir = [{', '.join(TEST)}], img_res = [{res}, {res}] }}\n"
                    "}\n", encoding="utf-8")
    return path


def _metrics_file(exps: Path, epochs: int) -> Path | None:
    found = sorted(exps.glob(f"*/*/*/eval/{TEST[0]}/epoch_{epochs}/metrics.json"))
    return found[0] if found else None


def train_folder(exps: Path) -> Path:
    """The train folder of the one experiment under `exps` (where its checkpoints live)."""
    found = [p.parent for p in exps.glob("*/*/*/*/checkpoints")]  # <subject>/<method>/<split>/train
    if len(found) != 1:
        raise RuntimeError(f"expected one experiment under {exps}, found {found}")
    return found[0]


def finished_result(exps: Path, setup: Setup) -> dict | None:
    """The evaluation of a run finished earlier under `exps`, or None. One of another recipe or
    length is refused rather than read as this one (records written before they named them are read)."""
    record = exps / "result.json"
    if not record.exists():
        return None
    result = json.loads(record.read_text(encoding="utf-8"))
    recipe = Path(result.get("recipe", setup.recipe)).name  # by name: a work folder may have moved
    if result.get("epochs", setup.epochs) != setup.epochs or recipe != Path(setup.recipe).name:
        raise RuntimeError(f"{exps} holds a run of {recipe} to epoch {result.get('epochs')}, not of "
                           f"{Path(setup.recipe).name} to epoch {setup.epochs}: use another work folder")
    return result


def train_and_evaluate(conf: Path, exps: Path, setup: Setup, overrides: Sequence[str] = (),
                       resume_from: tuple[Path, int] | None = None) -> dict:
    """Train the conf to `setup.epochs` and evaluate on the test video -> {psnr, ssim, l1, seconds,
    resumed_from, epochs, recipe}. `resume_from` (train folder, epoch): continue that run's numbered
    checkpoint. An earlier attempt interrupted after a checkpoint (a time limit, a crash) is continued
    from its latest one, since resuming is exact; one without any is started afresh."""
    done = finished_result(exps, setup)
    if done is not None:
        return done
    record = exps / "result.json"
    interrupted_at = _latest_saved_epoch(exps)
    if exps.exists() and interrupted_at is None:
        shutil.rmtree(exps)
    # Every checkpoint kept as a numbered one, so that "refined" can start from the epoch it names.
    args = ["--conf", str(conf), "--nepoch", str(setup.epochs), "--no_videos", "--quiet",
            f"train.exps_folder={exps.as_posix()}", "train.numbered_save_every=1", *setup.overrides, *overrides]
    if interrupted_at is not None:
        log.info("%s: continuing the interrupted earlier run from its epoch %d", exps, interrupted_at)
        args += ["--is_continue"]
        resume_from = (exps, interrupted_at)  # recorded as where this training started
    elif resume_from is not None:
        args += ["--is_continue", "--load_path", str(resume_from[0]), "--checkpoint", str(resume_from[1])]
    start = time.perf_counter()
    _checked(_python("dynavatar.cli.exp_runner", args, cwd=conf.parent, timeout=4 * 3600, threads=setup.threads),
             f"training {exps.name}")
    seconds = time.perf_counter() - start
    found = _metrics_file(exps, setup.epochs)
    if found is None:
        raise RuntimeError(f"training {exps.name} wrote no test metrics for epoch {setup.epochs}")
    metrics = json.loads(found.read_text(encoding="utf-8"))["metrics"]["all"]
    result = {**{k: float(metrics[k]) for k in METRICS if k in metrics}, "seconds": round(seconds, 1),
              "resumed_from": resume_from[1] if resume_from else None, "epochs": setup.epochs, "recipe": setup.recipe}
    record.write_text(json.dumps(result), encoding="utf-8")
    return result


def _latest_saved_epoch(exps: Path) -> int | None:
    """The epoch of the latest checkpoint a run under `exps` completed, or None (no run, or none saved)."""
    from ..experiment import checkpoints as ckpt

    try:
        return ckpt.latest_epoch(train_folder(exps) / "checkpoints")
    except RuntimeError:  # no experiment there, or more than one
        return None


def _refine_start(work: Path, setup: Setup) -> tuple[Path, int] | None:
    """The "preprocessed" run's numbered checkpoint of epoch `refine_after`, when it is there."""
    exps = work / "runs" / "preprocessed"
    if not exps.exists() or setup.refine_after <= 0:
        return None
    try:
        folder = train_folder(exps)
    except RuntimeError:
        return None
    if not list((folder / "checkpoints").rglob(f"{setup.refine_after}.*")):
        return None
    return folder, setup.refine_after


def true_yaw_range(videos: dict) -> list[float]:
    """Smallest and largest yaw (degrees) of the generator's global head pose over all the videos: the
    turns the test video extrapolates to."""
    from scipy.spatial.transform import Rotation

    yaws = []
    for video in videos.values():
        params = json.loads((video.subject_video / "flame_params.json").read_text(encoding="utf-8"))
        poses = np.array([f["pose"][:3] for f in params["frames"]], dtype=np.float64)
        yaws += Rotation.from_rotvec(poses).as_euler("YXZ", degrees=True)[:, 0].tolist()
    return [round(min(yaws), 1), round(max(yaws), 1)]


def measure_seed(seed: int, work: Path, variants: Sequence[str], setup: Setup, train: bool = True) -> dict:
    """Each variant's test metrics for one seed (work: the seed's folder, kept), and each of its
    preprocessing runs. train=False: only the videos, datasets and confs the variants need."""
    work.mkdir(parents=True, exist_ok=True)
    videos_dir, data = work / "videos", work / "datasets"
    data.mkdir(exist_ok=True)
    start = time.perf_counter()
    videos = make_videos(videos_dir, seed, setup)
    log.info("seed %d (%s backdrop): videos in %.0f s", seed, backdrop_of(seed), time.perf_counter() - start)
    results = {"backdrop": backdrop_of(seed), "true_yaw": true_yaw_range(videos), "preprocessing": {}, "variants": {}}
    pre = None
    if set(PREPROCESSING_OF) & set(variants):
        from .tracking import TrackingOptions

        # The fitter's own expression prior, as preprocessing had it before the photometric term.
        pre = preprocess(videos_dir, data, "pre", setup, ["--silhouette_weight", "0", "--photometric_weight", "0",
                                                          "--expression_prior", str(TrackingOptions.expression_prior)])
        results["report"] = _report_summary(pre)
        results["true_focal"] = round(true_focal(videos, _crops(pre)), 4)
    for variant in (v for v in RUN_ORDER if v in variants):
        result = finished_result(work / "runs" / variant, setup)
        if result is None:  # its inputs made (or found) only when it is still to be trained
            conf, extra, resume = _variant_inputs(variant, seed, work, videos, pre, setup)
            if train:
                result = train_and_evaluate(conf, work / "runs" / variant, setup, extra, resume)
        subject = PREPROCESSING_OF.get(variant)
        if subject is not None:
            results["preprocessing"][subject] = preprocessing_record(data, subject)
        if result is None:
            continue
        log.info("seed %d %-12s test PSNR %.2f dB (%.0f s%s)", seed, variant, result["psnr"], result["seconds"],
                 f", from epoch {result['resumed_from']}" if result.get("resumed_from") else "")
        results["variants"][variant] = {**result, "preprocessing": subject}
    return results


def _variant_inputs(variant: str, seed: int, work: Path, videos: dict, pre: Path | None, setup: Setup
                    ) -> tuple[Path, list[str], tuple[Path, int] | None]:
    """(conf, overrides, resume_from) of one variant, making its dataset first when it needs one."""
    data = work / "datasets"
    if variant == "generator":
        # The generator's subject folder is <videos>/subject/synthetic; the reader resizes to `res`.
        return write_conf(work / "generator.conf", work / "videos" / "subject", "synthetic", setup.res,
                          setup.recipe), [], None
    if variant == "exact":
        exact_subject(pre, videos, data)
        return write_conf(work / "exact.conf", data, "exact", setup.res, setup.recipe), [], None
    tracked = PREPROCESSING_OF.get(variant)
    if tracked in ("silhouette", "photometric", "true_focal"):
        # The landmarks the detector found for "pre": "silhouette" is preprocessing's default tracking of
        # them, "photometric" and "true_focal" differ from it only in the photometric term's options and
        # in `--focal` (the camera's true one).
        extra = ["--landmarks", str(pre / "preprocess" / "landmarks.json")]
        if tracked == "photometric":
            extra += list(PHOTOMETRIC_VARIANT_ARGS)
        if tracked == "true_focal":
            extra += ["--focal", repr(true_focal(videos, _crops(pre)))]
        extra += setup.tracking_args
        subject = preprocess(work / "videos", data, tracked, setup, extra)
        if variant != tracked:  # exact_head, exact_face: part of that tracking replaced by the exact one
            exact_subject(subject, videos, data, variant)
        return write_conf(work / f"{variant}.conf", data, variant, setup.res, setup.recipe), [], None
    conf = write_conf(work / "pre.conf", data, "pre", setup.res, setup.recipe)
    if variant == "preprocessed":
        return conf, [], None
    resume = _refine_start(work, setup)
    if resume is None:
        log.info("seed %d refined: no checkpoint of epoch %d of 'preprocessed' to continue, training from the "
                 "start", seed, setup.refine_after)
    return conf, [f"train.optimize_inputs_after_epoch={setup.refine_after}"], resume


def _crops(subject: Path) -> dict:
    """Each video's crop as preprocessing wrote it in its report: name -> `Crop`."""
    from .crop import Crop

    report = json.loads((subject / "preprocess" / "report.json").read_text(encoding="utf-8"))
    return {name: Crop(**video["crop"]) for name, video in report["videos"].items()}


def true_focal(videos: dict, crops: dict) -> float:
    """The generator's focal length as `--focal` means it: focal / crop width for a crop of the subject's
    median crop size (`tracking.video_focals`). The videos are of one camera, so each crop's exact
    normalised focal times its size is the same focal in video pixels. The generator's camera has
    fx and fy 1-2 % apart, the tracker one focal for both: their mean."""
    from .synthetic_video import exact_tracking_in_crop

    if set(videos) != set(crops):
        raise ValueError(f"videos {sorted(videos)} and crops {sorted(crops)} differ")
    sizes = np.array([crops[name].size for name in videos], dtype=np.float64)
    in_pixels = []
    for name, video in videos.items():
        fx, fy = exact_tracking_in_crop(video, crops[name])["intrinsics"][:2]
        in_pixels.append((fy - fx) / 2.0 * crops[name].size)  # fx is negated (IMavatar's convention)
    in_pixels = np.array(in_pixels)
    if np.ptp(in_pixels) > 1e-6 * in_pixels.mean():
        raise ValueError(f"the videos' focal lengths differ ({in_pixels.round(2).tolist()} px): not one camera")
    return float(in_pixels.mean() / np.median(sizes))


def _report_summary(subject: Path) -> dict:
    """Preprocessing's own figures: reprojection error and yaw range per video, and its warnings."""
    report = json.loads((subject / "preprocess" / "report.json").read_text(encoding="utf-8"))
    videos = {name: {k: v[k] for k in ("reprojection_error_px", "yaw_deg", "mask_coverage") if k in v}
              for name, v in report["videos"].items()}
    return {"videos": videos, "warnings": report.get("warnings", [])}


def default_variants(setup: Setup) -> list[str]:
    """Every variant the recipe makes distinct: all of VARIANTS, less "refined" for a recipe that
    refines the inputs itself."""
    refines = recipe_refines_inputs(recipe_train(setup.recipe, setup.overrides), setup.epochs)
    return [v for v in VARIANTS if not (v == "refined" and refines)]


def check_variants(variants: Sequence[str], setup: Setup) -> None:
    """Known variants; "refined" only where it differs from "preprocessed" and starts within the run."""
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}: expected some of {', '.join(VARIANTS)}")
    if "refined" not in variants:
        return
    train = recipe_train(setup.recipe, setup.overrides)
    if recipe_refines_inputs(train, setup.epochs):
        raise ValueError(f"{Path(setup.recipe).name} refines the per-frame inputs after epoch "
                         f"{train.optimize_inputs_after_epoch} in every variant: 'refined' would only start it later "
                         f"than 'preprocessed' does; leave it out")
    if not 0 < setup.refine_after < setup.epochs:
        raise ValueError(f"'refined' refines after epoch {setup.refine_after}: it must lie between 1 and "
                         f"{setup.epochs - 1} for the run of {setup.epochs} epochs")


def measure(seeds: Sequence[int], work: Path, variants: Sequence[str] | None = None, setup: Setup | None = None,
            train: bool = True) -> dict:
    """{"setup": ..., "seeds": {seed: measure_seed(...)}} for every seed, in `work`/seed_<k>
    (variants None: `default_variants`)."""
    # Absolute paths: preprocessing and training run in the work folder's subfolders.
    setup = replace(setup or Setup())
    setup.recipe = str(Path(setup.recipe).resolve())
    work = Path(work).resolve()
    variants = default_variants(setup) if variants is None else list(variants)
    check_variants(variants, setup)
    out = {"setup": setup.__dict__, "seeds": {}}
    for seed in seeds:
        out["seeds"][str(seed)] = measure_seed(seed, work / f"seed_{seed}", variants, setup, train)
    return out


def spread(values) -> float:
    """Standard deviation over seeds, ddof 1 as quality_vs_time reports it (0 for a single seed)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1)) if values.size > 1 else 0.0


def _gaps(seeds: dict, have: dict, reference: str) -> tuple[float | None, float | None]:
    """Mean and standard deviation over seeds of a variant's PSNR minus the reference's (same seed)."""
    gaps = [v["psnr"] - seeds[s]["variants"][reference]["psnr"] for s, v in have.items()
            if reference in seeds[s]["variants"]]
    return (float(np.mean(gaps)), spread(gaps)) if gaps else (None, None)


def rows(results: dict) -> list[dict]:
    """One row per variant (in VARIANTS order): mean and standard deviation of the test PSNR over the
    seeds that have it, its difference to "exact" and to "generator" seed by seed, the per-seed values
    and the mean training time."""
    seeds = results["seeds"]
    out = []
    for variant in VARIANTS:
        have = {s: r["variants"][variant] for s, r in seeds.items() if variant in r["variants"]}
        if not have:
            continue
        psnr = np.array([v["psnr"] for v in have.values()])
        row = {"variant": variant, "seeds": len(have), "psnr_mean": float(psnr.mean()), "psnr_std": spread(psnr)}
        for reference in ("exact", "generator"):
            row[f"minus_{reference}_mean"], row[f"minus_{reference}_std"] = _gaps(seeds, have, reference)
        row["per_seed"] = {s: round(v["psnr"], 2) for s, v in have.items()}
        row["seconds_mean"] = float(np.mean([v["seconds"] for v in have.values()]))
        out.append(row)
    return out


def _signed(mean: float | None, std: float | None) -> str:
    return "" if mean is None else f"{mean:+.2f} ± {std:.2f}"


def table(results: dict) -> str:
    """A markdown table of `rows` (differences: the variant's PSNR minus the reference's, per seed)."""
    lines = ["| variant | seeds | test PSNR (dB), mean ± std | − exact (dB) | − generator (dB) | per seed | "
             "train s (mean) |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in rows(results):
        per_seed = ", ".join(f"{s}: {v:.2f}" for s, v in r["per_seed"].items())
        lines.append(f"| {r['variant']} | {r['seeds']} | {r['psnr_mean']:.2f} ± {r['psnr_std']:.2f} | "
                     f"{_signed(r['minus_exact_mean'], r['minus_exact_std'])} | "
                     f"{_signed(r['minus_generator_mean'], r['minus_generator_std'])} | {per_seed} | "
                     f"{r['seconds_mean']:.0f} |")
    return "\n".join(lines)


def preprocessing_table(results: dict) -> str:
    """A markdown table of every preprocessing run: seed, run, the tracking's device, the run's
    wall time and preprocess.py's own seconds per step (frames: decoding, landmarks and the cropped
    frames; tracking: both fits where the silhouette term tracks twice; masks)."""
    lines = ["| seed | run | device | wall s | frames s | tracking s | masks s |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]

    def cell(value):
        return "" if value is None else f"{value:.1f}"

    for seed, r in results["seeds"].items():
        for subject, p in r.get("preprocessing", {}).items():
            steps = p["steps"]
            lines.append(f"| {seed} | {subject} | {p['device']} | {cell(p['seconds'])} | {cell(steps.get('frames'))} | "
                         f"{cell(steps.get('tracking'))} | {cell(steps.get('masks'))} |")
    return "\n".join(lines)


def write_outputs(results: dict, json_path: Path | None, csv_path: Path | None) -> None:
    """The whole result as json; one csv line per seed and variant, with the preprocessing run of its
    dataset (the same run for the variants that share it: exact, preprocessed and refined)."""
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=1), encoding="utf-8")
    if csv_path is not None:
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["seed", "backdrop", "variant", *METRICS, "seconds", "resumed_from", "preprocessing",
                             "preprocess_seconds", "tracking_seconds", "preprocess_device"])
            for seed, r in results["seeds"].items():
                for variant, v in r["variants"].items():
                    p = r.get("preprocessing", {}).get(v.get("preprocessing"), {})
                    writer.writerow([seed, r["backdrop"], variant, *(v.get(k) for k in METRICS), v["seconds"],
                                     v.get("resumed_from"), v.get("preprocessing"), p.get("seconds"),
                                     p.get("steps", {}).get("tracking"), p.get("device")])
