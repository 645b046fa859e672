"""The three backends agree on CUDA: same pixel for a Gaussian, same images, same gradient directions.

Marked `gpu`; skipped with the reason on a machine without CUDA, and per backend where one is not
installed. The agreement figures are logged (run with `-o log_cli=true --log-cli-level=INFO` to see them).
"""

from __future__ import annotations

import logging

import pytest
import torch

from dynavatar.cameras import Camera
from dynavatar.render import rasterize, rasterize_frames, resolve_backend
from dynavatar.render.backends import BACKENDS, get_backend, is_installed
from dynavatar.render.random_scenes import random_scene

log = logging.getLogger(__name__)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA device (torch.cuda.is_available() is False)"),
]


def installed(names=BACKENDS) -> list[str]:
    return [n for n in names if is_installed(n)]


def need(name: str) -> None:
    if not is_installed(name):
        pytest.skip(f"backend {name!r} not installed: {get_backend(name).install_hint}")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def render_with_grads(scene, backend: str, weights) -> dict:
    """Render, back-propagate a fixed random loss of image, alpha and depth, return outputs and gradients."""
    leaves = scene.detached_leaves()
    w2c = scene.camera.world_to_camera.clone().requires_grad_(True)
    c = scene.camera
    camera = Camera(w2c, c.fx, c.fy, c.cx, c.cy, c.width, c.height, c.near, c.far)
    out = rasterize(leaves.means, leaves.quats, leaves.scales, leaves.opacities, leaves.colors, camera,
                    scene.background, backend=backend)
    w_img, w_alpha, w_depth = weights
    loss = (out.image * w_img).sum() + (out.alpha * w_alpha).sum() + 0.1 * (out.depth * w_depth).sum()
    loss.backward()
    return dict(image=out.image.detach(), alpha=out.alpha.detach(), depth=out.depth.detach(),
                visible=out.visible, means2d=out.means2d.detach(), grad_means2d=out.means2d.grad,
                means=leaves.means.grad, quats=leaves.quats.grad, scales=leaves.scales.grad,
                opacities=leaves.opacities.grad, colors=leaves.colors.grad, translation=w2c.grad[:3, 3])


def random_weights(height: int, width: int, device) -> tuple:
    gen = torch.Generator().manual_seed(7)
    return tuple(torch.randn(*shape, generator=gen).to(device) for shape in
                 ((height, width, 3), (height, width), (height, width)))


def test_auto_picks_a_cuda_backend_for_cuda_tensors():
    cuda_backends = installed(("gsplat", "inria"))
    if not cuda_backends:
        pytest.skip("neither gsplat nor inria is installed")
    assert resolve_backend("auto", torch.device("cuda")) == cuda_backends[0]


def test_every_backend_lands_a_gaussian_at_the_same_pixel_with_an_off_centre_principal_point():
    w2c = torch.eye(4, device="cuda")
    w2c[:3, 3] = torch.tensor([0.05, -0.1, 0.3])
    camera = Camera(w2c, 60.0, 55.0, 20.3, 30.7, 64, 48)
    u, v, z = 40.8, 17.8, 2.5  # fractions 0.8: the pixel-centre convention decides the pixel
    cam_point = torch.tensor([(u - camera.cx) / camera.fx * z, (v - camera.cy) / camera.fy * z, z], device="cuda")
    means = (cam_point - w2c[:3, 3])[None]
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], device="cuda")
    scales = torch.full((1, 3), 0.015, device="cuda")
    opac, colors = torch.tensor([0.8], device="cuda"), torch.tensor([[1.0, 0.5, 0.25]], device="cuda")
    results = {}
    for backend in installed():
        w = w2c.clone().requires_grad_(True)
        cam = Camera(w, camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height)
        out = rasterize(means, quats, scales, opac, colors, cam, torch.zeros(3, device="cuda"), backend=backend)
        row, col = divmod(int(out.alpha.argmax()), camera.width)
        assert (col, row) == (40, 17), backend
        torch.testing.assert_close(out.means2d.detach()[0], torch.tensor([u, v], device="cuda"), atol=1e-3, rtol=0)
        # A loss that pulls the blob right and down: dL/du, dL/dv in pixels, same for every backend.
        ramp = torch.arange(64, device="cuda")[None, :] + torch.arange(48, device="cuda")[:, None]
        (out.alpha * ramp).sum().backward()
        results[backend] = (out.means2d.grad[0].clone(), w.grad[:3, 3].clone(), out.image.detach())
        log.info("landing %s: pixel (%d, %d) dL/dpix %s dL/dt %s", backend, col, row,
                 out.means2d.grad[0].tolist(), w.grad[:3, 3].tolist())
    ref = results["torch"]
    for backend, (g2d, gt, image) in results.items():
        torch.testing.assert_close(g2d, ref[0], rtol=2e-2, atol=1e-3, msg=f"{backend} dL/dpixel")
        torch.testing.assert_close(gt, ref[1], rtol=2e-2, atol=1e-3, msg=f"{backend} dL/dtranslation")
        assert float((image - ref[2]).abs().max()) < 1e-2, backend


