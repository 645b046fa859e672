"""Rendering: one `rasterize()` contract over three backends.

- `torch`: pure PyTorch (CPU and GPU), the 3DGS CUDA rasterizer's maths and constants.
- `gsplat`: nerfstudio's gsplat (PyPI, CUDA).
- `inria`: graphdeco-inria's diff-gaussian-rasterization (from source, CUDA).

Choose with `backend=` (conf `model.rasterizer`): auto | torch | gsplat | inria.
"""

from .backends import available_backends, resolve_backend
from .output import RasterOutput
from .rasterize import rasterize, rasterize_frames

__all__ = ["rasterize", "rasterize_frames", "RasterOutput", "available_backends", "resolve_backend"]
