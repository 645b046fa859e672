"""Dataset problems: one record per defect, naming the file (and frame) at fault.

The reader raises the first problem it meets as a `DatasetError`; the checker collects all of them,
so both describe a defect with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DatasetError


@dataclass(frozen=True)
class Problem:
    """One defect of a dataset: `path` is the file or folder at fault, `frame` names the frame if any."""

    path: str
    message: str
    frame: str | None = None  # e.g. "frame 12" (file name number) or "frames[3]" (json index)

    def __str__(self) -> str:
        where = f"{self.path} ({self.frame})" if self.frame else self.path
        return f"{where}: {self.message}"


def frame_label(frame_id: int | None, index: int) -> str:
    """How a frame is named in messages: by its file number when known, else by its json index."""
    return f"frame {frame_id}" if frame_id is not None else f"frames[{index}]"


def raise_first(problems: list[Problem], hint: str = "") -> None:
    """Raise a DatasetError for the first problem (counting the rest), or return when there are none."""
    if not problems:
        return
    message = str(problems[0])
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem(s); scripts/check_dataset.py lists them all)"
    if hint:
        message += f". {hint}"
    raise DatasetError(message)
