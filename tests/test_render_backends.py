"""Backend selection, its errors, the entry point's checks, and the camera conversion of the Inria adapter (CPU)."""

from __future__ import annotations

import pytest
import torch

from dynavatar.cameras import Camera
from dynavatar.errors import BackendUnavailableError, DynAvatarError
from dynavatar.render import available_backends, rasterize, resolve_backend
from dynavatar.render import backends as backends_module
from dynavatar.render.inria_backend import projection_matrix
from dynavatar.render.random_scenes import random_scene

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def installed_only(monkeypatch, *names: str) -> None:
    monkeypatch.setattr(backends_module, "is_installed", lambda name: name == "torch" or name in names)


def test_torch_is_always_available_and_first():
    assert available_backends()[0] == "torch"
    assert set(available_backends()) <= {"torch", "gsplat", "inria"}


def test_auto_picks_torch_for_cpu_tensors_even_with_cuda_backends_installed(monkeypatch):
    installed_only(monkeypatch, "gsplat", "inria")
    assert resolve_backend("auto", CPU) == "torch"


@pytest.mark.parametrize("installed, expected", [(("gsplat", "inria"), "gsplat"), (("inria",), "inria"), ((), "torch")])
def test_auto_picks_the_fastest_installed_cuda_backend_for_cuda_tensors(monkeypatch, installed, expected):
    installed_only(monkeypatch, *installed)
    assert resolve_backend("auto", CUDA) == expected


@pytest.mark.parametrize("name, hint", [("gsplat", 'pip install -e ".[gsplat]"'), ("inria", "git clone --recursive")])
def test_a_missing_backend_is_one_clear_error_saying_how_to_install_it(monkeypatch, name, hint):
    installed_only(monkeypatch)
    with pytest.raises(BackendUnavailableError) as err:
        resolve_backend(name, CUDA)
    message = str(err.value)
    assert name in message and "model.rasterizer" in message and hint in message
    assert isinstance(err.value, DynAvatarError)
    if name == "inria":
        assert "cstdint" in message


def test_a_cuda_backend_with_cpu_tensors_is_refused(monkeypatch):
    installed_only(monkeypatch, "gsplat")
    assert resolve_backend("gsplat", CUDA) == "gsplat"
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        resolve_backend("gsplat", CPU)


def test_unknown_backend_names_the_choices():
    with pytest.raises(BackendUnavailableError, match="auto, torch, gsplat, inria"):
        resolve_backend("opengl", CPU)
    scene = random_scene(5, 16, 16)
    with pytest.raises(BackendUnavailableError):
        rasterize(*scene.args(), backend="opengl")


def test_rasterize_checks_shapes_and_draws_nothing_for_no_gaussians():
    scene = random_scene(5, 20, 18)
    with pytest.raises(ValueError, match="quats \\[N,4\\]"):
        rasterize(scene.means, scene.quats[:, :3], scene.scales, scene.opacities, scene.colors, scene.camera,
                  scene.background, backend="torch")
    bg = torch.tensor([0.1, 0.2, 0.3])
    empty = torch.zeros(0, 3)
    out = rasterize(empty, torch.zeros(0, 4), empty, torch.zeros(0), empty, scene.camera, bg, backend="auto")
    assert out.image.shape == (18, 20, 3) and out.radii.shape == (0,) and out.means2d.shape == (0, 2)
    torch.testing.assert_close(out.image, bg.expand(18, 20, 3))


def test_outputs_have_the_contract_shapes_and_types():
    scene = random_scene(300, 37, 29, seed=2).detached_leaves()
    out = rasterize(*scene.args(), backend="torch")
    assert out.image.shape == (29, 37, 3) and out.alpha.shape == (29, 37) and out.depth.shape == (29, 37)
    assert out.radii.shape == (300,) and out.radii.dtype == torch.int32
    assert out.visible.dtype == torch.bool and torch.equal(out.visible, out.radii > 0)
    assert out.means2d.shape == (300, 2)
    assert 0 < int(out.visible.sum()) < 300  # some of the scene lies outside the view
    out.image.sum().backward()
    assert out.means2d.grad is not None and out.means2d.grad.shape == (300, 2)
    assert float(out.means2d.grad[~out.visible].abs().max()) == 0.0
    assert float(out.means2d.grad[out.visible].abs().sum()) > 0.0


