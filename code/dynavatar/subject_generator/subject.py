"""Synthetic subjects in the exact IMavatar layout, rendered with the independent mesh renderer.

`generate_subject` animates a FLAME head (the synthetic FLAME-format model by default, or a real
FLAME 2020 file) with smooth talking-like sequences, renders images, soft masks and semantic maps
through the same camera the reader builds, and writes `flame_params.json` with the true parameters
and the projected 68 landmarks. Two training videos and one test video, as confs/subject1.conf names.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..cameras import imavatar_camera, pixels_to_keypoints
from ..config import Conf
from ..errors import DatasetError
from ..files import waiting_lock
from ..progress import progress
from ..runtime import resolve_device
from ..flame import FLAME, synthetic_flame_files
from ..flame.synthetic_head import HeadVariant, head_variant
from .appearance import Appearance
from .face_regions import INNER_LIP, N_LABELS, face_regions, vertex_regions
from ..data.images import write_labels, write_mask, write_rgb
from ..flame.mesh import outward_winding
from .mesh_renderer import render_mesh
from .motion import JAW, TEST_MOTIONS, Motion, subject_motions

log = logging.getLogger(__name__)
SYNTHETIC_MARKER = ".dynavatar-synthetic"  # only folders holding it are ever regenerated or replaced
# The marker records what the subject was generated with (json), so that a conf asking for other
# settings gets them (`ensure_synthetic_subject`) instead of silently reusing the old subject.
GENERATION_KEYS = ("res", "frames", "seed", "test_motion")
# Markers written before test motions had kinds stand for near subjects.
GENERATION_DEFAULTS = {"test_motion": "near"}

DEFAULT_TRAIN_VIDEOS = ("MVI_1810", "MVI_1814")
DEFAULT_TEST_VIDEOS = ("MVI_1812",)
JSON_NAME = "flame_params.json"
CAMERA_DISTANCE = 4.0  # world_mat translation z is -4 (FLAME-times-4 units), as in IMavatar data
HEAD_MODEL_DIR = "flame_model"  # <subject folder>/flame_model/: the head-model files of a non-default head variant
OPEN_JAW = 0.35  # jaw opening (radians) used to find the mouth interior


@dataclass
class _Subject:
    """Everything that stays the same over a subject's videos."""

    flame: FLAME
    faces: torch.Tensor  # [F, 3]
    face_labels: torch.Tensor  # [F]
    appearance: Appearance
    winding: torch.Tensor  # [F] outward sign per face
    intrinsics: list[float]  # normalised, fx negated
    base_translation: np.ndarray  # [3]
    background: torch.Tensor  # [H, W, 3]
    shape_params: torch.Tensor  # [100]

    def to(self, device: torch.device) -> "_Subject":
        """The subject with its rendering tensors on `device` (the parameters written to json stay)."""
        return _Subject(self.flame.to(device), self.faces.to(device), self.face_labels.to(device),
                        self.appearance.to(device), self.winding.to(device), self.intrinsics,
                        self.base_translation, self.background.to(device), self.shape_params)


def default_supersample(res: int) -> int:
    """Samples per pixel side: 4 up to 256 px (soft 17-level mask edges), 2 above (memory and time)."""
    return 4 if res <= 256 else 2


def _background(res: int, rng: np.random.Generator) -> torch.Tensor:
    """A static, smoothly varying backdrop [H, W, 3] (so that compositing on white matters)."""
    v, u = np.meshgrid(np.linspace(0, 1, res), np.linspace(0, 1, res), indexing="ij")
    base = rng.uniform(0.35, 0.7, 3)
    tilt = rng.uniform(-0.15, 0.15, 3)
    img = base[None, None] + tilt[None, None] * (v[..., None] - 0.5) + 0.05 * np.sin(3 * u + 2 * v)[..., None]
    return torch.tensor(np.clip(img, 0, 1), dtype=torch.float32)


