"""Step 1, frames: decode a video with imageio-ffmpeg and choose the frames to keep.

Frames are streamed (a long video is never held in memory at once). Each kept frame carries its
index in the source video (0-based, at the source frame rate), which is how `--landmarks` files and
`--masks` folders name frames.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import PreprocessError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: float  # source frame rate
    duration: float  # seconds (from the container; may be approximate)


@dataclass(frozen=True)
class FrameSelection:
    """Which frames to keep: `fps` (None = every source frame), start/end in seconds, at most `max_frames`."""

    fps: float | None = None
    start: float = 0.0
    end: float | None = None
    max_frames: int | None = None

    def validate(self) -> None:
        if self.fps is not None and not self.fps > 0:
            raise PreprocessError(f"--fps must be a positive number of frames per second, got {self.fps}")
        if self.start < 0:
            raise PreprocessError(f"--start must be >= 0 seconds, got {self.start}")
        if self.end is not None and self.end <= self.start:
            raise PreprocessError(f"--end ({self.end} s) must come after --start ({self.start} s)")
        if self.max_frames is not None and self.max_frames < 1:
            raise PreprocessError(f"--max_frames must be >= 1, got {self.max_frames}")


def _ffmpeg():
    import imageio_ffmpeg  # a dependency of the package (videos of the evaluation)

    return imageio_ffmpeg


def ffmpeg_reason(message: str) -> str:
    """ffmpeg's reason for a failure, in a few words, from the log that imageio-ffmpeg puts in its
    error (two dozen lines of version banner and stream listing)."""
    lines = [re.sub(r"^\[[^\]]*\]\s*", "", line).strip() for line in str(message).splitlines()]
    lines = [line for line in lines if line]
    if any(line.startswith("Input #") for line in lines) and not any("Video:" in line for line in lines):
        return "no video stream: the file holds no frames"
    for line in reversed(lines):  # "Error opening input files: Invalid data found when processing input"
        if line.startswith("Error") and ": " in line:
            return line.split(": ", 1)[1]
    return lines[-1][:200] if lines else "unknown error"


def probe_video(path: str | Path) -> VideoInfo:
    """Size, frame rate and duration of a video; PreprocessError when it is missing or unreadable."""
    path = Path(path)
    if path.is_dir():
        raise PreprocessError(f"{path}: is a folder, not a video file (give each video file to --video / "
                              f"--test-video)")
    if not path.is_file():
        raise PreprocessError(f"{path}: video not found (check the path given to --video / --test-video)")
    reader = _ffmpeg().read_frames(str(path))
    try:
        meta = next(reader)
    except (RuntimeError, OSError, StopIteration) as exc:
        raise PreprocessError(f"{path}: cannot read the video ({ffmpeg_reason(str(exc))}); convert it to mp4 (H.264) "
                              f"with ffmpeg and try again") from None
    finally:
        reader.close()
    width, height = (int(v) for v in meta["size"])
    fps = float(meta.get("fps") or 0.0)
    if not fps > 0 or not math.isfinite(fps):
        raise PreprocessError(f"{path}: the video reports no frame rate; re-encode it with ffmpeg (-r 25)")
    return VideoInfo(path, width, height, fps, float(meta.get("duration") or 0.0))


def selected(index: int, source_fps: float, selection: FrameSelection) -> bool | None:
    """Whether source frame `index` is kept (True/False), or None once past the end."""
    time = index / source_fps
    if selection.end is not None and time >= selection.end - 1e-9:
        return None
    if time < selection.start - 1e-9:
        return False
    if selection.fps is None or selection.fps >= source_fps:
        return True
    first = math.ceil(selection.start * source_fps - 1e-9)
    step = source_fps / selection.fps  # source frames per kept frame
    k = round((index - first) / step)
    return index == first + round(k * step)


def iter_frames(info: VideoInfo, selection: FrameSelection) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (source frame index, RGB frame [H, W, 3] uint8) for the selected frames, in order."""
    reader = _ffmpeg().read_frames(str(info.path), pix_fmt="rgb24")
    kept = 0
    try:
        next(reader)  # the metadata
        for index, raw in enumerate(reader):
            keep = selected(index, info.fps, selection)
            if keep is None:
                break
            if not keep:
                continue
            frame = np.frombuffer(raw, dtype=np.uint8)
            if frame.size != info.width * info.height * 3:
                raise PreprocessError(f"{info.path}: frame {index} has {frame.size} bytes, expected "
                                      f"{info.width}x{info.height}x3; re-encode the video with ffmpeg")
            yield index, frame.reshape(info.height, info.width, 3)
            kept += 1
            if selection.max_frames is not None and kept >= selection.max_frames:
                break
    except RuntimeError as exc:  # ffmpeg failed part-way
        raise PreprocessError(f"{info.path}: decoding failed ({ffmpeg_reason(str(exc))}); re-encode the video with "
                              f"ffmpeg") from None
    finally:
        reader.close()

