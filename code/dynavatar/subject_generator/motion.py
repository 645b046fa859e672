"""Smooth talking-like FLAME parameter sequences for synthetic videos.

Every curve is a sum of a few sinusoids with random frequencies and phases (smooth from frame to
frame); the jaw follows a syllable rhythm. A test video draws other combinations and somewhat larger
amplitudes of the same components, so its expressions are unseen but within reach of a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

N_EXPRESSION, N_POSE = 50, 15
FPS = 25.0
JAW = 6  # pose[6:9] is the jaw's axis-angle, pose[6] opens the mouth
TEST_AMPLITUDE = 1.25  # test expressions reach a bit beyond the training amplitudes


@dataclass
class Motion:
    expressions: torch.Tensor  # [N, 50]
    poses: torch.Tensor  # [N, 15] global, neck, jaw, left eye, right eye
    translations: torch.Tensor  # [N, 3] world_mat translation


def _curves(rng: np.random.Generator, t: np.ndarray, count: int, f_lo: float, f_hi: float, waves: int = 2
            ) -> np.ndarray:
    """`count` smooth curves over times t [N] -> [N, count], each of RMS about 1/sqrt(2)."""
    freq = rng.uniform(f_lo, f_hi, (waves, count))
    phase = rng.uniform(0, 2 * np.pi, (waves, count))
    weight = rng.uniform(0.5, 1.0, (waves, count))
    weight /= np.sqrt((weight ** 2).sum(0, keepdims=True))
    return (weight[None] * np.sin(2 * np.pi * freq[None] * t[:, None, None] + phase[None])).sum(1)


def video_motion(n_frames: int, rng: np.random.Generator, base_translation: np.ndarray, test: bool = False
                 ) -> Motion:
    """FLAME expressions, poses and camera translations of one synthetic video of `n_frames` frames."""
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
    expressions[:, 0] += 1.2 * (poses[:, JAW] - 0.08) / 0.08  # the mouth-open component follows the jaw
    gaze = _curves(rng, t, 2, *slow) * np.array([0.10, 0.15])
    poses[:, 9:11] = gaze  # left eye (pitch, yaw)
    poses[:, 12:14] = gaze  # right eye looks the same way

    translations = base_translation[None] + _curves(rng, t, 3, *slow) * np.array([0.015, 0.015, 0.04])
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return Motion(f32(expressions), f32(poses), f32(translations))