def _build_subject(flame_model_path: Path, landmark_path: Path, res: int, seed: int, framing: float = 1.0) -> _Subject:
    """`framing`: the head's size relative to the default synthetic head; the camera stands that
    much farther, so that every head fills the image alike (as a tracker's translation would)."""
    rng = np.random.default_rng([seed, 1])
    shape_params = torch.tensor(rng.normal(0.0, 1.0, 100) * np.where(np.arange(100) < 10, 0.8, 0.3),
                                dtype=torch.float32)
    flame = FLAME(flame_model_path, landmark_path, shape_params=shape_params)
    with torch.no_grad():
        zero_exp = torch.zeros(1, flame.n_exp)
        canonical = flame(zero_exp, torch.zeros(1, 15))
        open_pose = torch.zeros(1, 15)
        open_pose[0, JAW] = OPEN_JAW
        opened = flame(zero_exp, open_pose)
    vertices = canonical.vertices[0].numpy()
    landmarks = canonical.landmarks[0].numpy()
    faces = flame.faces.numpy()
    weights = flame.lbs_weights.numpy()
    face_labels = face_regions(vertices, faces, landmarks, weights, opened.vertices[0].numpy(),
                               opened.landmarks[0].numpy())
    vertex_labels = vertex_regions(vertices, landmarks, weights)
    appearance = Appearance(vertices, faces, vertex_labels, face_labels, seed)
    focal = rng.uniform(2.8, 3.2)
    intrinsics = [-focal, focal * rng.uniform(0.98, 1.02), 0.5 + rng.uniform(-0.01, 0.01),
                  0.5 + rng.uniform(-0.01, 0.01)]
    # Frame the head: the midpoint of crown and chin at the image centre (world y up; camera looks down -z).
    mid_y = 0.5 * (vertices[:, 1].max() + landmarks[8, 1])
    base_translation = np.array([0.0, -mid_y, -CAMERA_DISTANCE * framing])
    return _Subject(flame, flame.faces, torch.as_tensor(face_labels), appearance,
                    outward_winding(torch.as_tensor(vertices), flame.faces), intrinsics, base_translation,
                    _background(res, rng), shape_params)


def _mouth_polygon(pixels: torch.Tensor, grow: float = 1.15) -> torch.Tensor:
    """The inner lip contour [8, 2] of projected landmarks, grown a little about its centre (the lips'
    inner edge lies on it, the cavity seen through it)."""
    contour = pixels[INNER_LIP]
    centre = contour.mean(0)
    return centre + grow * (contour - centre)


def _world_mat(translation: torch.Tensor) -> torch.Tensor:
    """[I | t] world-to-camera [3, 4] (head rotation lives in the FLAME global pose, as in IMavatar data)."""
    return torch.cat([torch.eye(3), translation.reshape(3, 1)], dim=1)


def _render_video(subject: _Subject, video_dir: Path, motion: Motion, res: int, supersample: int, bar: tqdm
                  ) -> None:
    """Render one video of `motion` into video_dir/{image,mask,semantic} and write its flame_params.json."""
    for folder in ("image", "mask", "semantic"):
        (video_dir / folder).mkdir(parents=True, exist_ok=True)
    n_frames = len(motion.expressions)
    device = subject.background.device
    with torch.no_grad():
        out = subject.flame(motion.expressions.to(device), motion.poses.to(device))
    frames = []
    for k in range(n_frames):
        world_mat = _world_mat(motion.translations[k])
        camera = imavatar_camera(world_mat.to(device), subject.intrinsics, res, res)
        with torch.no_grad():
            pixels, _ = camera.project(out.landmarks[k])  # [68, 2] rasterizer convention
            look = subject.appearance.for_frame(_mouth_polygon(pixels) * supersample)
            image = render_mesh(camera, out.vertices[k], subject.faces, look.shade, look.labels,
                                background=subject.background, supersample=supersample, n_labels=N_LABELS,
                                winding=subject.winding)
        keypoints = pixels_to_keypoints(pixels, res, res)  # IMavatar convention, [-1, 1]
        name = str(k + 1)  # frames are numbered from 1 (ffmpeg %d.png)
        write_rgb(video_dir / "image" / f"{name}.png", image.rgb.cpu().numpy())
        write_mask(video_dir / "mask" / f"{name}.png", image.alpha.cpu().numpy())
        write_labels(video_dir / "semantic" / f"{name}.png", image.labels.cpu().numpy())
        frames.append({
            "file_path": f"./image/{name}",
            "world_mat": world_mat.tolist(),
            "expression": motion.expressions[k].tolist(),
            "pose": motion.poses[k].tolist(),
            "bbox": [*keypoints.min(0).values.tolist(), *keypoints.max(0).values.tolist()],
            "flame_keypoints": keypoints.tolist(),
        })
        bar.update(1)
    params = {"frames": frames, "intrinsics": subject.intrinsics, "shape_params": subject.shape_params.tolist()}
    with open(video_dir / JSON_NAME, "w", encoding="utf-8") as handle:
        json.dump(params, handle)


