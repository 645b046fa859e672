"""Image IO for datasets: RGB frames, soft masks and semantic label maps as PNG files.

Decoding goes through Pillow (no OpenCV needed). Every reader accepts what the IMavatar preprocessing
and common tools write: RGB or RGBA frames (alpha dropped), 8- or 16-bit grey or RGB masks (one
channel taken), grey or palette label maps. Problems raise `DatasetError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError

# What Pillow raises for files that exist but are not readable images (SyntaxError: broken PNG chunks).
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
PNG_COMPRESS_LEVEL = 3  # fast to write; the generator writes thousands of frames


def _load(path: str | Path, what: str, palette_indices: bool = False) -> Image.Image:
    """Open and fully decode an image, turning any failure into a DatasetError naming the file.

    Palette images become RGBA unless `palette_indices` (label maps store the label as the index).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy() if img.mode != "P" or palette_indices else img.convert("RGBA")
    except DECODE_ERRORS as exc:
        raise DatasetError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc})") from None


_PNG_END = b"IEND"  # the chunk that closes every PNG
_TAIL = 1024  # bytes at a file's end searched for it (some tools append a little after it)


def _png_complete(path: Path) -> bool:
    """Whether a PNG file still ends with its closing chunk (a file cut short by a copy does not)."""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - _TAIL))
        return _PNG_END in handle.read()


def check_header(path: str | Path, what: str) -> tuple[int, int]:
    """Read only an image's header and, for a PNG, its last bytes (cheap: no decoding), so that a
    missing, unreadable or truncated file is a DatasetError; returns the image's (height, width)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    try:
        with Image.open(path) as img:
            if img.width < 1 or img.height < 1:
                raise ValueError(f"empty image ({img.width}x{img.height})")
            if img.format == "PNG" and not _png_complete(path):
                raise OSError("the file is truncated: its PNG end chunk is missing")
            return img.height, img.width
    except DECODE_ERRORS as exc:
        raise DatasetError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc})") from None


def size_mismatch(what: str, size: tuple[int, int], image_size: tuple[int, int]) -> str | None:
    """The problem of a map (mask, semantic map) whose (height, width) is not the image's, or None.
    The reader never resizes one to fit: a map of another size belongs to another frame or crop."""
    if size == image_size:
        return None
    return f"{what} size {size[1]}x{size[0]} differs from the image's {image_size[1]}x{image_size[0]}"


def _to_float(img: Image.Image) -> np.ndarray:
    """Decoded image -> float32 array [h, w] or [h, w, c] in [0, 1] (16-bit scaled by 65535)."""
    if img.mode in _SIXTEEN_BIT:
        return np.asarray(img, dtype=np.float32) / 65535.0
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        return arr / 255.0 if arr.max(initial=0.0) > 1.0 else arr
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def read_rgb(path: str | Path) -> np.ndarray:
    """An RGB(A) or grey frame -> [h, w, 3] float32 in [0, 1]; alpha is dropped (the mask file is the matte)."""
    arr = _to_float(_load(path, "image"))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.shape[2] == 2:  # grey + alpha
        arr = np.repeat(arr[..., :1], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def read_mask(path: str | Path) -> np.ndarray:
    """A grey or RGB(A) matte -> [h, w] float32 in [0, 1]; of a colour file the first channel is taken."""
    arr = _to_float(_load(path, "mask"))
    return np.ascontiguousarray(arr if arr.ndim == 2 else arr[..., 0])


def read_labels(path: str | Path) -> np.ndarray:
    """A face-parsing label map (grey, palette indices or RGB with equal channels) -> [h, w] uint8."""
    arr = np.asarray(_load(path, "semantic map", palette_indices=True))
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.uint8)


def resize(arr: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """Resize [h, w] or [h, w, c] float32 to `size_hw` = (H, W); Pillow's bilinear filter widens its
    support when shrinking, so downsampling is anti-aliased (unlike OpenCV's default)."""
    height, width = int(size_hw[0]), int(size_hw[1])
    if arr.shape[:2] == (height, width):
        return arr
    channels = arr[..., None] if arr.ndim == 2 else arr
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(channels[..., c], dtype=np.float32))
                               .resize((width, height), Image.Resampling.BILINEAR))
                    for c in range(channels.shape[2])], axis=2)
    return out[..., 0] if arr.ndim == 2 else out


def resize_labels(labels: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """Resize a label map [h, w] with nearest neighbour (labels must not blend)."""
    height, width = int(size_hw[0]), int(size_hw[1])
    if labels.shape[:2] == (height, width):
        return labels
    return np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((width, height), Image.Resampling.NEAREST))


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Float in [0, 1] -> uint8 (rounded): what a PNG holds and what the reader caches."""
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_rgb(path: str | Path, rgb: np.ndarray) -> None:
    """[H, W, 3] float in [0, 1] -> 8-bit RGB PNG."""
    Image.fromarray(to_uint8(rgb)).save(path, compress_level=PNG_COMPRESS_LEVEL)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """[H, W] float in [0, 1] -> 8-bit grey PNG."""
    Image.fromarray(to_uint8(mask)).save(path, compress_level=PNG_COMPRESS_LEVEL)


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    """[H, W] integer labels (0..255) -> 8-bit grey PNG."""
    Image.fromarray(labels.astype(np.uint8)).save(path, compress_level=PNG_COMPRESS_LEVEL)
