"""Step 4, FLAME tracking: fit the project's FLAME to every frame's landmarks.

One shape for the subject (all its videos), per frame an expression (50) and the five FLAME joint
rotations (global, neck, jaw, two eyes), and a per-frame translation in the world_mat, seen by one
camera: IMavatar's convention, `world_mat = [I | t]` (head rotation in the FLAME global pose) and
normalised intrinsics `[-f, f, 0.5, 0.5]` with the focal `f` in units of the image width.

The fit minimises, over all frames at once (batched, on the device of the model):

- the landmark reprojection error (a pseudo-Huber loss of the pixel distance at 512 px scale, so
  that a wrong landmark does not dominate), weighted by how reliably a detector places each group:
  the jaw contour beside the chin left out by default (FLAME's contour points are fixed on the mesh,
  a face-mesh detector's follow the silhouette, and with the head turned they pull the fitted turn
  by several degrees), the chin at half weight, the brows at 0.3 (where a brow lies is loosely
  defined), irises where known;
- priors: small shape and expression coefficients, a neck that stays near rest (the global rotation
  turns the head), a jaw that only opens, eyes at rest unless an iris says otherwise;
- temporal smoothness of expression, pose and translation between consecutive frames of a video,
  the head's turn (global and neck) weighted apart from the jaw and eyes, and more strongly (measured
  better on generated videos: docs/PREPROCESSING.md, Head pose).

A rigid stage (global rotation and translation) starts it, from a translation that puts the rest
head's landmarks at the observed position and size; frames without landmarks then take their head's
turn and position from their neighbours (`interpolate_missing`); then everything is fitted with Adam.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from ..cameras import PIXEL_CENTRE_OFFSET, imavatar_world_to_camera, pixel_intrinsics, pixels_to_keypoints
from ..flame.lbs import GLOBAL, JAW, NECK
from ..progress import progress
from . import photometric, silhouette
from .flame_landmarks import FlameLandmarks
from .masks import points_at
from .robust import pseudo_huber

log = logging.getLogger(__name__)

DEFAULT_FOCAL = 3.0  # fx / W of IMavatar data (about 1540 px at 512 px)
N_LANDMARKS = 68
REFERENCE_RES = 512.0  # loss weights are set for errors in pixels of a 512 px image
JAW_CONTOUR = slice(0, 17)
CHIN = slice(6, 11)  # the contour's lower part: on the front of the face at any yaw, it follows the jaw
BROWS = slice(17, 27)
SINGLE_THREAD_FRAMES = 1000


@dataclass
class TrackingOptions:
    focal: float = DEFAULT_FOCAL
    rigid_steps: int = 200
    steps: int = 1000
    learning_rate: float = 0.01
    huber_px: float = 4.0  # pseudo-Huber scale, pixels at 512 px
    contour_weight: float = 0.0  # the jaw contour beside the chin (a detector's follows the silhouette)
    chin_weight: float = 0.5
    brow_weight: float = 0.3
    iris_weight: float = 1.0
    shape_prior: float = 0.05
    expression_prior: float = 1e-3
    neck_prior: float = 10.0
    jaw_prior: float = 1e-2  # opening (x); sideways and twist get 100 times more
    eye_prior: float = 1.0
    smooth_expression: float = 1e-2
    smooth_head: float = 100.0  # the head's turn (global and neck rotations)
    smooth_pose: float = 10.0  # the jaw and the eyes
    smooth_translation: float = 10.0
    # The head's turn's change of speed over three consecutive frames (0 leaves it out): smooths
    # jitter without pulling a steady turn back toward the previous frame's pose.
    smooth_head_acceleration: float = 0.0
    # The silhouette term (`silhouette`: the projected mesh inside the mask), used where masks are
    # given; 0 leaves it out.
    silhouette_weight: float = 0.0
    # The photometric term (`photometric`: each mesh vertex keeps its colour from frame to frame),
    # used where frames are given; 0 leaves it out.
    photometric_weight: float = 0.0
    # Compare each vertex's colour with its albedo under a light fixed to the camera (its shading
    # changes as the head turns) rather than with its mean colour over the frames.
    photometric_shading: bool = False
    mesh_vertices: int = 1500  # mesh vertices the silhouette and the photometric term are measured with
    device: str = "cpu"


@dataclass
class VideoFit:
    """The tracking of one video's frames."""

    expression: np.ndarray  # [N, 50]
    pose: np.ndarray  # [N, 15]
    translation: np.ndarray  # [N, 3] world_mat translation
    pixels: np.ndarray  # [N, 70, 2] fitted landmarks and irises projected, output pixels (centres at integers)
    error_px: np.ndarray  # [N] mean landmark reprojection error per frame (NaN where no landmarks)
    iris_error_px: np.ndarray  # [N] mean iris reprojection error (NaN where no irises)
    intrinsics: list[float]  # [-f, f, 0.5, 0.5] of this video's crop

    def world_mats(self) -> np.ndarray:
        """[N, 3, 4] `[I | t]`."""
        eye = np.broadcast_to(np.eye(3), (len(self.translation), 3, 3))
        return np.concatenate([eye, self.translation[:, :, None]], axis=2)


