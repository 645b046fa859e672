"""`python scripts/tracking_accuracy.py`: generate synthetic videos with known answers (a training
video and an extrapolating test video per subject, head turns beyond 20 degrees), find their
landmarks with the face detector (or take the true ones), track them as preprocessing does, and print
the head rotation error, the jaw's correlation with the truth, the landmark reprojection error and
the camera distance error per subject, then their mean and spread."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Sequence

import numpy as np

from ..flame.synthetic_head import HEAD_VARIANTS
from ..preprocess.errors import PreprocessError
from ..preprocess.synthetic_video import BACKDROPS
from ..preprocess.tracking import TrackingOptions
from ..preprocess.tracking_accuracy import measure
from .common import main_with_errors, setup_logging

# (seed, head variant, backdrop): each reaches a head yaw beyond 20 degrees in its test video.
DEFAULT_SUBJECTS = ("0:default:textured", "4:flame:white", "5:long:textured", "6:dense:white")
# The weights tracking had before the jaw contour beside the chin was left out and the brows lowered.
PREVIOUS_WEIGHTS = {"contour_weight": 0.5, "chin_weight": 0.5, "brow_weight": 1.0}
FIGURES = ("rotation_error_mean", "rotation_error_max", "constant_rotation_error", "motion_error_mean",
           "motion_error_max", "jaw_correlation", "reprojection_px", "reprojection_inner_px",
           "landmark_error_px", "tz_error_mean")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracking_accuracy.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subject", action="append", default=None, metavar="SEED:HEAD:BACKDROP",
                        help=f"a generated subject: seed, head variant (default, flame, long, dense, ...) and "
                             f"backdrop (textured or white); repeatable (default {' '.join(DEFAULT_SUBJECTS)})")
    parser.add_argument("--landmarks", choices=("detector", "true"), default="detector",
                        help="landmarks from the face detector (default) or the generator's true ones")
    parser.add_argument("--res", type=int, default=256, help="video frame and tracking size, pixels (default 256)")
    parser.add_argument("--frames", type=int, default=40, help="frames per video (default 40)")
    parser.add_argument("--previous", action="store_true",
                        help="track with the landmark weights of the previous version (jaw contour at half weight)")
    parser.add_argument("--silhouette", type=float, default=TrackingOptions.silhouette_weight, metavar="W",
                        help="weight of the silhouette term, with the generator's true mattes as masks (default 0: "
                             "landmarks only; preprocess.py --silhouette_weight)")
    parser.add_argument("--photometric", type=float, default=TrackingOptions.photometric_weight, metavar="W",
                        help=f"weight of the photometric term on the videos' frames (default "
                             f"{TrackingOptions.photometric_weight:g}; preprocess.py --photometric_weight)")
    parser.add_argument("--photometric_shading", action=argparse.BooleanOptionalAction,
                        default=TrackingOptions.photometric_shading,
                        help="the photometric term compares each vertex with its albedo under a light fixed to the "
                             "camera, not with its mean colour (default: %(default)s; preprocess.py "
                             "--photometric_shading)")
    parser.add_argument("--expression_prior", type=float, default=TrackingOptions.expression_prior, metavar="W",
                        help=f"weight of the expression coefficients' squared size (default "
                             f"{TrackingOptions.expression_prior:g}; preprocess.py --expression_prior)")
    parser.add_argument("--smooth_head", type=float, default=TrackingOptions.smooth_head, metavar="W",
                        help=f"weight of the head turn's change between frames (default "
                             f"{TrackingOptions.smooth_head:g}; preprocess.py --smooth_head)")
    parser.add_argument("--smooth_head_acceleration", type=float, default=TrackingOptions.smooth_head_acceleration,
                        metavar="W", help=f"weight of the head turn's change of speed (default "
                                          f"{TrackingOptions.smooth_head_acceleration:g}; preprocess.py "
                                          f"--smooth_head_acceleration)")
    parser.add_argument("--steps", type=int, default=TrackingOptions.steps, metavar="N",
                        help=f"tracking optimisation steps (default {TrackingOptions.steps}; preprocess.py --steps)")
    parser.add_argument("--json", action="store_true", help="print one json object per subject")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    return parser


def _subject(text: str) -> tuple[int, str | None, str]:
    parts = text.split(":")
    if len(parts) != 3 or not parts[0].isdigit() or parts[1] not in HEAD_VARIANTS or parts[2] not in BACKDROPS:
        raise PreprocessError(f"--subject {text!r}: expected SEED:HEAD:BACKDROP with a head of {sorted(HEAD_VARIANTS)} "
                              f"and a backdrop of {list(BACKDROPS)}, e.g. 4:flame:white")
    seed, head, backdrop = parts
    return int(seed), None if head == "default" else head, backdrop


def tracking_options(args: argparse.Namespace) -> TrackingOptions:
    """The tracking's options from the parsed arguments; a negative or NaN weight is refused."""
    for name in ("silhouette", "photometric", "expression_prior", "smooth_head", "smooth_head_acceleration"):
        if not getattr(args, name) >= 0:  # NaN too
            raise PreprocessError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.steps < 1:
        raise PreprocessError(f"--steps must be at least 1, got {args.steps}")
    options = replace(TrackingOptions(), **PREVIOUS_WEIGHTS) if args.previous else TrackingOptions()
    return replace(options, silhouette_weight=args.silhouette, photometric_weight=args.photometric,
                   expression_prior=args.expression_prior, smooth_head=args.smooth_head,
                   smooth_head_acceleration=args.smooth_head_acceleration, steps=args.steps,
                   photometric_shading=args.photometric_shading)


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet)
    options = tracking_options(args)
    rows = []
    for text in args.subject or DEFAULT_SUBJECTS:
        seed, head, backdrop = _subject(text)
        figures = measure(seed, options=options, head=head, backdrop=backdrop, landmarks=args.landmarks,
                          res=args.res, frames=args.frames)
        rows.append(figures)
        if args.json:
            print(json.dumps({"subject": text, **figures}))
        else:
            print(f"{text:20s} rotation error {figures['rotation_error_mean']:5.2f} deg mean, "
                  f"{figures['rotation_error_max']:5.2f} max (a constant {figures['constant_rotation_error']:.2f}, then "
                  f"{figures['motion_error_mean']:.2f} mean, {figures['motion_error_max']:.2f} max); true yaw {figures['true_yaw'][0]:.1f}..."
                  f"{figures['true_yaw'][1]:.1f}, fitted {figures['fitted_yaw'][0]:.1f}...{figures['fitted_yaw'][1]:.1f}"
                  f"; jaw correlation {figures['jaw_correlation']:.2f}; reprojection "
                  f"{figures['reprojection_px']:.2f} px ({figures['reprojection_inner_px']:.2f} over points 17-67)"
                  f"; landmarks vs truth {figures['landmark_error_px']:.2f} px; t_z error "
                  f"{figures['tz_error_mean']:+.3f}", flush=True)
    if len(rows) > 1:
        spread = {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))) for k in FIGURES}
        print("mean ± std over subjects: " + "; ".join(f"{k} {m:.2f} ± {s:.2f}" for k, (m, s) in spread.items()))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    main_with_errors(run, argv)
