"""How well tracking recovers a generated head's motion: synthetic videos with known answers
(`synthetic_video`), landmarks from the face detector (or the true ones), the crop and the FLAME fit
of preprocessing, and the fitted head pose, jaw and camera distance compared with the generator's.

The head's rotation is that of FLAME's neck joint in the world (the global rotation, then the
neck's): the face turns with it, and a fit may split one turn between the two joints differently.
The tracking camera's principal point is the crop's centre, the true one lies elsewhere in the crop;
a head seen off-axis looks turned by the angle between the two optical axes, so the true rotation is
expressed in the tracking camera's axes before it is compared (`_axis_correction`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..flame import synthetic_flame_files
from ..flame.lbs import axis_angle_to_matrix, rotation_angle_deg as rotation_angle
from ..flame.novelty import head_rotations
from .crop import Crop, square_crop
from .flame_landmarks import FlameLandmarks
from .frames import FrameSelection, iter_frames, probe_video
from .landmarks import N_LANDMARKS, read_landmark_file
from .pipeline import VideoSpec, _detect_landmarks
from .synthetic_video import SyntheticVideo, exact_tracking_in_crop, make_synthetic_videos
from .tracking import TrackingOptions, fit_flame

JAW_CONTOUR = slice(0, 17)
INNER = slice(17, N_LANDMARKS)  # brows, nose, eyes, mouth


@dataclass
class VideoAccuracy:
    """Errors of one tracked video against the generator's answers."""

    name: str
    rotation_error_deg: np.ndarray  # [N] angle between fitted and true head rotation
    true_yaw_deg: np.ndarray  # [N] true head yaw (about the world's y axis)
    fitted_yaw_deg: np.ndarray  # [N]
    jaw_true: np.ndarray  # [N] jaw opening (radians)
    jaw_fitted: np.ndarray  # [N]
    reprojection_px: np.ndarray  # [N, 68] distance of the fitted landmarks to the observed ones (NaN: none)
    landmark_error_px: np.ndarray  # [N, 68] observed landmarks against the true projected ones
    tz_true: np.ndarray  # [N]
    tz_fitted: np.ndarray  # [N]
    true_rotation: np.ndarray  # [N, 3, 3] head rotations, in the tracking camera's axes
    fitted_rotation: np.ndarray  # [N, 3, 3]


def head_rotation(pose: np.ndarray) -> np.ndarray:
    """FLAME poses [N, 15] -> the neck joint's world rotations [N, 3, 3] (global then neck)."""
    return head_rotations(torch.as_tensor(pose, dtype=torch.float64)).numpy()


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles [N] of the rotations a^T b between rotation matrices [N, 3, 3], in float64."""
    a, b = (torch.from_numpy(np.ascontiguousarray(m, dtype=np.float64)) for m in (a, b))
    return rotation_angle(a, b).numpy()


def yaw_deg(rotation: np.ndarray) -> np.ndarray:
    """The yaw [N] of rotations [N, 3, 3]: the face direction's (+z) turn about the world's y axis."""
    forward = rotation[:, :, 2]
    return np.degrees(np.arctan2(forward[:, 0], forward[:, 2]))


def _axis_correction(true_intrinsics: list[float], res: int) -> np.ndarray:
    """The rotation [3, 3] (world axes) from the true camera's axes to those of a camera with the same
    centre looking through the crop's centre pixel, as tracking assumes."""
    fx, fy, cx, cy = (float(v) for v in true_intrinsics)
    # IMavatar's world: x to the image's left when fx < 0, y up, the camera looks down -z.
    offset_x = (0.5 - cx) / -fx  # the crop centre's ray, x and y over depth, in world axes
    offset_y = -(0.5 - cy) / fy
    ray = np.array([offset_x, offset_y, -1.0])
    ray /= np.linalg.norm(ray)
    axis = np.cross(ray, [0.0, 0.0, -1.0])
    angle = np.arcsin(min(np.linalg.norm(axis), 1.0))
    if angle < 1e-12:
        return np.eye(3)
    return axis_angle_to_matrix(torch.as_tensor(axis / np.linalg.norm(axis) * angle)[None]).numpy()[0]