@dataclass
class SubjectFit:
    shape: np.ndarray  # [100]
    videos: list[VideoFit] = field(default_factory=list)


def intrinsics_for(focal: float) -> list[float]:
    """IMavatar's normalised intrinsics [fx/W (negated), fy/H, cx/W, cy/H] of a centred camera."""
    return [-float(focal), float(focal), 0.5, 0.5]


def video_focals(focal: float, crop_sizes: Sequence[int]) -> list[float]:
    """Each video's normalised focal (fx / crop width) for one physical camera: `focal` is that of a
    crop of the subject's median crop size, and a crop of other size sees the same focal in source
    pixels, so its normalised focal scales inversely with its size (a video cropped wider, because
    the head came closer, has a smaller one)."""
    reference = float(np.median(crop_sizes))
    return [focal * reference / size for size in crop_sizes]


def project(points: torch.Tensor, translation: torch.Tensor, intrinsics: list[float] | torch.Tensor,
            res: int) -> torch.Tensor:
    """World points [B, L, 3] seen through world_mat [I | t] (t [B, 3]) and normalised intrinsics (one
    camera [4], or one per frame [B, 4]) -> pixels [B, L, 2] with pixel centres at integers (IMavatar's
    convention, that of `flame_keypoints`), as `dynavatar.cameras` does."""
    batch = translation.shape[0]
    world_mat = torch.cat([torch.eye(3, dtype=points.dtype, device=points.device).expand(batch, 3, 3),
                           translation[:, :, None]], dim=2)
    w2c = imavatar_world_to_camera(world_mat)  # [B, 4, 4] OpenCV axes
    cam = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
    intrinsics = torch.as_tensor(intrinsics, dtype=points.dtype, device=points.device).expand(batch, 4)
    fx, fy, cx, cy = pixel_intrinsics(intrinsics, res, res)[:, :, None].unbind(1)  # each [B, 1]
    u = fx * cam[..., 0] / cam[..., 2] + cx - PIXEL_CENTRE_OFFSET
    v = fy * cam[..., 1] / cam[..., 2] + cy - PIXEL_CENTRE_OFFSET
    return torch.stack([u, v], dim=-1)


def pixels_to_imavatar_keypoints(pixels: np.ndarray, res: int) -> np.ndarray:
    """Pixels with centres at integers [..., 2] -> `flame_keypoints` in [-1, 1]."""
    return pixels_to_keypoints(torch.as_tensor(pixels + PIXEL_CENTRE_OFFSET, dtype=torch.float64), res, res).numpy()


