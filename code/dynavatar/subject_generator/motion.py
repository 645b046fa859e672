"""Smooth talking-like FLAME parameter sequences for synthetic videos.

Every curve is a sum of a few sinusoids with random frequencies and phases (smooth from frame to
frame); the jaw follows a syllable rhythm. Test videos come in three kinds (`subject_motions`):

- near (the default): other combinations and somewhat larger amplitudes of the same components,
  so the test expressions are unseen but within reach of a model;
- extrapolate: beyond what training shows. The subject's training videos drive the expression
  pairs of NEVER_TOGETHER in alternation (never both at once); its test videos drive each pair
  together, the leading expression components, head pitch and yaw and the jaw to EXTRAPOLATION
  times the training videos' extremes;
- expressions: the expressions of extrapolate (training videos alike), with the head, jaw and eyes
  of a near test video held within the training magnitudes (|pitch|, |yaw| and the jaw's opening,
  each axis alone): new expressions, with head views that can still be new (a turn to the other
  side, a turn and a tilt together).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config.schema import SYNTHETIC_TEST_MOTIONS as TEST_MOTIONS
from ..errors import DatasetError

N_EXPRESSION, N_POSE = 50, 15
FPS = 25.0
JAW = 6  # pose[6:9] is the jaw's axis-angle, pose[6] opens the mouth
HEAD = (0, 1)  # pose[0] head pitch, pose[1] head yaw (radians)
TEST_AMPLITUDE = 1.25  # near test expressions reach a bit beyond the training amplitudes
EXTRAPOLATION = 1.5  # an extrapolating test reaches this multiple of the training extremes
LEADING = tuple(range(1, 10))  # the leading components after 0 (mouth open, which follows the jaw)
# Pairs of components that an extrapolating subject never shows together in training and together
# in its test (in the synthetic head: smile and brow raise, brow furrow and pucker, cheek puff and
# upper-lip raise).
NEVER_TOGETHER = ((1, 2), (3, 4), (5, 6))


@dataclass
class Motion:
    expressions: torch.Tensor  # [N, 50]
    poses: torch.Tensor  # [N, 15] global, neck, jaw, left eye, right eye
    translations: torch.Tensor  # [N, 3] world_mat translation

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.expressions.double().numpy(), self.poses.double().numpy(), self.translations.double().numpy()


def _motion(expressions: np.ndarray, poses: np.ndarray, translations: np.ndarray) -> Motion:
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return Motion(f32(expressions), f32(poses), f32(translations))


def _curves(rng: np.random.Generator, t: np.ndarray, count: int, f_lo: float, f_hi: float, waves: int = 2
            ) -> np.ndarray:
    """`count` smooth curves over times t [N] -> [N, count], each of RMS about 1/sqrt(2)."""
    freq = rng.uniform(f_lo, f_hi, (waves, count))
    phase = rng.uniform(0, 2 * np.pi, (waves, count))
    weight = rng.uniform(0.5, 1.0, (waves, count))
    weight /= np.sqrt((weight ** 2).sum(0, keepdims=True))
    return (weight[None] * np.sin(2 * np.pi * freq[None] * t[:, None, None] + phase[None])).sum(1)


def _mouth_open(jaw: np.ndarray) -> np.ndarray:
    """What the mouth-open expression component gains from the jaw's opening [N] (it follows the jaw)."""
    return 1.2 * (jaw - 0.08) / 0.08


