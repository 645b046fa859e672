"""mp4 videos from frames, through imageio's ffmpeg plugin (imageio-ffmpeg ships the binary)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import imageio.v2 as imageio
import numpy as np
import torch

from ..files import temporary_beside

log = logging.getLogger(__name__)


def _as_uint8_frame(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    """[H,W,3] uint8 (numpy or tensor) -> contiguous numpy [H,W,3] uint8."""
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"video frames must be [H,W,3] uint8, got {frame.dtype} {frame.shape}")
    return frame


def pad_to_even(frame: np.ndarray) -> np.ndarray:
    """Pad [H,W,3] by repeating the last row/column so H and W are even (yuv420p needs it)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_mp4(path: str | Path, frames: Iterable[np.ndarray | torch.Tensor], fps: float = 25.0,
              quality: float = 8.0) -> int:
    """Encode [H,W,3] uint8 frames (all one size) to an H.264 mp4; returns the frame count.

    Odd sizes are padded to even by edge repetition, never rescaled. Written to a temp file and
    renamed, so a failed run leaves no half-written video under `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_beside(path, ".mp4")
    os.close(fd)
    count = 0
    size = None
    writer = None
    try:
        # macro_block_size=1: imageio would otherwise resize to multiples of 16.
        writer = imageio.get_writer(str(tmp), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    quality=quality, pixelformat="yuv420p", macro_block_size=1)
        for frame in frames:
            frame = _as_uint8_frame(frame)
            if size is None:
                size = frame.shape
            elif frame.shape != size:
                raise ValueError(f"frame {count} has shape {frame.shape}, the first had {size}")
            writer.append_data(pad_to_even(frame))
            count += 1
        if count == 0:
            raise ValueError("no frames to write")
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        # imageio's context exit skips close() on errors, leaving ffmpeg running (and writing the
        # file later): close explicitly, then remove the partial output.
        if writer is not None:
            try:
                writer.close()
            except (OSError, RuntimeError, ValueError) as err:
                log.debug("closing the failed video writer: %s", err)
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote %d frames to %s", count, path)
    return count