def _observed_landmarks(video: SyntheticVideo, landmarks: str, detector) -> tuple[np.ndarray, list[int]]:
    """[N, 70, 2] source pixels, and the source frame indices, from the detector or the true file."""
    info = probe_video(video.path)
    name = video.path.stem
    if landmarks == "true":
        indices = [index for index, _ in iter_frames(info, FrameSelection())]
        marks = read_landmark_file(video.path.parent / "landmarks.json", name, indices)
    else:
        marks = _detect_landmarks(VideoSpec(video.path, name), info, FrameSelection(), detector)
    return marks.points, marks.source_indices


@dataclass
class PreparedSubject:
    """A generated subject's videos with their observed landmarks and answers, ready to track."""

    names: list[str]
    points: list[np.ndarray]  # per video [N, 70, 2] observed landmarks in crop pixels
    truths: list[dict]  # per video the exact flame_params of the crop (`exact_tracking_in_crop`)
    model_path: Path
    landmark_path: Path
    res: int
    crops: list[Crop]  # per video, in video pixels
    video_paths: list[Path]


def prepare_subject(out_dir: Path, seed: int, head: str | None = None, backdrop: str = "textured",
                    landmarks: str = "detector", res: int = 256, frames: int = 40, detector=None
                    ) -> PreparedSubject:
    """Generate a subject's videos (a training video and an extrapolating test video, whose head
    turns and jaw reach 1.5 times the training extremes), find their landmarks (`landmarks`:
    "detector" or "true") and crops at `res` px, as preprocessing does."""
    videos = make_synthetic_videos(out_dir, res=res, frames=frames, seed=seed, videos=("train", "test"), n_test=1,
                                   head=head, test_motion="extrapolate", backdrop=backdrop)
    if head is None:
        model_path, lmk_path = synthetic_flame_files(out_dir / "flame_model")
    else:
        model_path, lmk_path = synthetic_flame_files(out_dir / "subject" / "synthetic" / "flame_model", variant=head)
    if landmarks == "detector" and detector is None:
        from .detection import FaceDetector

        detector = FaceDetector()
    points, truths, crops = [], [], []
    for video in videos.values():
        observed, _ = _observed_landmarks(video, landmarks, detector)
        crop: Crop = square_crop(observed[:, :N_LANDMARKS], *video.canvas_size, res)
        points.append(crop.points_to_crop(observed))
        truths.append(exact_tracking_in_crop(video, crop))
        crops.append(crop)
    return PreparedSubject(list(videos), points, truths, model_path, lmk_path, res, crops,
                           [v.path for v in videos.values()])


def true_masks(subject: PreparedSubject) -> list[np.ndarray]:
    """Per video the generator's true mattes in the crop [N, res, res] (head, neck and hair)."""
    from ..data.images import read_mask

    out = []
    for path, crop, points in zip(subject.video_paths, subject.crops, subject.points):
        folder = path.parent / "masks" / path.stem
        out.append(np.stack([crop.apply(read_mask(folder / f"{k + 1}.png")) for k in range(len(points))]))
    return out


def video_frames(subject: PreparedSubject) -> list[np.ndarray]:
    """Per video the decoded frames in the crop [N, res, res, 3] uint8, as tracking sees them."""
    out = []
    for path, crop, points in zip(subject.video_paths, subject.crops, subject.points):
        frames = [crop.apply(frame) for _, frame in iter_frames(probe_video(path), FrameSelection())]
        out.append(np.stack(frames[:len(points)]))
    return out