def interpolate_missing(values: np.ndarray, known: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """Values [N, D] of consecutive videos of `lengths` frames, with the rows where `known` [N] is False
    replaced by linear interpolation in time between the nearest known rows of the same video (the
    nearest one's value beyond the first or last); a video with no known row is left as it is."""
    out = values.copy()
    start = 0
    for length in lengths:
        part = slice(start, start + length)
        start += length
        frames = np.arange(length)
        have = known[part]
        if have.all() or not have.any():
            continue
        out[part][~have] = np.stack([np.interp(frames[~have], frames[have], column)
                                     for column in values[part][have].T], axis=1)
    return out


def _initial_translation(rest: np.ndarray, observed: np.ndarray, focal: np.ndarray, res: int) -> np.ndarray:
    """Translations [N, 3] that put the rest landmarks rest [68, 3] at the observed ones [N, 68, 2]
    seen with the normalised focal [N] of each frame (position and size; NaN frames get their nearest
    known frame's)."""
    centre = (res - 1) / 2.0  # principal point in pixels with centres at integers
    spread_model = rest[:, :2].std(axis=0).mean()
    out = np.full((len(observed), 3), np.nan)
    for k, obs in enumerate(observed):
        if not np.isfinite(obs).all():
            continue
        fpx = focal[k] * res
        distance = fpx * spread_model / max(obs.std(axis=0).mean(), 1e-6)
        mean_u, mean_v = obs.mean(axis=0)
        tx = (mean_u - centre) * distance / fpx - rest[:, 0].mean()
        ty = -(mean_v - centre) * distance / fpx - rest[:, 1].mean()
        out[k] = (tx, ty, -distance - rest[:, 2].mean())
    known = np.flatnonzero(np.isfinite(out).all(axis=1))
    for k in np.flatnonzero(~np.isfinite(out).all(axis=1)):
        out[k] = out[known[np.argmin(np.abs(known - k))]]
    return out


class _Problem:
    """The tensors of one fit: observations, weights and the free parameters."""

    def __init__(self, model: FlameLandmarks, observed: list[np.ndarray], res: int, options: TrackingOptions,
                 focals: Sequence[float], masks: list[np.ndarray] | None = None,
                 frames: Sequence[Iterable[np.ndarray]] | None = None):
        device = torch.device(options.device)
        self.model, self.res, self.options = model, res, options
        self.lengths = [len(o) for o in observed]
        self.video_intrinsics = [intrinsics_for(f) for f in focals]
        frame_focal = np.repeat(np.asarray(focals, dtype=np.float64), self.lengths)  # [N]
        self.intrinsics = torch.tensor([intrinsics_for(f) for f in frame_focal], dtype=torch.float32,
                                       device=device).reshape(-1, 4)  # [N, 4]
        obs = np.concatenate(observed).astype(np.float64)  # [N, 70, 2]
        known = np.isfinite(obs).all(axis=2)  # [N, 70]
        point_weight = np.ones(obs.shape[1])
        point_weight[JAW_CONTOUR] = options.contour_weight
        point_weight[CHIN] = options.chin_weight
        point_weight[BROWS] = options.brow_weight
        point_weight[N_LANDMARKS:] = options.iris_weight
        self.known = known  # [N, 70] bool: observed points (the reprojection error is measured on all of them)
        self.weight = torch.tensor(known * point_weight, dtype=torch.float32, device=device)  # [N, 70]
        self.observed = torch.tensor(np.nan_to_num(obs), dtype=torch.float32, device=device)
        self.n_weighted = float(max(self.weight[:, :N_LANDMARKS].gt(0).sum().item(), 1))
        # Pairs and triples of consecutive frames of one video (their first frames), for smoothness.
        starts = np.cumsum([0] + self.lengths[:-1])
        pairs = [k for s, n in zip(starts, self.lengths) for k in range(s, s + n - 1)]
        self.pairs = torch.tensor(pairs, dtype=torch.long, device=device)
        triples = [k for s, n in zip(starts, self.lengths) for k in range(s, s + n - 2)]
        self.triples = torch.tensor(triples, dtype=torch.long, device=device)
        n = obs.shape[0]
        with torch.no_grad():
            rest, _ = model(torch.zeros(model.n_shape, device=device), torch.zeros(1, model.n_exp, device=device),
                            torch.zeros(1, 15, device=device))
        translation = _initial_translation(rest[0].double().cpu().numpy(), obs[:, :N_LANDMARKS], frame_focal, res)
        zeros = lambda *s: torch.zeros(*s, device=device, requires_grad=True)  # noqa: E731
        self.shape = zeros(model.n_shape)
        self.expression = zeros(n, model.n_exp)
        self.global_rotation = zeros(n, 3)
        self.joints = zeros(n, 12)  # neck, jaw, eye, eye (axis-angle each)
        self.translation = torch.tensor(translation, dtype=torch.float32, device=device, requires_grad=True)
        self.silhouette = None
        if masks is not None and options.silhouette_weight > 0:
            # [N, res, res] each pixel's distance to the mask
            self.silhouette = torch.tensor(silhouette.outside_distance(np.concatenate(masks)), device=device)
        self.images = None
        if frames is not None and options.photometric_weight > 0:
            self.images = photometric.prepare_frames((f for video in frames for f in video), res).to(device)
            if self.images.shape[0] != n:
                raise ValueError(f"{self.images.shape[0]} frames for {n} frames of landmarks")

    @property
    def pose(self) -> torch.Tensor:
        """[N, 15] in FLAME's order: global, neck, jaw, eye, eye."""
        return torch.cat([self.global_rotation, self.joints], dim=1)

    def pixels(self) -> torch.Tensor:
        """Fitted landmarks and irises projected [N, 70, 2]."""
        landmarks, irises = self.model(self.shape, self.expression, self.pose)
        return project(torch.cat([landmarks, irises], dim=1), self.translation, self.intrinsics, self.res)

    def _data(self) -> torch.Tensor:
        """The landmark term, plus the silhouette term where there are masks and the photometric term
        where there are frames."""
        o = self.options
        scale = REFERENCE_RES / self.res
        if self.silhouette is None and self.images is None:
            pixels = self.pixels()
        else:
            landmarks, irises, mesh, normals = self.model.with_mesh(self.shape, self.expression, self.pose,
                                                                    normals=self.images is not None)
            projected = project(torch.cat([landmarks, irises, mesh], dim=1), self.translation, self.intrinsics,
                                self.res)
            pixels, mesh_pixels = projected[:, :N_LANDMARKS + 2], projected[:, N_LANDMARKS + 2:]
        distance = (pixels - self.observed).norm(dim=-1) * scale  # [N, 70] at 512 px scale
        data = (self.weight * pseudo_huber(distance, o.huber_px)).sum() / self.n_weighted
        if self.silhouette is not None:
            term = silhouette.inside_loss(self.silhouette, mesh_pixels, scale, o.huber_px)  # [N]
            data = data + o.silhouette_weight * term.mean()
        if self.images is not None:
            data = data + o.photometric_weight * self._photometric(mesh, normals, mesh_pixels)
        return data

    def _photometric(self, mesh: torch.Tensor, normals: torch.Tensor, mesh_pixels: torch.Tensor) -> torch.Tensor:
        """The photometric term of mesh vertices [N, M, 3] with normals [N, M, 3] seen at mesh_pixels [N, M, 2]."""
        with torch.no_grad():
            # world_mat is [I | t]: a vertex's offset from the camera is the vertex plus t.
            weights = photometric.visibility(normals, mesh + self.translation[:, None])  # [N, M]
            if self.silhouette is not None:  # a vertex outside the mask would sample the backdrop
                weights = weights * (silhouette.sample_image(self.silhouette, mesh_pixels) < 0.5)
        size = self.images.shape[-1]
        colours = silhouette.sample_channels(self.images, points_at(mesh_pixels, self.res, size))
        return photometric.consistency_loss(colours, weights, normals if self.options.photometric_shading else None)

    def loss(self) -> torch.Tensor:
        o = self.options
        data = self._data()
        n = self.expression.shape[0]
        pose = self.pose
        eye_slices = self.model.iris_pose_slices
        prior = (o.shape_prior * self.shape.square().sum()
                 + (o.expression_prior * self.expression.square().sum()
                    + o.neck_prior * pose[:, NECK].square().sum()
                    + o.jaw_prior * pose[:, JAW.start].square().sum()
                    + 100 * o.jaw_prior * pose[:, JAW.start + 1:JAW.stop].square().sum()
                    + o.jaw_prior * torch.relu(-pose[:, JAW.start]).square().sum() * 100
                    + o.eye_prior * sum(pose[:, s].square().sum() for s in eye_slices)) / n)
        loss = data + prior
        if len(self.pairs):
            a, b = self.pairs, self.pairs + 1
            step = (pose[b] - pose[a]).square()  # [pairs, 15]
            loss = loss + (o.smooth_expression * (self.expression[b] - self.expression[a]).square().sum()
                           + o.smooth_head * step[:, GLOBAL.start:NECK.stop].sum()
                           + o.smooth_pose * step[:, NECK.stop:].sum()
                           + o.smooth_translation * (self.translation[b] - self.translation[a]).square().sum()
                           ) / len(self.pairs)
        if o.smooth_head_acceleration > 0 and len(self.triples):
            head = pose[:, GLOBAL.start:NECK.stop]
            t = self.triples
            loss = loss + (o.smooth_head_acceleration * (head[t + 2] - 2 * head[t + 1] + head[t]).square().sum()
                           / len(self.triples))
        return loss


def _run_adam(problem: _Problem, params: list[torch.Tensor], steps: int, lr: float, desc: str) -> float:
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
                                                 * 0.99 + 0.01)
    value = float("nan")
    for _ in progress(range(steps), desc=desc, unit="step", leave=False):
        optimizer.zero_grad(set_to_none=True)
        loss = problem.loss()
        loss.backward()
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
    return value


