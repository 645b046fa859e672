"""Step 6, a contact sheet for a quick look: a row per video, a few frames each, with the mask
outline (green), the fitted FLAME landmarks (red) and the observed landmarks (blue)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

TILE = 256  # largest tile side in pixels
COLUMNS = 6
MASK_COLOUR, FITTED_COLOUR, OBSERVED_COLOUR = (0, 220, 0), (230, 30, 30), (40, 90, 255)


def annotate(image: np.ndarray, alpha: np.ndarray, fitted: np.ndarray, observed: np.ndarray, tile: int) -> np.ndarray:
    """One tile [tile, tile, 3] uint8: image [H, W, 3] uint8, alpha [H, W] in [0, 1], landmarks
    fitted / observed [L, 2] in the image's pixels (NaN rows skipped)."""
    import cv2

    scale = tile / image.shape[0]
    out = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    matte = cv2.resize(alpha.astype(np.float32), (tile, tile), interpolation=cv2.INTER_LINEAR)
    contours, _ = cv2.findContours((matte > 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(out)
    cv2.drawContours(out, contours, -1, MASK_COLOUR, 1)
    radius = max(1, tile // 160)
    for points, colour in ((observed, OBSERVED_COLOUR), (fitted, FITTED_COLOUR)):
        for x, y in points:
            if np.isfinite(x) and np.isfinite(y):
                centre = (int(round((x + 0.5) * scale - 0.5)), int(round((y + 0.5) * scale - 0.5)))
                cv2.circle(out, centre, radius, colour, -1)
    return out


def contact_sheet(rows: Sequence[tuple[str, list[np.ndarray]]], tile: int) -> np.ndarray:
    """Rows of (video name, tiles [tile, tile, 3]) -> one image, the name written on each row's first tile."""
    import cv2

    width = COLUMNS * tile
    sheet = []
    for name, tiles in rows:
        row = np.full((tile, width, 3), 255, np.uint8)
        for k, t in enumerate(tiles[:COLUMNS]):
            row[:, k * tile:(k + 1) * tile] = t
        cv2.putText(row, name, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.putText(row, name, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        sheet.append(row)
    return np.concatenate(sheet, axis=0)


def sheet_frames(count: int) -> list[int]:
    """Indices of the frames shown for a video of `count` frames (evenly spread, first and last included)."""
    return sorted(set(np.linspace(0, count - 1, min(COLUMNS, count)).round().astype(int).tolist()))


def write_contact_sheet(path: Path, rows: Sequence[tuple[str, list[np.ndarray]]], tile: int) -> None:
    from PIL import Image

    Image.fromarray(contact_sheet(rows, tile)).save(path)