@pytest.mark.parametrize("n", [1_000, 10_000, 100_000])
def test_backends_agree_on_random_scenes(n):
    reference = "inria" if is_installed("inria") else "gsplat"
    need(reference)
    scene = random_scene(n, 512, 512, seed=n, device="cuda")
    weights = random_weights(512, 512, "cuda")
    ref = render_with_grads(scene, reference, weights)
    compared = [b for b in ("torch", "gsplat") if b != reference and is_installed(b)]
    for backend in compared:
        got = render_with_grads(scene, backend, weights)
        diff = (got["image"] - ref["image"]).abs()
        stats = dict(mean=float(diff.mean()), max=float(diff.max()),
                     alpha_mean=float((got["alpha"] - ref["alpha"]).abs().mean()),
                     depth_mean=float((got["depth"] - ref["depth"]).abs().mean()),
                     visible_same=float((got["visible"] == ref["visible"]).float().mean()))
        cosines = {k: cosine(got[k], ref[k]) for k in
                   ("means", "quats", "scales", "opacities", "colors", "grad_means2d", "translation")}
        norm_ratio = float(got["grad_means2d"].norm() / ref["grad_means2d"].norm())
        log.info("agreement n=%d %s vs %s: %s cos %s |dL/dmeans2d| ratio %.4f", n, backend, reference, stats,
                 {k: round(v, 5) for k, v in cosines.items()}, norm_ratio)
        assert stats["mean"] <= 1e-4, (backend, stats)
        if backend == "torch" and reference == "inria":
            assert stats["max"] <= 1e-2, stats
        assert stats["alpha_mean"] <= 1e-4 and stats["depth_mean"] <= 1e-3, (backend, stats)
        for key, value in cosines.items():
            assert value >= 0.99, (backend, key, value)
        assert 0.95 < norm_ratio < 1.05, (backend, norm_ratio)


@pytest.mark.parametrize("backend", ["gsplat", "inria", "torch"])
def test_frames_in_one_call_equal_frames_one_by_one(backend):
    """rasterize_frames (one gsplat call for all frames) gives each frame's rasterize() image and gradients."""
    need(backend)
    scenes = [random_scene(2000, 64, 48, seed=s, device="cuda") for s in (1, 2, 3)]
    stacked = [torch.stack([getattr(s, k) for s in scenes]).detach().requires_grad_(True)
               for k in ("means", "quats", "scales", "opacities", "colors")]
    cameras = [s.camera for s in scenes]
    out = rasterize_frames(*stacked, cameras, scenes[0].background, backend=backend)
    out.image.square().sum().backward()
    for b, scene in enumerate(scenes):
        leaves = scene.detached_leaves()
        one = rasterize(leaves.means, leaves.quats, leaves.scales, leaves.opacities, leaves.colors, scene.camera,
                        scene.background, backend=backend)
        one.image.square().sum().backward()
        assert (out.image[b] - one.image).abs().max().item() < 1e-5
        assert torch.allclose(out.alpha[b], one.alpha, atol=1e-5)
        # The per-Gaussian statistics: the same radii, and each frame's dL/d(pixel position) in one leaf.
        assert torch.equal(out.radii[b], one.radii) and torch.equal(out.visible[b], one.visible)
        assert out.means2d.grad.shape == (3, 2000, 2)
        assert cosine(out.means2d.grad[b], one.means2d.grad) > 0.9999
        assert cosine(stacked[0].grad[b], leaves.means.grad) > 0.9999
        assert cosine(stacked[4].grad[b], leaves.colors.grad) > 0.9999


def test_gsplat_draws_world_space_gaussians_as_their_camera_space_transform():
    """Without a camera gradient gsplat transforms the world-space Gaussians itself (its view matrix):
    the same images, statistics and gradients as the PyTorch transform, which a refined camera takes."""
    need("gsplat")
    scene = random_scene(20_000, 256, 192, seed=11, device="cuda")
    weights = random_weights(192, 256, "cuda")
    outputs = []
    for refined in (False, True):
        leaves = scene.detached_leaves()
        c = scene.camera
        w2c = c.world_to_camera.clone().requires_grad_(refined)
        camera = Camera(w2c, c.fx, c.fy, c.cx, c.cy, c.width, c.height, c.near, c.far)
        out = rasterize(*leaves.args()[:5], camera, scene.background, backend="gsplat")
        ((out.image * weights[0]).sum() + (out.alpha * weights[1]).sum()
         + 0.1 * (out.depth * weights[2]).sum()).backward()
        outputs.append((out, leaves))
    (world, world_leaves), (cam, cam_leaves) = outputs
    assert float((world.image - cam.image).detach().abs().max()) < 1e-4
    assert float((world.depth - cam.depth).detach().abs().max()) < 1e-3
    assert float((world.radii != cam.radii).float().mean()) < 1e-3
    assert cosine(world.means2d.grad, cam.means2d.grad) > 0.9999
    for key in ("means", "quats", "scales", "opacities", "colors"):
        assert cosine(getattr(world_leaves, key).grad, getattr(cam_leaves, key).grad) > 0.9999, key
    rgb_only = rasterize(*scene.args(), backend="gsplat", depth=False)
    assert rgb_only.depth is None and float((rgb_only.image - world.image.detach()).abs().max()) < 1e-6
