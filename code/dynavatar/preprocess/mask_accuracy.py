"""Mask accuracy on generated videos: IoU of step 5's masks against the generator's true mattes.

Per seed: a synthetic subject's videos (two training videos, one short test clip where the head
barely moves; the person drifts sideways over the training videos, as over a long take), with a
volume of dark hair over the crown, on a textured, white or dark backdrop; crops placed as preprocessing places them, from the
true landmarks, which also seed the masks (the tracking is left out: it moves the landmarks by about
a pixel). Each background kind is scored on the same frames: "video" (each video's background from
its own frames), "subject" (pooled over the subject's videos) and "plate" (the clean plate).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .background import VideoSample, read_clean_plate, subject_backgrounds
from .crop import square_crop
from .frames import FrameSelection, iter_frames, probe_video
from .masks import MaskOptions, mask_crop, read_external_matte, segment, to_size
from .synthetic_video import BACKDROPS

log = logging.getLogger(__name__)

KINDS = ("video", "subject", "plate")


def iou(truth: np.ndarray, alpha: np.ndarray) -> float:
    """IoU of two mattes [H, W] thresholded at 0.5."""
    a, b = truth > 0.5, alpha > 0.5
    return float((a & b).sum() / max((a | b).sum(), 1))


def video_ious(folder: Path, names: Sequence[str], res: int, kinds: Sequence[str] = KINDS,
               options: MaskOptions | None = None) -> dict[str, dict[str, float]]:
    """Mean IoU per video of each background kind -> {kind: {video: IoU}}, for videos written by
    `make_synthetic_videos` into `folder` (with its landmarks.json, masks/ and background.png)."""
    options = options or MaskOptions()
    marks = json.loads((folder / "landmarks.json").read_text(encoding="utf-8"))
    samples, frames, points = [], {}, {}
    for name in names:
        info = probe_video(folder / f"{name}.mp4")
        decoded = [frame for _, frame in iter_frames(info, FrameSelection())]
        source = np.array([marks[name][str(k)] for k in range(len(decoded))])  # [N, 68, 2] source pixels
        crop = square_crop(source, info.width, info.height, res, name=name)
        wanted = np.linspace(0, len(decoded) - 1, min(options.samples, len(decoded))).round().astype(int)
        wanted = sorted(set(wanted.tolist()))
        work = mask_crop(crop)  # as preprocessing makes them
        points[name] = work.points_to_crop(source)
        frames[name] = (crop, decoded)
        samples.append(VideoSample(name, work, (info.width, info.height),
                                   np.stack([crop.window(decoded[k]) for k in wanted]), points[name][wanted]))
    plate = read_clean_plate(folder / "background.png", samples[0].source_size)
    out = {}
    for kind in kinds:
        background = subject_backgrounds(samples, options, plate=plate if kind == "plate" else None,
                                         per_video=kind == "video")
        out[kind] = {}
        for sample, model in zip(samples, background.models):
            crop, decoded = frames[sample.name]
            scores = [iou(crop.apply(read_external_matte(folder / "masks", sample.name, k)),
                          to_size(segment(sample.crop.apply(frame).astype(np.float32) / 255.0, points[sample.name][k],
                                          model, options), res))
                      for k, frame in enumerate(decoded)]
            out[kind][sample.name] = float(np.mean(scores))
    return out


def measure(seeds: Sequence[int], backdrops: Sequence[str] = BACKDROPS, res: int = 128,
            frames: int = 40, short: int = 4, scale: float = 1.5, kinds: Sequence[str] = KINDS,
            hair: bool = True, sway: float = 0.2, work: Path | None = None) -> dict:
    """IoU per video, background kind, backdrop and seed; `short`: frames of the test clip."""
    from .synthetic_video import make_synthetic_videos

    names = ("train1", "train2", "test1")
    results: dict = {}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for backdrop in backdrops:
            for seed in seeds:
                folder = Path(tmp) / f"{backdrop}-{seed}"
                make_synthetic_videos(folder, res=128, frames=frames, seed=seed, videos=names, scale=scale,
                                      backdrop=backdrop, lengths={"test1": short}, hair=hair,
                                      sway=sway)
                result = video_ious(folder, names, res, kinds)
                results.setdefault(backdrop, {})[seed] = result
                for kind, ious in result.items():
                    log.info("%s seed %d %-7s %s", backdrop, seed, kind,
                             " ".join(f"{n} {v:.4f}" for n, v in ious.items()))
    return results


def summary(results: dict) -> list[str]:
    """Lines: per backdrop and kind, mean ± standard deviation over seeds of the per-video IoU, the
    test clip's mean, and the worst video."""
    lines = []
    for backdrop, by_seed in results.items():
        for kind in next(iter(by_seed.values())):
            values = {(seed, name): v for seed, r in by_seed.items() for name, v in r[kind].items()}
            all_ = np.array(list(values.values()))
            test = np.array([v for (_, name), v in values.items() if name.startswith("test")])
            worst = min(values, key=values.get)
            lines.append(f"{backdrop:9s} {kind:8s} mean {all_.mean():.4f} ± {all_.std():.4f}, test clip "
                         f"{test.mean():.4f}, worst {values[worst]:.4f} ({worst[1]}, seed {worst[0]})")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Mask IoU per video on generated videos, per background kind.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backdrops", nargs="+", default=list(BACKDROPS), choices=list(BACKDROPS))
    parser.add_argument("--res", type=int, default=128, help="output size (default 128)")
    parser.add_argument("--frames", type=int, default=40, help="frames of each training video (default 40)")
    parser.add_argument("--short", type=int, default=4, help="frames of the test clip (default 4)")
    parser.add_argument("--scale", type=float, default=1.5, help="video size / the 192x160 canvas (default 1.5)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--no_hair", action="store_true", help="without the volume of hair over the crown")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = measure(args.seeds, args.backdrops, args.res, args.frames, args.short, args.scale, args.kinds,
                      hair=not args.no_hair)
    for line in summary(results):
        print(line)
