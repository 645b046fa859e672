"""Synthetic videos with known answers, to try and test preprocessing without a camera.

A synthetic subject (`dynavatar.subject_generator`) is re-composited, with its own soft masks, over a
larger textured static backdrop and encoded to mp4 (H.264, yuv420p, as a phone writes). Written
beside each video: the true 68 landmarks of every frame in the `--landmarks` file format, and the
true mattes at the video's size (`--masks` folder format), so that every step can be checked
against the generator's exact tracking.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.flame_params import read_flame_params
from ..data.images import read_mask, read_rgb, to_uint8, write_mask, write_rgb
from ..subject_generator import generate_subject

BACKDROPS = ("textured", "white", "dark")


@dataclass
class SyntheticVideo:
    path: Path  # the mp4
    subject_video: Path  # the generator's video folder (exact tracking, images and masks at `res`)
    offset: tuple[int, int]  # where the generator's frame sits in the (un-scaled) canvas, pixels
    scale: tuple[float, float]  # video pixels per generator pixel (x, y)
    canvas_size: tuple[int, int]  # (width, height) of the video


def exact_tracking_in_crop(video: SyntheticVideo, crop) -> dict:
    """The generator's exact flame_params.json of a video, re-expressed for a crop of it
    (`dynavatar.preprocess.crop.Crop` in video pixels): the same shape, expressions, poses and
    world_mats, with the intrinsics and keypoints of the cropped image. Preprocessed images and
    masks with this file make a subject whose only difference from the preprocessed one is the tracking.

    A pixel u (centres at integers) of the generator's frame lands at A u + B in the crop, so the
    focal length scales by A and the principal point moves to A c + B.
    """
    params = json.loads((video.subject_video / "flame_params.json").read_text(encoding="utf-8"))
    res = read_rgb(video.subject_video / f"{params['frames'][0]['file_path']}.png").shape[0]
    scale = np.asarray(video.scale, dtype=np.float64) * crop.res / crop.size  # A, per axis
    shift = ((np.asarray(video.offset) + 0.5) * np.asarray(video.scale) - np.array([crop.x0, crop.y0])) \
        * crop.res / crop.size - 0.5  # B, per axis
    fx, fy, cx, cy = (float(v) for v in params["intrinsics"])
    focal = np.array([-fx, fy]) * res * scale  # pixels of the crop
    centre = np.array([cx, cy]) * res * scale + shift
    params["intrinsics"] = [-focal[0] / crop.res, focal[1] / crop.res, centre[0] / crop.res, centre[1] / crop.res]
    for frame in params["frames"]:
        pixels = (np.asarray(frame["flame_keypoints"]) + 1.0) / 2.0 * res * scale + shift
        keypoints = pixels / crop.res * 2.0 - 1.0
        frame["flame_keypoints"] = keypoints.tolist()
        frame["bbox"] = [*keypoints.min(0).tolist(), *keypoints.max(0).tolist()]
    return params


def textured_backdrop(width: int, height: int, seed: int) -> np.ndarray:
    """A static backdrop [H, W, 3] in [0, 1]: a colour gradient, waves from broad to fine, and panels."""
    rng = np.random.default_rng([seed, 7])
    y, x = np.mgrid[0:height, 0:width].astype(np.float64) / max(width, height)
    img = rng.uniform(0.3, 0.7, 3) + rng.uniform(-0.2, 0.2, 3) * (x[..., None] - 0.5)
    for band in (6, 6, 20, 20, 60):
        freq = rng.uniform(band, 2 * band, 2) * rng.choice([-1, 1], 2)
        phase = rng.uniform(0, 2 * np.pi)
        img += rng.uniform(0.04, 0.1, 3) * np.sin(freq[0] * x + freq[1] * y + phase)[..., None]
    for _ in range(5):
        cx, cy = rng.uniform(0, 1, 2) * (width / max(width, height), height / max(width, height))
        half = rng.uniform(0.05, 0.2, 2)
        inside = (np.abs(x - cx) < half[0]) & (np.abs(y - cy) < half[1])
        img[inside] = 0.6 * img[inside] + 0.4 * rng.uniform(0.1, 0.9, 3)
    return np.clip(img, 0.0, 1.0)


def hair_volume(pixels: np.ndarray, width: int, height: int, colour: np.ndarray, supersample: int = 4
                ) -> tuple[np.ndarray, np.ndarray]:
    """A volume of hair over the crown, from a frame's 68 landmarks [68, 2] (canvas pixels) -> (alpha
    [H, W] in [0, 1] with soft edges, colour [H, W, 3]: `colour` with strands across it).

    In the face's frame (x along the eyes, y down; w the jaw's width, h from brows to chin): the top
    of an ellipse centred 0.3 h above the brows, 0.62 w by 0.6 h, above a line 0.12 h over the brows.
    """
    import cv2

    eyes = pixels[36:42].mean(0), pixels[42:48].mean(0)
    across = (eyes[1] - eyes[0]) / max(np.linalg.norm(eyes[1] - eyes[0]), 1e-6)
    down = np.array([-across[1], across[0]])
    w = float(np.ptp(pixels[0:17] @ across))
    brow = float(pixels[17:27].mean(0) @ down)
    h = float(pixels[8] @ down) - brow
    mid = float(pixels[0:17].mean(0) @ across)
    y, x = (np.mgrid[0:height * supersample, 0:width * supersample] + 0.5) / supersample - 0.5
    u = x * across[0] + y * across[1] - mid  # along the eyes, from the face's middle
    v = x * down[0] + y * down[1] - brow  # downwards, from the brows
    inside = ((u / (0.62 * w)) ** 2 + ((v + 0.3 * h) / (0.6 * h)) ** 2 <= 1.0) & (v < -0.12 * h)
    alpha = cv2.resize(inside.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    strands = 1.0 + 0.35 * np.sin(2 * np.pi * (np.mgrid[0:height, 0:width][1] * across[0]
                                                + np.mgrid[0:height, 0:width][0] * across[1]) / 3.0)
    return alpha, np.clip(colour[None, None] * strands[..., None], 0.0, 1.0)


def _generator_backdrop(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The generator's static backdrop [H, W, 3], read where no frame covers it and filled in smoothly
    elsewhere (it is a smooth gradient), so the person can be moved onto another backdrop."""
    import cv2

    free = masks <= 0.0  # [N, H, W]
    count = free.sum(0)
    mean = (images * free[..., None]).sum(0) / np.maximum(count, 1)[..., None]
    unknown = (count == 0).astype(np.uint8)
    if not unknown.any():
        return mean
    filled = cv2.inpaint(to_uint8(mean), unknown, 5, cv2.INPAINT_TELEA).astype(np.float64) / 255.0
    return np.where(unknown[..., None] > 0, filled, mean)


