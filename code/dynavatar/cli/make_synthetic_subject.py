"""Generate a synthetic subject in the IMavatar layout (images, soft masks, semantic maps, flame_params.json).

    python scripts/make_synthetic_subject.py --out data/datasets --subject subject1
    python scripts/make_synthetic_subject.py --out data/datasets --subject demo --res 64 --frames 30 --seed 0
    python scripts/make_synthetic_subject.py --out data/datasets --subject beyond --test_motion extrapolate
    python scripts/make_synthetic_subject.py --out data/datasets --subject real_head \
        --flame data/FLAME2020/generic_model.pkl
    python scripts/make_synthetic_subject.py --out data/datasets --subject dense --res 64 --frames 80 --head dense

Writes <out>/<subject>/<subject>/<video>/{image,mask,semantic}/<k>.png and flame_params.json for two
training videos and one test video (the names of confs/subject1.conf unless given). Deterministic for a seed.
--test_motion extrapolate makes test videos beyond the training videos (larger expressions, pairs of
expressions that training never shows together, wider head turns and jaw openings; docs/DATA_FORMAT.md);
--test_motion expressions takes only the expressions beyond them (head pitch, yaw and jaw within the training
magnitudes, each axis alone).
A --head variant other than the default also writes its head model to <out>/<subject>/flame_model/ (train
with model.flame_model_path and model.flame_landmark_path pointing there).
"""

import argparse
import logging

from ..subject_generator.motion import TEST_MOTIONS
from ..flame.synthetic_head import HEAD_VARIANTS
from ..subject_generator.subject import DEFAULT_TEST_VIDEOS, DEFAULT_TRAIN_VIDEOS, generate_subject
from ..errors import DynAvatarError
from ..runtime import resolve_device


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="dataset folder (dataset.data_folder), e.g. data/datasets")
    parser.add_argument("--subject", required=True, help="subject name (dataset.subject_name)")
    parser.add_argument("--res", type=int, default=512, help="image size in pixels (square), default 512")
    parser.add_argument("--frames", type=int, default=30, help="frames per video, default 30")
    parser.add_argument("--seed", type=int, default=0, help="random seed (shape, colours, motion), default 0")
    parser.add_argument("--flame", default=None,
                        help="FLAME 2020 generic_model.pkl (or its folder); default: the synthetic FLAME-format head")
    parser.add_argument("--head", default=None, metavar="VARIANT",
                        help=f"a variant of the synthetic head: one of {', '.join(HEAD_VARIANTS)}, optionally with "
                             f"overrides, e.g. 'dense,scale=1.3' or 'default,proportions=0.9:1.1:1' (keys: rows, "
                             f"cols, eye_rings, eye_segments, scale, proportions, n_expression); default: default")
    parser.add_argument("--landmarks", default=None,
                        help="landmark embedding (default: landmark_embedding.npy beside --flame)")
    parser.add_argument("--train-videos", nargs="+", default=list(DEFAULT_TRAIN_VIDEOS), help="training video names")
    parser.add_argument("--test-videos", nargs="+", default=list(DEFAULT_TEST_VIDEOS), help="test video names")
    parser.add_argument("--test_motion", "--test-motion", choices=TEST_MOTIONS, default="near",
                        help="test videos: near (default: unseen combinations, a bit beyond training), "
                             "extrapolate (beyond the training range) or expressions (only the expressions "
                             "beyond it), see docs/DATA_FORMAT.md")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing subject of that name")
    parser.add_argument("--device", default="cpu",
                        help="where to render: cpu (default), cuda, cuda:N or auto; a GPU renders a 512-pixel "
                             "subject in seconds instead of minutes (rounding can differ from the CPU's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        generate_subject(args.out, args.subject, res=args.res, frames=args.frames, seed=args.seed,
                         flame_model_path=args.flame, train_videos=args.train_videos, test_videos=args.test_videos,
                         landmark_path=args.landmarks, overwrite=args.overwrite, test_motion=args.test_motion,
                         head=args.head, device=resolve_device(args.device, "--device"))
    except DynAvatarError as exc:  # user errors: one message, no traceback
        logging.error("%s", exc)
        return 1
    return 0

