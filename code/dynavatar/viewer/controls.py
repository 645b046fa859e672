"""The sliders of the viewer: which entry of the expression [E] or the FLAME pose [15] each one moves.

FLAME's pose [15] is five axis-angle rotations: global (the head), neck, jaw, left eye, right eye.
Angles are in radians; x turns about the head's left-right axis (pitch), y about its vertical (yaw),
z about its front-back axis (roll)."""

from __future__ import annotations

from dataclasses import dataclass

HEAD, NECK, JAW, LEFT_EYE, RIGHT_EYE = 0, 3, 6, 9, 12
X, Y, Z = 0, 1, 2


@dataclass(frozen=True)
class SliderSpec:
    label: str
    what: str  # "expression" or "pose"
    indices: tuple[int, ...]  # the entries it sets (gaze moves both eyes)
    low: float
    high: float
    step: float


def expression_sliders(count: int) -> list[SliderSpec]:
    """The first `count` expression components."""
    return [SliderSpec(f"expression {k}", "expression", (k,), -3.0, 3.0, 0.05) for k in range(count)]


POSE_SLIDERS = [
    SliderSpec("jaw open", "pose", (JAW + X,), -0.1, 0.6, 0.01),
    SliderSpec("jaw sideways", "pose", (JAW + Y,), -0.2, 0.2, 0.01),
    SliderSpec("neck pitch", "pose", (NECK + X,), -0.6, 0.6, 0.01),
    SliderSpec("neck yaw", "pose", (NECK + Y,), -0.8, 0.8, 0.01),
    SliderSpec("neck roll", "pose", (NECK + Z,), -0.5, 0.5, 0.01),
    SliderSpec("head pitch", "pose", (HEAD + X,), -0.6, 0.6, 0.01),
    SliderSpec("head yaw", "pose", (HEAD + Y,), -0.8, 0.8, 0.01),
    SliderSpec("head roll", "pose", (HEAD + Z,), -0.5, 0.5, 0.01),
    SliderSpec("gaze up/down", "pose", (LEFT_EYE + X, RIGHT_EYE + X), -0.4, 0.4, 0.01),
    SliderSpec("gaze left/right", "pose", (LEFT_EYE + Y, RIGHT_EYE + Y), -0.5, 0.5, 0.01),
]