def test_inria_projection_matrix_honours_an_off_centre_principal_point():
    camera = Camera(torch.eye(4), 70.0, 65.0, 21.3, 38.9, 64, 48, near=0.01, far=100.0)
    points = torch.tensor([[0.3, -0.2, 2.0], [-0.5, 0.4, 3.5], [0.0, 0.0, 1.0]])
    hom = torch.cat([points, torch.ones(3, 1)], dim=-1) @ projection_matrix(camera).T  # [3, 4]
    ndc = hom[:, :3] / hom[:, 3:]
    expected, _ = camera.project(points)
    # The kernel's ndc2Pix puts pixel centres at integers: ((ndc + 1) * S - 1) / 2 = u - 0.5.
    kernel_pixels = ((ndc[:, :2] + 1) * torch.tensor([64.0, 48.0]) - 1) / 2
    torch.testing.assert_close(kernel_pixels + 0.5, expected, atol=1e-4, rtol=0)
    assert float(ndc[2, 2]) == pytest.approx((1.0 - 0.01) * 100.0 / (100.0 - 0.01) / 1.0, abs=1e-5)


def test_every_backend_is_a_record_with_its_capabilities():
    records = {b.name: b for b in backends_module.REGISTRY}
    assert tuple(records) == backends_module.BACKENDS == ("torch", "gsplat", "inria")
    assert records["torch"].devices == ("cpu", "cuda") and records["torch"].package is None
    assert all(records[n].devices == ("cuda",) and records[n].package and records[n].install_hint
               for n in ("gsplat", "inria"))
    assert records["gsplat"].frames is not None and records["inria"].frames is None
    assert callable(records["torch"].rasterize_function()) and records["torch"].frames_function() is None


def test_a_new_backend_is_one_record_and_is_dispatched_through_the_registry(monkeypatch):
    from dynavatar.render.torch_backend import rasterize_torch
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return rasterize_torch(*args, **kwargs)

    monkeypatch.setattr(rasterize_torch.__module__ + ".counted", counted, raising=False)
    record = backends_module.Backend("counted", "torch_backend:counted", devices=("cpu",), preference=-1)
    monkeypatch.setattr(backends_module, "REGISTRY", backends_module.REGISTRY + (record,))
    assert "counted" in available_backends() and resolve_backend("auto", CPU) == "counted"
    assert resolve_backend("auto", CUDA) != "counted"  # it declares CPU tensors only
    with pytest.raises(BackendUnavailableError, match="CPU"):
        resolve_backend("counted", CUDA)
    scene = random_scene(50, 16, 12, seed=1)
    out = rasterize(*scene.args(), backend="counted")
    assert calls == [1] and torch.equal(out.image, rasterize(*scene.args(), backend="torch").image)


def test_a_backend_that_takes_view_matrices_gets_world_space_gaussians_unless_the_camera_needs_gradients(monkeypatch):
    """A `view_matrix` backend is handed the world-space Gaussians and the view matrix (it transforms
    them itself); where the camera is refined, the PyTorch transform runs instead and carries its gradient."""
    from dynavatar.render import rasterize_frames
    from dynavatar.render.projection import to_camera
    from dynavatar.render.torch_backend import rasterize_torch
    given = []

    def viewing(means, quats, *rest, depth=True, view=None):
        given.append(view)
        if view is not None:
            means, quats = to_camera(means, quats, view)
        return rasterize_torch(means, quats, *rest, depth=depth)

    monkeypatch.setattr(rasterize_torch.__module__ + ".viewing", viewing, raising=False)
    record = backends_module.Backend("viewing", "torch_backend:viewing", devices=("cpu",), view_matrix=True)
    monkeypatch.setattr(backends_module, "REGISTRY", backends_module.REGISTRY + (record,))
    scene = random_scene(60, 20, 16, seed=2)
    reference = rasterize(*scene.args(), backend="torch")
    out = rasterize(*scene.args(), backend="viewing")
    assert given[-1] is scene.camera.world_to_camera and torch.equal(out.image, reference.image)
    frames = rasterize_frames(*(t[None] for t in scene.args()[:5]), [scene.camera], scene.background, "viewing")
    assert given[-1].shape == (4, 4) and torch.equal(frames.image[0], reference.image)  # no frames function

    c = scene.camera
    refined = Camera(c.world_to_camera.clone().requires_grad_(True), c.fx, c.fy, c.cx, c.cy, c.width, c.height)
    out = rasterize(*scene.args()[:5], refined, scene.background, backend="viewing")
    assert given[-1] is None
    out.image.sum().backward()
    assert float(refined.world_to_camera.grad[:3, 3].abs().sum()) > 0
    with torch.no_grad():  # no gradient to carry: the backend transforms
        rasterize(*scene.args()[:5], refined, scene.background, backend="viewing")
    assert given[-1] is refined.world_to_camera