def _flame_files(flame_model_path: str | Path | None, landmark_path: str | Path | None, cache: Path,
                 head: HeadVariant) -> tuple[Path, Path]:
    """The FLAME model and landmark files: given ones, or the synthetic model of the `head` variant
    (seed 0: for the default variant the one the training code's `flame_model_path = synthetic`
    builds) written to `cache`."""
    if flame_model_path is None or str(flame_model_path) == "synthetic":
        return synthetic_flame_files(cache, variant=head)
    model = Path(flame_model_path)
    if model.is_dir():
        model = model / "generic_model.pkl"
    landmarks = Path(landmark_path) if landmark_path is not None else model.parent / "landmark_embedding.npy"
    return model, landmarks


@contextmanager
def _single_thread():
    """Run torch on one thread: per-frame tensors are small, and on a busy machine torch's thread
    pool spins against other processes (measured 15x slower with 2 threads on 2 loaded cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_subject_name(subject: str) -> None:
    if subject in ("", ".", "..") or Path(subject).name != subject or "\\" in subject:
        raise DatasetError(f"subject name {subject!r} must be one folder name, without '/' (dataset.subject_name)")


def generate_subject(out_dir: str | Path, subject: str, res: int = 512, frames: int = 30, seed: int = 0,
                     flame_model_path: str | Path | None = None, train_videos: Sequence[str] = DEFAULT_TRAIN_VIDEOS,
                     test_videos: Sequence[str] = DEFAULT_TEST_VIDEOS, landmark_path: str | Path | None = None,
                     supersample: int | None = None, overwrite: bool = False, test_motion: str = "near",
                     head: str | HeadVariant | None = None, device: str | torch.device = "cpu") -> Path:
    """Write a synthetic subject to `out_dir/subject/subject/<video>/` and return `out_dir/subject`.

    flame_model_path: None or "synthetic" for the synthetic FLAME-format head, else a FLAME 2020
    `generic_model.pkl` (or its folder), with `landmark_path` (default: landmark_embedding.npy beside it).
    head: a variant of the synthetic head (`flame.synthetic_head.head_variant`: "dense", "flame",
    "large,scale=1.5", ...; None = the default head). A non-default head's model files are written
    to `out_dir/subject/flame_model/`, for `model.flame_model_path` / `model.flame_landmark_path`.
    The subject is built in a temporary folder and moved into place at the end, so an interrupted run
    leaves nothing that looks like a dataset. Deterministic for a seed.
    test_motion: the kind of the test videos (motion.TEST_MOTIONS): "near" (unseen combinations, a
    bit beyond the training amplitudes), "extrapolate" or "expressions" (see motion.py; the training
    videos of both never show the pairs of expressions that their test videos combine).
    device: where the frames are rendered. A GPU renders a 512-pixel subject many times faster than
    a CPU thread; its images can differ from the CPU's by rounding (deterministic on each).
    """
    if test_motion not in TEST_MOTIONS:
        raise DatasetError(f"test_motion {test_motion!r}: expected one of {', '.join(TEST_MOTIONS)}")
    if frames < 1 or res < 8:
        raise DatasetError(f"a synthetic subject needs frames >= 1 and res >= 8, got frames={frames}, res={res}")
    try:
        variant = head_variant(head)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    custom_head = variant != head_variant(None)
    if custom_head and flame_model_path is not None and str(flame_model_path) != "synthetic":
        raise DatasetError(f"a head variant ({variant.name}) is a synthetic head: give either it or a FLAME model "
                           f"file ({flame_model_path}), not both")
    videos = [(str(v), False) for v in train_videos] + [(str(v), True) for v in test_videos]
    if len({name for name, _ in videos}) != len(videos):
        raise DatasetError(f"video names must be distinct, got {[name for name, _ in videos]}")
    _check_subject_name(subject)
    out_dir = Path(out_dir)
    target = out_dir / subject
    if target.exists() and not overwrite:
        raise DatasetError(f"{target} already exists; remove it or pass overwrite=True (--overwrite)")
    if target.exists() and not (target / SYNTHETIC_MARKER).is_file():
        raise DatasetError(f"{target} exists and was not written by the synthetic generator: it is never "
                           f"replaced (choose another subject name or remove the folder yourself)")
    supersample = supersample or default_supersample(res)
    place = target.resolve() if target.is_symlink() else target  # a linked subject is written where the link points
    place.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix=f".{subject}-", dir=place.parent) as tmp, _single_thread():
        tmp = Path(tmp)
        staging = tmp / subject
        cache = staging / HEAD_MODEL_DIR if custom_head else tmp / "flame"
        model_path, lmk_path = _flame_files(flame_model_path, landmark_path, cache, variant)
        built = _build_subject(model_path, lmk_path, res, seed, variant.height_factor).to(torch.device(device))
        with progress(total=frames * len(videos), desc=f"rendering {subject}", unit="frame") as bar:
            motions = subject_motions(test_motion, frames, seed, built.base_translation, len(train_videos),
                                      len(test_videos))
            for (name, _), motion in zip(videos, motions):
                _render_video(built, staging / subject / name, motion, res, supersample, bar)
        settings = {"res": res, "frames": frames, "seed": seed, "test_motion": test_motion,
                    "flame_model": str(flame_model_path or "synthetic")}
        if custom_head:
            settings["head"] = variant.name
        (staging / SYNTHETIC_MARKER).write_text(json.dumps({"written_by": "dynavatar's synthetic subject generator",
                                                            **settings}) + "\n")
        if place.exists():
            shutil.rmtree(place)
        staging.rename(place)
    log.info("wrote synthetic subject %s (%d videos x %d frames, %d px) to %s", subject, len(videos), frames, res,
             target)
    if custom_head:
        log.info("its head model (%s): model.flame_model_path=%s model.flame_landmark_path=%s", variant.name,
                 target / HEAD_MODEL_DIR / model_path.name, target / HEAD_MODEL_DIR / lmk_path.name)
    return target


def _recorded_settings(target: Path) -> dict:
    """What the marker of a generated subject records ({} without a readable marker)."""
    try:
        recorded = json.loads((target / SYNTHETIC_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _changed_settings(target: Path, wanted: dict) -> dict:
    """{key: (generated with, wanted)} for the settings of a generated subject that differ from `wanted`
    (none for a folder without a marker, or one written before markers recorded them)."""
    recorded = {**GENERATION_DEFAULTS, **_recorded_settings(target)}
    return {k: (recorded[k], wanted[k]) for k in GENERATION_KEYS if k in recorded and recorded[k] != wanted[k]}


def ensure_synthetic_subject(conf: Conf) -> Path | None:
    """With `dataset.synthetic = true`, generate the conf's subject on first use; return its folder
    (`<data_folder>/<subject>`), or None when the conf names a real dataset.

    Reads dataset.data_folder / subject_name / json_name / synthetic_frames / synthetic_seed /
    synthetic_test_motion, the
    train and test sub_dirs, the train img_res (square images of its larger side) and
    model.flame_model_path ("synthetic" = the synthetic FLAME-format head, the same seed-0 model the
    training code builds). A synthetic subject (one holding the generator's marker file) that lacks
    one of the conf's videos, or was generated with another image size, frame count, seed or test
    motion, is generated again (it is deterministic), with a warning; any other existing folder is
    never touched. A subject of a head variant whose model the conf names in the subject's
    `flame_model/` is generated again with that variant.
    """
    data = conf.dataset
    if not data.synthetic:
        return None
    _check_subject_name(data.subject_name)  # before the lock file beside it is made
    target = Path(data.data_folder) / data.subject_name
    if _up_to_date(conf, target):
        return target
    # Runs started at once on one subject (a seed sweep of two recipes) would otherwise each generate
    # it, and the later one replace the folder while the earlier one reads it.
    with waiting_lock(target.parent / f".{target.name}.generating",
                      f"synthetic subject {target}: another process is generating it; waiting"):
        if _up_to_date(conf, target):  # generated by the process this one waited for
            return target
        return _generate_for_conf(conf, target)


def _wanted_settings(conf: Conf) -> dict:
    data = conf.dataset
    return {"res": max(data.train.img_res), "frames": data.synthetic_frames, "seed": data.synthetic_seed,
            "test_motion": data.synthetic_test_motion}


def _missing_videos(conf: Conf, target: Path) -> list[str]:
    data = conf.dataset
    videos = list(data.train.sub_dir) + list(data.test.sub_dir)
    return [v for v in videos if not (target / data.subject_name / v / data.json_name).is_file()]


def _up_to_date(conf: Conf, target: Path) -> bool:
    return not _missing_videos(conf, target) and not _changed_settings(target, _wanted_settings(conf))


def _generate_for_conf(conf: Conf, target: Path) -> Path:
    """Generate (or generate again, saying why) the conf's synthetic subject into `target`."""
    data = conf.dataset
    subject = data.subject_name
    train_videos, test_videos = list(data.train.sub_dir), list(data.test.sub_dir)
    height, width = data.train.img_res
    model_path = conf.model.flame_model_path
    missing = _missing_videos(conf, target)
    changed = _changed_settings(target, _wanted_settings(conf))
    if missing and target.exists():
        log.warning("synthetic subject %s lacks video(s) %s: generating it again", target, missing)
    if changed and not missing:
        log.warning("synthetic subject %s was generated with %s; the conf asks for %s: generating it again",
                    target, ", ".join(f"{k}={old!r}" for k, (old, _) in changed.items()),
                    ", ".join(f"{k}={new!r}" for k, (_, new) in changed.items()))
    if height != width:
        log.warning("synthetic subjects are square: generating %d px images, the reader resizes them to %dx%d",
                    max(height, width), height, width)
    landmark_path = None if model_path == "synthetic" else conf.model.flame_landmark_path
    head = _recorded_settings(target).get("head")
    if head is not None and Path(model_path).resolve().parent == (target / HEAD_MODEL_DIR).resolve():
        # The conf trains with the head variant that the subject's folder holds: it is written again
        # with the subject (never read from the folder being replaced).
        model_path = landmark_path = None
    else:
        head = None
    log.info("dataset.synthetic: generating subject %s into %s (first use)", subject, target.parent)
    return generate_subject(target.parent, subject, res=max(height, width),
                            frames=data.synthetic_frames, seed=data.synthetic_seed, flame_model_path=model_path,
                            train_videos=train_videos, test_videos=test_videos, landmark_path=landmark_path,
                            overwrite=True, test_motion=data.synthetic_test_motion, head=head,
                            device=resolve_device(conf.train.device))