@contextmanager
def _cpu_threads(device: str, frames: int):
    """On the CPU, fit a few hundred frames on one thread: the tensors are small, and torch's thread
    pool then costs more than it gains (tens of times more on a busy machine)."""
    previous = torch.get_num_threads()
    if torch.device(device).type == "cpu" and frames < SINGLE_THREAD_FRAMES:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit_flame(model: FlameLandmarks, observed: list[np.ndarray], res: int,
              options: TrackingOptions | None = None, focals: Sequence[float] | None = None,
              masks: list[np.ndarray] | None = None, frames: Sequence[Iterable[np.ndarray]] | None = None
              ) -> SubjectFit:
    """Fit FLAME to the landmarks of a subject's videos.

    observed: per video, landmarks [N_v, 70, 2] in output pixels (centres at integers; 68 iBUG points
    then the two irises, NaN where unknown). focals: per video, the normalised focal of its crop
    (`video_focals`; default `options.focal` for all). masks: per video, foreground masks [N_v, res, res]
    in [0, 1] for the silhouette term (used when `options.silhouette_weight` > 0; the model must then
    evaluate mesh vertices, `FlameLandmarks(mesh_vertices=...)`). frames: per video, the crops
    [N_v, res, res, 3] uint8 for the photometric term (used when `options.photometric_weight` > 0;
    mesh vertices as for masks; any iterable of [res, res, 3] frames per video, read once). Returns
    the shape and per-video fits.
    """
    options = options or TrackingOptions()
    focals = [options.focal] * len(observed) if focals is None else list(focals)
    if len(focals) != len(observed):
        raise ValueError(f"{len(focals)} focals for {len(observed)} videos")
    with _cpu_threads(options.device, sum(len(o) for o in observed)):
        return _fit(model, observed, res, options, focals, masks, frames)


