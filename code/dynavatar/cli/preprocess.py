"""`python scripts/preprocess.py --subject NAME --video talk.mp4 --video head.mp4 --test-video test.mp4`:
turn monocular videos into an IMavatar-format subject (frames, face crop, landmarks, FLAME tracking,
masks, contact sheet) that scripts/check_dataset.py accepts and exp_runner.py trains on.
See docs/PREPROCESSING.md."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ..preprocess.crop import DEFAULT_CROP_SCALE
from ..preprocess.errors import PreprocessError
from ..preprocess.frames import FrameSelection
from ..preprocess.masks import MaskOptions
from ..preprocess.pipeline import (DEFAULT_FLAME, EXPRESSION_PRIOR, FOLDER_NAME, PHOTOMETRIC_SHADING,
                                   PHOTOMETRIC_WEIGHT, SILHOUETTE_WEIGHT, PreprocessOptions, VideoSpec,
                                   preprocess_subject, video_name)
from ..preprocess.tracking import DEFAULT_FOCAL, TrackingOptions
from .common import main_with_errors, setup_logging


def video_spec(text: str, test: bool) -> VideoSpec:
    """FILE or FILE=NAME -> VideoSpec (the folder name is the file's stem unless given)."""
    path, sep, name = text.rpartition("=")
    if sep and path and FOLDER_NAME.match(name) and not Path(text).exists():
        return VideoSpec(Path(path), name, test)
    return VideoSpec(Path(text), video_name(text), test)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preprocess.py", description="Turn monocular videos of a face into an IMavatar-format subject "
                                          "(see docs/PREPROCESSING.md).")
    parser.add_argument("--subject", required=True, help="subject name (folder under --out)")
    parser.add_argument("--out", default="./data/datasets", help="data folder to write into (default ./data/datasets)")
    parser.add_argument("--video", action="append", default=[], metavar="FILE[=NAME]", required=True,
                        help="a training video; repeatable. Its folder is named after the file unless =NAME is given")
    parser.add_argument("--test-video", "--test_video", dest="test_video", action="append", default=[],
                        metavar="FILE[=NAME]", help="a held-out test video; repeatable")
    parser.add_argument("--fps", type=float, default=None, help="frames per second to keep (default: every frame)")
    parser.add_argument("--max_frames", "--max-frames", type=int, default=None,
                        help="at most this many frames per video")
    parser.add_argument("--start", type=float, default=0.0, help="first second to keep (default 0)")
    parser.add_argument("--end", type=float, default=None, help="keep frames before this second (default: to the end)")
    parser.add_argument("--res", type=int, default=512, help="output image size, square (default 512)")
    parser.add_argument("--crop_scale", "--crop-scale", type=float, default=DEFAULT_CROP_SCALE,
                        help=f"crop side in face sizes (default {DEFAULT_CROP_SCALE})")
    parser.add_argument("--focal", type=float, default=DEFAULT_FOCAL,
                        help=f"camera focal length in units of the image width (default {DEFAULT_FOCAL}, as in "
                             f"IMavatar data)")
    parser.add_argument("--flame", default=DEFAULT_FLAME,
                        help=f"FLAME 2020 generic_model.pkl, or 'synthetic' (default {DEFAULT_FLAME}); use the "
                             f"model the training conf names")
    parser.add_argument("--flame_landmarks", "--flame-landmarks", default=None,
                        help="FLAME 68-landmark embedding (default: landmark_embedding.npy beside the model)")
    parser.add_argument("--landmarks", type=Path, default=None, metavar="FILE",
                        help="use these 2D landmarks instead of the face detector (json, see docs/PREPROCESSING.md)")
    parser.add_argument("--masks", type=Path, default=None, metavar="DIR",
                        help="use these mattes (DIR/<video>/<k>.png per source frame) instead of the background model")
    parser.add_argument("--background", type=Path, default=None, metavar="IMAGE",
                        help="a clean plate: a photo of the empty scene from the camera's position, at the videos' "
                             "size, used as the background model (default: learnt from all the subject's videos)")
    parser.add_argument("--device", default="auto", help="tracking device: auto, cpu or cuda (default auto)")
    parser.add_argument("--steps", type=int, default=TrackingOptions.steps, help="tracking optimisation steps")
    parser.add_argument("--contour_weight", "--contour-weight", type=float, default=TrackingOptions.contour_weight,
                        help="tracking weight of the jaw contour beside the chin (default 0: a face-mesh detector's "
                             "contour follows the silhouette; up to 1 for landmarks fixed on the face)")
    parser.add_argument("--smooth_head", "--smooth-head", type=float, default=TrackingOptions.smooth_head,
                        metavar="W", help=f"tracking weight of the head turn's change between consecutive frames "
                                          f"(default {TrackingOptions.smooth_head:g}; lower it for a head that "
                                          f"turns more than about 5 degrees from one frame to the next)")
    parser.add_argument("--smooth_head_acceleration", "--smooth-head-acceleration", type=float,
                        default=TrackingOptions.smooth_head_acceleration, metavar="W",
                        help=f"tracking weight of the head turn's change of speed over three consecutive frames "
                             f"(default {TrackingOptions.smooth_head_acceleration:g}): smooths jitter without holding "
                             f"a steady turn back")
    parser.add_argument("--silhouette_weight", "--silhouette-weight", type=float,
                        default=SILHOUETTE_WEIGHT, metavar="W",
                        help=f"tracking weight of the silhouette term, the projected FLAME head kept inside the "
                             f"masks (default {SILHOUETTE_WEIGHT:g}, measured best on generated heads, see "
                             f"docs/PREPROCESSING.md; 0: landmarks only); without --masks, tracking runs again "
                             f"once the masks exist")
    parser.add_argument("--photometric_weight", "--photometric-weight", type=float,
                        default=PHOTOMETRIC_WEIGHT, metavar="W",
                        help=f"tracking weight of the photometric term, each FLAME vertex facing the camera "
                             f"keeping its colour from frame to frame (default {PHOTOMETRIC_WEIGHT:g}, with "
                             f"--photometric_shading and --expression_prior measured best on generated heads, "
                             f"see docs/PREPROCESSING.md; 0: off, much faster on a CPU)")
    parser.add_argument("--photometric_shading", "--photometric-shading", action=argparse.BooleanOptionalAction,
                        default=PHOTOMETRIC_SHADING,
                        help="the photometric term compares each vertex's colour with its albedo under a light "
                             "fixed to the camera, which follows the shading as the head turns, rather than with "
                             "its mean colour over the frames (default: %(default)s)")
    parser.add_argument("--expression_prior", "--expression-prior", type=float,
                        default=EXPRESSION_PRIOR, metavar="W",
                        help=f"tracking weight of the expression coefficients' squared size (default "
                             f"{EXPRESSION_PRIOR:g}): holds back expressions that would explain colours or chase "
                             f"a detector's points on a face of other anatomy")
    parser.add_argument("--workers", type=int, default=0,
                        help="threads segmenting frames for the masks at once (default 0: one per CPU core)")
    parser.add_argument("--no_contact_sheet", "--no-contact-sheet", action="store_true", help="skip the contact sheet")
    parser.add_argument("--overwrite", action="store_true", help="replace a subject written earlier by preprocess.py")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    return parser


