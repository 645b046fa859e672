"""The standard 3D Gaussian splatting `.ply` (graphdeco-inria layout), written with plyfile.

One `vertex` element, binary little-endian float32 properties, in this order:
x y z | nx ny nz (zeros) | f_dc_0..2 | f_rest_0.. (only when sh_degree > 0: zeros) | opacity |
scale_0..2 | rot_0..3.
Stored values are the pre-activation parameters the 3DGS viewers expect:
f_dc = (rgb - 0.5) / C0 (degree-0 spherical harmonic, C0 = 0.28209479177387814),
opacity = logit(alpha), scale = log(scale), rot = unit quaternion (w, x, y, z).
The API takes and returns activated values: what the rasterizer consumes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from ..errors import OutputError
from ..files import temporary_beside

SH_C0 = 0.28209479177387814
_OPACITY_EPS = 1e-7   # keeps logit finite for alpha 0 or 1 (float32 still resolves 1 - 1e-7)
_SCALE_MIN = 1e-30    # keeps log finite for a zero scale
_QUAT_MIN_NORM = 1e-12


class Gaussians(NamedTuple):
    """Activated Gaussian parameters."""

    means: torch.Tensor      # [N,3]
    quats: torch.Tensor      # [N,4] unit, wxyz
    scales: torch.Tensor     # [N,3]
    opacities: torch.Tensor  # [N]
    colors: torch.Tensor     # [N,3] in [0,1]


def _np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _check_shapes(means, quats, scales, opacities, colors) -> int:
    n = means.shape[0]
    expected = {"means": (means, (n, 3)), "quats": (quats, (n, 4)), "scales": (scales, (n, 3)),
                "opacities": (opacities, (n,)), "colors": (colors, (n, 3))}
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    return n


def _property_names(sh_degree: int) -> list[str]:
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def save_gaussians_ply(path: str | Path, means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
                       opacities: torch.Tensor, colors: torch.Tensor, sh_degree: int = 0) -> Path:
    """Write activated Gaussians to a standard 3DGS .ply, atomically (temp file, then rename).

    scales must already include the point radius the renderer adds; sh_degree > 0 pads zero
    f_rest_* coefficients for viewers that insist on a fixed degree (the colour is unchanged).
    """
    n = _check_shapes(means, quats, scales, opacities, colors)
    q = _np64(quats)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), _QUAT_MIN_NORM)
    alpha = np.clip(_np64(opacities), _OPACITY_EPS, 1.0 - _OPACITY_EPS)
    columns = {
        "xyz": _np64(means),
        "normals": np.zeros((n, 3)),
        "f_dc": (_np64(colors) - 0.5) / SH_C0,
        "f_rest": np.zeros((n, 3 * ((sh_degree + 1) ** 2 - 1))),
        "opacity": np.log(alpha / (1.0 - alpha))[:, None],
        "scale": np.log(np.maximum(_np64(scales), _SCALE_MIN)),
        "rot": q,
    }
    data = np.concatenate(list(columns.values()), axis=1).astype(np.float32)  # [N, P]
    names = _property_names(sh_degree)
    records = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        records[name] = data[:, i]
    ply = PlyData([PlyElement.describe(records, "vertex")], text=False, byte_order="<")

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder: name the .ply file to write, e.g. {path / 'avatar.ply'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_beside(path, ".tmp")
    except OSError as exc:  # an unwritable place: one clear message, not a traceback
        raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            ply.write(f)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk
            raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None
        raise
    return path


def load_gaussians_ply(path: str | Path, dtype: torch.dtype = torch.float32) -> Gaussians:
    """Read a 3DGS .ply back to activated tensors (f_rest_* are ignored: colours are degree 0)."""
    vertex = PlyData.read(str(path))["vertex"]

    def cols(*names: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(vertex[n], dtype=np.float64) for n in names], axis=1))

    means = cols("x", "y", "z")
    f_dc = cols("f_dc_0", "f_dc_1", "f_dc_2")
    logit = cols("opacity")[:, 0]
    log_scale = cols("scale_0", "scale_1", "scale_2")
    rot = cols("rot_0", "rot_1", "rot_2", "rot_3")
    quats = rot / rot.norm(dim=1, keepdim=True).clamp_min(_QUAT_MIN_NORM)
    return Gaussians(
        means=means.to(dtype),
        quats=quats.to(dtype),
        scales=log_scale.exp().to(dtype),
        opacities=torch.sigmoid(logit).to(dtype),
        colors=(f_dc * SH_C0 + 0.5).to(dtype),
    )