def video_motion(n_frames: int, rng: np.random.Generator, base_translation: np.ndarray, test: bool = False
                 ) -> Motion:
    """FLAME expressions, poses and camera translations of one synthetic video of `n_frames` frames
    (a near test video with `test`)."""
    t = np.arange(n_frames) / FPS
    span = max(n_frames / FPS, 1e-3)
    slow = (max(0.15, 0.5 / span), max(0.5, 1.5 / span))  # at least half a cycle per video
    fast = (max(0.6, 1.0 / span), max(1.6, 3.0 / span))

    # Expressions: large leading components, decaying amplitude (as tracked FLAME expressions do).
    amplitude = 1.6 / (1.0 + np.arange(N_EXPRESSION) / 4.0)
    mean = rng.normal(0.0, 0.25, N_EXPRESSION) * amplitude
    if test:
        amplitude = amplitude * TEST_AMPLITUDE
    expressions = mean + amplitude * np.sqrt(2) * _curves(rng, t, N_EXPRESSION, *fast)

    poses = np.zeros((n_frames, N_POSE))
    head = _curves(rng, t, 3, *slow)
    poses[:, 0:3] = head * np.array([0.12, 0.28, 0.07])  # global: pitch, yaw, roll (radians)
    poses[:, 3:6] = _curves(rng, t, 3, *slow) * np.array([0.06, 0.08, 0.03])  # neck
    syllables = _curves(rng, t, 1, fast[0] * 2.0, fast[1] * 2.0, waves=2)[:, 0]
    poses[:, JAW] = 0.02 + 0.16 * np.clip(0.5 + 0.7 * syllables, 0.0, 1.0) ** 1.5  # opens, never closes past 0
    expressions[:, 0] += _mouth_open(poses[:, JAW])
    gaze = _curves(rng, t, 2, *slow) * np.array([0.10, 0.15])
    poses[:, 9:11] = gaze  # left eye (pitch, yaw)
    poses[:, 12:14] = gaze  # right eye looks the same way

    translations = base_translation[None] + _curves(rng, t, 3, *slow) * np.array([0.015, 0.015, 0.04])
    return _motion(expressions, poses, translations)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    s = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def _alternating(motion: Motion, rng: np.random.Generator) -> Motion:
    """A training video whose NEVER_TOGETHER pairs alternate: a slow wave (at least one cycle per
    video) lets the first components of the pairs move in its positive half and the second ones in
    its negative half, with a rest about its zeros; a component at rest is exactly 0 (neutral)."""
    expressions, poses, translations = motion.arrays()
    n_frames = len(expressions)
    span = max(n_frames / FPS, 1e-3)
    wave = np.sin(2 * np.pi * rng.uniform(max(0.25, 1.0 / span), max(0.6, 2.0 / span)) * np.arange(n_frames) / FPS
                  + rng.uniform(0, 2 * np.pi))
    first, second = (list(group) for group in zip(*NEVER_TOGETHER))
    expressions[:, first] *= _smoothstep(wave, 0.15, 0.6)[:, None]
    expressions[:, second] *= _smoothstep(-wave, 0.15, 0.6)[:, None]
    return _motion(expressions, poses, translations)


def _scaled(curve: np.ndarray, peak: float) -> np.ndarray:
    """`curve` [N] scaled so that its largest magnitude is `peak`."""
    return curve * (peak / max(float(np.abs(curve).max()), 1e-12))


def _extrapolated(motion: Motion, train: list[Motion], views_beyond: bool = True) -> Motion:
    """A near test video taken beyond the training videos `train`: each leading component scaled to
    EXTRAPOLATION times its largest training magnitude and each NEVER_TOGETHER pair on one shared
    curve, so that both reach their extremes in the same frame. With `views_beyond`, head pitch and
    yaw are scaled to that multiple of their largest training magnitudes and the jaw opening to that
    multiple of its widest training opening; without, they keep the near video's curves, scaled down
    where those reach beyond the training extremes (a near video's random turns can)."""
    expressions, poses, translations = motion.arrays()
    train_expressions = np.concatenate([m.arrays()[0] for m in train])
    train_poses = np.concatenate([m.arrays()[1] for m in train])
    peak = EXTRAPOLATION * np.abs(train_expressions).max(0)  # [50]
    shared = {b: a for a, b in NEVER_TOGETHER}  # second of a pair -> first
    near = expressions.copy()
    for k in LEADING:
        expressions[:, k] = _scaled(near[:, shared.get(k, k)], peak[k])
    reach = EXTRAPOLATION if views_beyond else 1.0
    for axis in HEAD:
        extreme = reach * np.abs(train_poses[:, axis]).max()
        if views_beyond or np.abs(poses[:, axis]).max() > extreme:
            poses[:, axis] = _scaled(poses[:, axis], extreme)
    jaw = poses[:, JAW]
    widest = reach * train_poses[:, JAW].max()
    if views_beyond or jaw.max() > widest:
        opened = jaw.min() + _scaled(jaw - jaw.min(), widest - jaw.min())
        expressions[:, 0] += _mouth_open(opened) - _mouth_open(jaw)
        poses[:, JAW] = opened
    return _motion(expressions, poses, translations)


def subject_motions(kind: str, n_frames: int, seed: int, base_translation: np.ndarray, n_train: int, n_test: int
                    ) -> list[Motion]:
    """The motions of a subject's `n_train` training videos, then of its `n_test` test videos, of
    `n_frames` frames each; test videos of `kind` (TEST_MOTIONS). Video i draws from the generator
    seeded [seed, 100 + i], so a near subject is the one generated before test kinds existed."""
    if kind not in TEST_MOTIONS:
        raise DatasetError(f"unknown test motion {kind!r}: expected one of {', '.join(TEST_MOTIONS)}")
    if kind != "near" and n_test and not n_train:
        raise DatasetError(f"the {kind!r} test motion goes beyond the training videos: name at least one")
    rngs = [np.random.default_rng([seed, 100 + index]) for index in range(n_train + n_test)]
    motions = [video_motion(n_frames, rng, base_translation, test=index >= n_train) for index, rng in enumerate(rngs)]
    if kind == "near":
        return motions
    train = [_alternating(m, rng) for m, rng in zip(motions[:n_train], rngs)]
    return train + [_extrapolated(m, train, views_beyond=kind == "extrapolate") for m in motions[n_train:]]