def _encode(path: Path, frames: list[np.ndarray], fps: float, crf: int) -> None:
    import imageio_ffmpeg

    height, width = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1,
                                         output_params=["-crf", str(crf)])
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def make_synthetic_videos(out_dir: str | Path, res: int = 128, frames: int = 10, seed: int = 0,
                          videos: Sequence[str] = ("train1", "train2", "test1"), n_test: int = 1,
                          scale: float = 1.0, fps: float = 25.0, crf: int = 16,
                          flame_model_path: str | Path | None = None, head: str | None = None,
                          test_motion: str = "near", backdrop: str = "textured",
                          lengths: dict[str, int] | None = None, hair: bool = False,
                          sway: float = 0.0) -> dict[str, SyntheticVideo]:
    """Write `<out_dir>/<video>.mp4` for each name, `<out_dir>/landmarks.json` (true landmarks of all
    videos in the `--landmarks` format), `<out_dir>/masks/<video>/<k>.png` (true mattes, `--masks`
    format), `<out_dir>/background.png` (the empty scene: a clean plate, `--background`) and the
    generator's subject under `<out_dir>/subject/`. The last `n_test` names are generated as test videos. The canvas is 1.5 x 1.25 times the generator's frame, which sits at
    the bottom centre; `scale` resizes the whole video (the answers are scaled with it). `head` and
    `test_motion` are the generator's (a head variant, "near" or "extrapolate" test videos).
    backdrop: "textured" (`textured_backdrop`), "white" (a plain, slightly uneven white wall) or "dark"
    (the textured backdrop at a third of its brightness, as a dim interview set, with a lit panel
    behind the head: dark hair looks like the set, not like what lies right behind it).
    hair: a volume of dark hair over the crown (`hair_volume`), in the images and the true mattes.
    sway: the person (the generator's frame) drifts sideways by up to this fraction of `res`, once over
    the video's full length, as someone shifting in a chair over a long take (`offset` is then
    that of the first frame, and `exact_tracking_in_crop` holds only for sway 0).
    lengths: frames of the named videos (the first ones of what is generated; at most `frames`): a
    short clip, where the head barely moves."""
    import cv2

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [str(v) for v in videos]
    subject_root = generate_subject(out_dir / "subject", "synthetic", res=res, frames=frames, seed=seed,
                                    train_videos=names[: len(names) - n_test], test_videos=names[len(names) - n_test:],
                                    flame_model_path=flame_model_path, overwrite=True, head=head,
                                    test_motion=test_motion)
    width, height = int(round(1.5 * res)), int(round(1.25 * res))
    base = ((width - res) // 2, height - res)
    if not 0 <= sway * res <= base[0]:
        raise ValueError(f"sway {sway}: between 0 and {base[0] / res:.2f} (the canvas's room beside the frame)")
    out_w, out_h = int(round(width * scale)) // 2 * 2, int(round(height * scale)) // 2 * 2
    video_scale = np.array([out_w / width, out_h / height])
    if backdrop not in BACKDROPS:
        raise ValueError(f"backdrop {backdrop!r}: expected one of {', '.join(BACKDROPS)}")
    lengths = dict(lengths or {})
    if any(not 1 <= n <= frames for n in lengths.values()):
        raise ValueError(f"lengths {lengths}: each must lie between 1 and frames={frames}")
    scene = textured_backdrop(width, height, seed)
    if backdrop == "white":  # a white wall, lit a little unevenly
        scene = np.clip(0.93 + 0.15 * (scene - scene.mean(axis=(0, 1))), 0.0, 1.0)
    elif backdrop == "dark":  # a dim set with a lit panel behind the head (a poster, a window)
        scene = scene / 3.0
        panel = (slice(0, height - int(0.5 * res)), slice(width // 2 - int(0.45 * res), width // 2 + int(0.45 * res)))
        scene[panel] = np.clip(0.35 + 0.5 * scene[panel], 0.0, 1.0)
    hair_colour = np.array([0.10, 0.07, 0.05]) * np.random.default_rng([seed, 11]).uniform(0.7, 1.3)
    if backdrop == "dark":  # hair of the set's own colour
        hair_colour = np.median(scene[: height // 2, : width // 6].reshape(-1, 3), axis=0)
    landmarks: dict[str, dict[str, list]] = {}
    result = {}
    for name in names:
        video_dir = subject_root / "synthetic" / name
        params = read_flame_params(video_dir / "flame_params.json")
        images = np.stack([read_rgb(video_dir / f"{p}.png") for p in params.file_paths])  # [N, res, res, 3]
        alphas = np.stack([read_mask(video_dir / f"{p.replace('image', 'mask', 1)}.png") for p in params.file_paths])
        generator_bg = _generator_backdrop(images, alphas)
        mask_dir = out_dir / "masks" / name
        if mask_dir.exists():
            shutil.rmtree(mask_dir)
        mask_dir.mkdir(parents=True)
        encoded, marks = [], {}
        count = lengths.get(name, len(images))
        phase = np.random.default_rng([seed, 13, len(landmarks)]).uniform(0, 2 * np.pi)
        for k, (image, alpha) in enumerate(zip(images[:count], alphas[:count])):
            turn = 2 * np.pi * k / max(len(images), 1) + phase  # one slow cycle over the full length
            offset = (base[0] + int(round(sway * res * np.sin(turn))), base[1])
            first = offset if k == 0 else first
            patch = scene[offset[1]:offset[1] + res, offset[0]:offset[0] + res]
            canvas = scene.copy()
            canvas[offset[1]:offset[1] + res, offset[0]:offset[0] + res] = \
                np.clip(image + (1.0 - alpha[..., None]) * (patch - generator_bg), 0.0, 1.0)
            matte = np.zeros((height, width))
            matte[offset[1]:offset[1] + res, offset[0]:offset[0] + res] = alpha
            keypoints = np.asarray(params.frames[k]["flame_keypoints"], dtype=np.float64)
            pixels = (keypoints + 1.0) / 2.0 * res + np.asarray(offset)  # canvas pixels, centres at integers
            if hair:
                cover, colour = hair_volume(pixels[:68], width, height, hair_colour)
                canvas = cover[..., None] * colour + (1.0 - cover[..., None]) * canvas
                matte = cover + (1.0 - cover) * matte
            if (out_w, out_h) != (width, height):
                canvas = cv2.resize(canvas, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
                matte = cv2.resize(matte, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
            encoded.append(to_uint8(canvas))
            write_mask(mask_dir / f"{k + 1}.png", matte)
            marks[str(k)] = np.round((pixels + 0.5) * video_scale - 0.5, 4).tolist()
        path = out_dir / f"{name}.mp4"
        _encode(path, encoded, fps, crf)
        landmarks[name] = marks
        result[name] = SyntheticVideo(path, video_dir, first, tuple(video_scale), (out_w, out_h))
    (out_dir / "landmarks.json").write_text(json.dumps(landmarks), encoding="utf-8")
    plate = cv2.resize(scene, (out_w, out_h), interpolation=cv2.INTER_LINEAR) if (out_w, out_h) != (width, height) \
        else scene
    write_rgb(out_dir / "background.png", plate)  # the clean plate: the empty scene (--background)
    return result
