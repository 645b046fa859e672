"""Rendering: one `rasterize()` contract over three backends.

- `torch`: pure PyTorch (CPU and GPU), the 3DGS CUDA rasterizer's maths and constants.
- `gsplat`: nerfstudio's gsplat (PyPI, CUDA).
- `inria`: graphdeco-inria's diff-gaussian-rasterization (from source, CUDA).

Choose with `backend=` (conf `model.rasterizer`): auto | torch | gsplat | inria. The backends are
records of `backends.REGISTRY`; adding one is an adapter module and a record.
"""

from .backends import available_backends, resolve_backend
from .output import RasterOutput, RasterStats
from .rasterize import rasterize, rasterize_frames

__all__ = ["rasterize", "rasterize_frames", "RasterOutput", "RasterStats", "available_backends", "resolve_backend"]
