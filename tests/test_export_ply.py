"""Standard 3DGS .ply: header layout, stored (pre-activation) values, round trip."""

import math

import numpy as np
import pytest
import torch
from plyfile import PlyData

from dynavatar.export.ply import SH_C0, load_gaussians_ply, save_gaussians_ply


def _gaussians(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1)
    scales = torch.rand(n, 3, generator=g) * 0.02 + 1e-3
    opacities = torch.rand(n, generator=g) * 0.98 + 0.01
    colors = torch.rand(n, 3, generator=g)
    return means, quats, scales, opacities, colors


def test_round_trip(tmp_path):
    g = _gaussians()
    path = save_gaussians_ply(tmp_path / "out" / "avatar.ply", *g)
    back = load_gaussians_ply(path)
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), g, back):
        assert b.shape == a.shape and b.dtype == torch.float32
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    assert [p.name for p in tmp_path.joinpath("out").iterdir()] == ["avatar.ply"]  # no temp file left


def test_header_and_stored_values(tmp_path):
    means, quats, scales, opacities, colors = _gaussians(4)
    quats = quats * 3.0  # not normalised on input: stored normalised
    save_gaussians_ply(tmp_path / "a.ply", means, quats, scales, opacities, colors)
    ply = PlyData.read(str(tmp_path / "a.ply"))
    v = ply["vertex"]
    names = [p.name for p in v.properties]
    assert names == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                     "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(p.val_dtype in ("f4", "float32") for p in v.properties) and not ply.text
    assert np.allclose(v["f_dc_1"], (colors[:, 1].numpy() - 0.5) / SH_C0, atol=1e-5)
    o = opacities.double().numpy()
    assert np.allclose(v["opacity"], np.log(o / (1 - o)), atol=1e-5)
    assert np.allclose(v["scale_2"], np.log(scales[:, 2].numpy()), atol=1e-5)
    rot = np.stack([v[f"rot_{i}"] for i in range(4)], 1)
    assert np.allclose(np.linalg.norm(rot, axis=1), 1.0, atol=1e-6)
    assert np.allclose(rot, torch.nn.functional.normalize(quats, dim=1).numpy(), atol=1e-6)
    assert (np.stack([v["nx"], v["ny"], v["nz"]]) == 0).all()


def test_extremes_stay_finite(tmp_path):
    means, quats, scales, opacities, colors = _gaussians(3)
    opacities = torch.tensor([0.0, 1.0, 0.5])
    scales[0] = 0.0
    save_gaussians_ply(tmp_path / "a.ply", means, quats, scales, opacities, colors)
    v = PlyData.read(str(tmp_path / "a.ply"))["vertex"]
    assert all(np.isfinite(v[n]).all() for n in ("opacity", "scale_0"))
    back = load_gaussians_ply(tmp_path / "a.ply")
    assert back.opacities[0] < 1e-6 and back.opacities[1] > 1 - 1e-6 and math.isclose(back.opacities[2], 0.5)


def test_sh_padding_and_bad_shapes(tmp_path):
    g = _gaussians(5)
    save_gaussians_ply(tmp_path / "sh3.ply", *g, sh_degree=3)
    v = PlyData.read(str(tmp_path / "sh3.ply"))["vertex"]
    rest = [p.name for p in v.properties if p.name.startswith("f_rest_")]
    assert len(rest) == 45 and all((v[n] == 0).all() for n in rest)
    assert torch.allclose(load_gaussians_ply(tmp_path / "sh3.ply").colors, g[4], atol=1e-6)
    with pytest.raises(ValueError, match="opacities"):
        save_gaussians_ply(tmp_path / "bad.ply", *g[:3], g[3][:, None], g[4])
    assert not (tmp_path / "bad.ply").exists()