def evaluate(subject: PreparedSubject, options: TrackingOptions | None = None,
             masks: list[np.ndarray] | None = None) -> list[VideoAccuracy]:
    """Track a prepared subject's videos together with each video's true focal length (with the
    silhouette of `masks` [N, res, res] per video, where `options.silhouette_weight` > 0, and the
    photometric term of its frames where `options.photometric_weight` > 0); compare with the answers."""
    res = subject.res
    options = options or TrackingOptions()
    silhouette = masks is not None and options.silhouette_weight > 0
    frames = video_frames(subject) if options.photometric_weight > 0 else None
    mesh = options.mesh_vertices if silhouette or frames is not None else 0
    fit = fit_flame(FlameLandmarks(subject.model_path, subject.landmark_path, mesh_vertices=mesh), subject.points,
                    res, options, [float(t["intrinsics"][1]) for t in subject.truths], masks, frames)
    results = []
    for name, observed, truth, track in zip(subject.names, subject.points, subject.truths, fit.videos):
        true_pose = np.array([f["pose"] for f in truth["frames"]])
        true_t = np.array([np.asarray(f["world_mat"])[:, 3] for f in truth["frames"]])
        # flame_keypoints are pixel / res * 2 - 1 with pixel centres at integers (the generator's convention)
        true_pixels = (np.array([f["flame_keypoints"] for f in truth["frames"]])[:, :N_LANDMARKS] + 1.0) / 2.0 * res
        correction = _axis_correction(truth["intrinsics"], res)
        true_rotation = correction @ head_rotation(true_pose)
        fitted_rotation = head_rotation(track.pose)
        results.append(VideoAccuracy(
            name, rotation_angle_deg(true_rotation, fitted_rotation), yaw_deg(true_rotation), yaw_deg(fitted_rotation),
            true_pose[:, 6], track.pose[:, 6], np.linalg.norm(track.pixels - observed, axis=-1)[:, :N_LANDMARKS],
            np.linalg.norm(observed[:, :N_LANDMARKS] - true_pixels, axis=-1), true_t[:, 2], track.translation[:, 2],
            true_rotation, fitted_rotation))
    return results


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation [3, 3] nearest to a 3x3 matrix (Frobenius norm)."""
    u, _, vt = np.linalg.svd(matrix)
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def summary(results: list[VideoAccuracy]) -> dict:
    """The figures of one subject's videos together."""
    rot = np.concatenate([r.rotation_error_deg for r in results])
    true_rotation = np.concatenate([r.true_rotation for r in results])
    fitted_rotation = np.concatenate([r.fitted_rotation for r in results])
    # The error left once one constant rotation (the subject's mean error) is taken out: how well the
    # head's motion is recovered, whatever the subject's resting pose is taken to be.
    offset = nearest_rotation((fitted_rotation @ true_rotation.transpose(0, 2, 1)).mean(0))
    relative = rotation_angle_deg(offset @ true_rotation, fitted_rotation)
    lmk = np.concatenate([r.landmark_error_px for r in results])
    yaw_true = np.concatenate([r.true_yaw_deg for r in results])
    yaw_fit = np.concatenate([r.fitted_yaw_deg for r in results])
    jaw_true = np.concatenate([r.jaw_true for r in results])
    jaw_fit = np.concatenate([r.jaw_fitted for r in results])
    tz_error = np.concatenate([r.tz_fitted - r.tz_true for r in results])
    reprojection = np.concatenate([r.reprojection_px for r in results])  # [N, 68]
    return {
        "rotation_error_mean": float(rot.mean()), "rotation_error_max": float(rot.max()),
        "constant_rotation_error": float(rotation_angle_deg(offset[None], np.eye(3)[None])[0]),
        "motion_error_mean": float(relative.mean()), "motion_error_max": float(relative.max()),
        "true_yaw": [float(yaw_true.min()), float(yaw_true.max())],
        "fitted_yaw": [float(yaw_fit.min()), float(yaw_fit.max())],
        "jaw_correlation": float(np.corrcoef(jaw_true, jaw_fit)[0, 1]),
        "reprojection_px": float(np.nanmean(reprojection)),
        "reprojection_inner_px": float(np.nanmean(reprojection[:, INNER])),
        "landmark_error_px": float(np.nanmean(lmk)),
        "landmark_error_jaw_px": float(np.nanmean(lmk[:, JAW_CONTOUR])),
        "landmark_error_inner_px": float(np.nanmean(lmk[:, INNER])),
        "tz_error_mean": float(tz_error.mean()), "tz_error_max": float(np.abs(tz_error).max()),
    }


def measure(seed: int, options: TrackingOptions | None = None, **kwargs) -> dict:
    """`summary` of a subject prepared (`prepare_subject`'s keywords) in a temporary folder and tracked
    (with the silhouette of the generator's true mattes where `options.silhouette_weight` > 0)."""
    with tempfile.TemporaryDirectory(prefix="tracking-accuracy-") as tmp:
        subject = prepare_subject(Path(tmp), seed, **kwargs)
        masks = true_masks(subject) if options is not None and options.silhouette_weight > 0 else None
        return summary(evaluate(subject, options, masks))