def options_from_args(args: argparse.Namespace) -> PreprocessOptions:
    if args.steps < 1:
        raise PreprocessError(f"--steps must be >= 1, got {args.steps}")
    for weight in ("contour_weight", "smooth_head", "smooth_head_acceleration", "silhouette_weight",
                   "photometric_weight", "expression_prior"):
        if not getattr(args, weight) >= 0:  # NaN too
            raise PreprocessError(f"--{weight} must be >= 0, got {getattr(args, weight)}")
    if args.workers < 0:
        raise PreprocessError(f"--workers must be >= 0 (0: one per CPU core), got {args.workers}")
    videos = [video_spec(v, False) for v in args.video] + [video_spec(v, True) for v in args.test_video]
    return PreprocessOptions(
        subject=args.subject, videos=videos, out=Path(args.out), res=args.res,
        selection=FrameSelection(fps=args.fps, start=args.start, end=args.end, max_frames=args.max_frames),
        crop_scale=args.crop_scale, flame_model=args.flame, flame_landmarks=args.flame_landmarks,
        landmarks_file=args.landmarks, masks_dir=args.masks, background=args.background,
        device=args.device, overwrite=args.overwrite, masks=MaskOptions(workers=args.workers),
        contact_sheet=not args.no_contact_sheet, tracking=TrackingOptions(focal=args.focal, steps=args.steps,
                                                                    contour_weight=args.contour_weight,
                                                                    smooth_head=args.smooth_head,
                                                                    smooth_head_acceleration=args.smooth_head_acceleration,
                                                                    silhouette_weight=args.silhouette_weight,
                                                                    photometric_weight=args.photometric_weight,
                                                                    photometric_shading=args.photometric_shading,
                                                                    expression_prior=args.expression_prior))


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet)
    preprocess_subject(options_from_args(args))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    main_with_errors(run, argv)


if __name__ == "__main__":
    main()