def _fit(model: FlameLandmarks, observed: list[np.ndarray], res: int, options: TrackingOptions,
         focals: list[float], masks: list[np.ndarray] | None, frames: Sequence[Iterable[np.ndarray]] | None
         ) -> SubjectFit:
    model = model.to(torch.device(options.device))
    problem = _Problem(model, observed, res, options, focals, masks, frames)
    _run_adam(problem, [problem.global_rotation, problem.translation], options.rigid_steps,
              options.learning_rate, "tracking (rigid)")
    # A frame where the detector found no face has no landmark to turn it: started at rest, the
    # silhouette and photometric terms can hold it in a wrong turn that the smoothness alone does not
    # undo. It starts from its neighbours' fitted head instead.
    seen = problem.known[:, :N_LANDMARKS].any(axis=1)  # [N]
    if not seen.all():
        with torch.no_grad():
            for param in (problem.global_rotation, problem.translation):
                filled = interpolate_missing(param.detach().cpu().numpy().astype(np.float64), seen, problem.lengths)
                param.copy_(torch.as_tensor(filled, dtype=param.dtype, device=param.device))
    final = _run_adam(problem, [problem.shape, problem.expression, problem.global_rotation, problem.joints,
                                problem.translation], options.steps, options.learning_rate, "tracking")
    log.info("tracking: final loss %.4f", final)
    with torch.no_grad():
        pixels = problem.pixels().double().cpu().numpy()
    obs = problem.observed.double().cpu().numpy()
    known = problem.known
    distance = np.linalg.norm(pixels - obs, axis=-1)  # [N, 70]
    fit = SubjectFit(problem.shape.detach().cpu().numpy().astype(np.float64))
    start = 0
    for length, intrinsics in zip(problem.lengths, problem.video_intrinsics):
        part = slice(start, start + length)
        start += length
        lmk_known = known[part, :N_LANDMARKS].all(axis=1)
        iris_known = known[part, N_LANDMARKS:].all(axis=1)
        error = np.where(lmk_known, distance[part, :N_LANDMARKS].mean(axis=1), np.nan)
        iris_error = np.where(iris_known, distance[part, N_LANDMARKS:].mean(axis=1), np.nan)
        fit.videos.append(VideoFit(problem.expression[part].detach().cpu().numpy().astype(np.float64),
                                   problem.pose[part].detach().cpu().numpy().astype(np.float64),
                                   problem.translation[part].detach().cpu().numpy().astype(np.float64),
                                   pixels[part], error, iris_error, intrinsics))
    return fit
