"""The pure-PyTorch rasterizer against closed forms, an independent per-Gaussian reference, and finite differences."""

from __future__ import annotations

import math

import pytest
import torch

from dynavatar.cameras import Camera
from dynavatar.render import rasterize
from dynavatar.render.random_scenes import Scene, random_scene
from dynavatar.render.torch_backend import rasterize_torch
from dynavatar.render.projection import quaternion_to_rotation, rotation_to_quaternion, to_camera

F64 = torch.float64


def rotation_xyz(ax: float, ay: float, az: float) -> torch.Tensor:
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=F64)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=F64)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=F64)
    return rz @ ry @ rx


def posed_camera(width=48, height=40, fx=52.0, fy=47.0, cx=19.3, cy=23.6, w2c=None) -> Camera:
    if w2c is None:
        w2c = torch.eye(4, dtype=F64)
        w2c[:3, :3] = rotation_xyz(0.3, -0.2, 0.5)
        w2c[:3, 3] = torch.tensor([0.1, -0.2, 0.4], dtype=F64)
    return Camera(w2c, fx, fy, cx, cy, width, height)


def point_at_pixel(camera: Camera, u: float, v: float, z: float) -> torch.Tensor:
    """The world point that `camera` projects to pixel coordinates (u, v) at depth z."""
    cam = torch.tensor([(u - camera.cx) / camera.fx * z, (v - camera.cy) / camera.fy * z, z], dtype=F64)
    r, t = camera.world_to_camera[:3, :3], camera.world_to_camera[:3, 3]
    return r.T @ (cam - t)


def one_gaussian(mean, scale, opacity, color, dtype=F64) -> tuple:
    return (mean.reshape(1, 3).to(dtype), torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype),
            torch.full((1, 3), scale, dtype=dtype), torch.tensor([opacity], dtype=dtype),
            torch.tensor([color], dtype=dtype))


BLACK = torch.zeros(3, dtype=F64)


def test_gaussian_lands_at_the_pixel_the_opencv_camera_predicts():
    camera = posed_camera()
    # Fractional parts 0.8: pixel-centre (i + 0.5) convention -> pixel floor(u); a centre-at-integer
    # convention would pick the next pixel.
    u, v = 29.8, 13.8
    mean = point_at_pixel(camera, u, v, 3.0)
    out = rasterize(*one_gaussian(mean, 0.01, 0.8, [1.0, 1.0, 1.0]), camera, BLACK, backend="torch")
    assert out.image.shape == (40, 48, 3) and out.alpha.shape == (40, 48) and out.depth.shape == (40, 48)
    row, col = divmod(int(out.alpha.argmax()), camera.width)
    assert (col, row) == (29, 13)
    predicted, _ = camera.project(mean[None])
    torch.testing.assert_close(out.means2d.detach(), predicted, atol=1e-9, rtol=0)
    torch.testing.assert_close(out.means2d.detach()[0], torch.tensor([u, v], dtype=F64), atol=1e-9, rtol=0)
    assert out.visible.tolist() == [True] and int(out.radii[0]) > 0


def test_peak_value_and_symmetric_falloff_match_the_closed_form():
    # On the optical axis the EWA Jacobian is diag(f/z): sigma_x^2 = (fx s / z)^2 + 0.3, likewise y.
    camera = Camera(torch.eye(4, dtype=F64), 40.0, 30.0, 17.5, 9.5, 40, 30)  # off-centre principal point
    z, s, opacity = 2.0, 0.06, 0.7
    color, background = [0.2, 0.9, 0.4], torch.tensor([1.0, 0.5, 0.0], dtype=F64)
    out = rasterize(*one_gaussian(torch.tensor([0.0, 0.0, z]), s, opacity, color), camera, background, backend="torch")
    col, row = 17, 9  # pixel whose centre (17.5, 9.5) is the principal point
    c, bg = torch.tensor(color, dtype=F64), background

    def expected(alpha: float) -> torch.Tensor:
        return alpha * c + (1 - alpha) * bg

    torch.testing.assert_close(out.image[row, col], expected(opacity), atol=1e-12, rtol=0)
    var_x = (camera.fx * s / z) ** 2 + 0.3
    var_y = (camera.fy * s / z) ** 2 + 0.3
    for k in (1, 2, 3):
        alpha_x = opacity * math.exp(-0.5 * k * k / var_x)
        alpha_y = opacity * math.exp(-0.5 * k * k / var_y)
        for dc, dr, alpha in ((k, 0, alpha_x), (-k, 0, alpha_x), (0, k, alpha_y), (0, -k, alpha_y)):
            torch.testing.assert_close(out.image[row + dr, col + dc], expected(alpha), atol=1e-12, rtol=0)
            assert float(out.alpha[row + dr, col + dc]) == pytest.approx(alpha, abs=1e-12)
    assert float(out.depth[row, col]) == pytest.approx(opacity * z, abs=1e-12)
    # The fall-off is anisotropic here (fx != fy): equal steps are darker along x than along y.
    assert float(out.alpha[row, col + 2]) > float(out.alpha[row + 2, col])


def test_two_overlapping_gaussians_composite_in_depth_order():
    camera = Camera(torch.eye(4, dtype=F64), 30.0, 30.0, 16.0, 16.0, 32, 32)
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0]], dtype=F64)  # red in front of blue
    quats = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]], dtype=F64)
    scales = torch.full((2, 3), 0.3, dtype=F64)
    opac = torch.tensor([0.6, 0.8], dtype=F64)
    colors = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]], dtype=F64)
    bg = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    centre = (15, 15)  # pixel centre (15.5, 15.5), half a pixel from the mean (16, 16)
    front = rasterize(means, quats, scales, opac, colors, camera, bg, backend="torch")
    swapped = rasterize(means.flip(0), quats, scales, opac.flip(0), colors.flip(0), camera, bg, backend="torch")
    torch.testing.assert_close(front.image, swapped.image, atol=1e-12, rtol=0)  # input order does not matter

    a = front.alpha[centre]  # both Gaussians' alpha at that pixel, from each alone
    a1 = rasterize(means[:1], quats[:1], scales[:1], opac[:1], colors[:1], camera, bg, backend="torch").alpha[centre]
    a2 = rasterize(means[1:], quats[1:], scales[1:], opac[1:], colors[1:], camera, bg, backend="torch").alpha[centre]
    expected = a1 * colors[0] + (1 - a1) * a2 * colors[1] + (1 - a1) * (1 - a2) * bg
    torch.testing.assert_close(front.image[centre], expected, atol=1e-12, rtol=0)
    assert float(a) == pytest.approx(float(1 - (1 - a1) * (1 - a2)), abs=1e-12)
    assert float(front.depth[centre]) == pytest.approx(float(a1 * 2.0 + (1 - a1) * a2 * 3.0), abs=1e-12)
    assert front.image[centre][0] > front.image[centre][2]  # red in front dominates

    # Moving red behind blue flips the order.
    behind = means.clone()
    behind[0, 2] = 4.0
    back = rasterize(behind, quats, scales, opac, colors, camera, bg, backend="torch")
    assert back.image[centre][2] > back.image[centre][0]


def test_zero_opacity_leaves_the_background():
    scene = random_scene(50, 40, 36, seed=3, dtype=F64)
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=F64)
    out = rasterize(scene.means, scene.quats, scene.scales, torch.zeros(50, dtype=F64), scene.colors,
                    scene.camera, bg, backend="torch")
    torch.testing.assert_close(out.image, bg.expand(36, 40, 3), atol=0, rtol=0)
    assert float(out.alpha.abs().max()) == 0.0 and float(out.depth.abs().max()) == 0.0


def test_gaussian_behind_the_camera_or_before_near_is_culled():
    camera = Camera(torch.eye(4, dtype=F64), 30.0, 30.0, 16.0, 16.0, 32, 32, near=0.01, far=100.0)
    means = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, 0.005], [0.0, 0.0, 150.0], [0.0, 0.0, 2.0]],
                         dtype=F64, requires_grad=True)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 4, dtype=F64)
    scales = torch.full((4, 3), 0.3, dtype=F64)
    opac = torch.tensor([0.9, 0.9, 0.9, 0.0], dtype=F64)
    colors = torch.ones(4, 3, dtype=F64)
    bg = torch.zeros(3, dtype=F64)
    out = rasterize(means, quats, scales, opac, colors, camera, bg, backend="torch")
    assert out.radii.tolist()[:3] == [0, 0, 0] and out.visible.tolist() == [False, False, False, True]
    assert float(out.image.detach().abs().max()) == 0.0
    out.image.sum().backward()
    assert torch.isfinite(means.grad).all()


# ----------------------------------------------------------------------------------------------
# An independent reference: Gaussians one at a time, front to back, every pixel at once, with the
# 3DGS kernel's rules written out literally (3-sigma tile rectangle, skip, cap, stop).

def reference_render(scene: Scene) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """(image, alpha, depth, pixels that stopped early, pixel-Gaussian alphas capped at 0.99)."""
    cam = scene.camera
    w2c = cam.world_to_camera.to(F64)
    h, w = cam.height, cam.width
    jj, ii = torch.meshgrid(torch.arange(h, dtype=F64), torch.arange(w, dtype=F64), indexing="ij")
    color = torch.zeros(h, w, 3, dtype=F64)
    depth = torch.zeros(h, w, dtype=F64)
    trans = torch.ones(h, w, dtype=F64)
    active = torch.ones(h, w, dtype=torch.bool)
    capped = 0
    items = []
    for n in range(scene.means.shape[0]):
        q = scene.quats[n].to(F64)
        q = q / q.norm()
        qw, qx, qy, qz = q.tolist()
        rot = torch.tensor([[1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy)],
                            [2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx)],
                            [2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)]], dtype=F64)
        sigma = rot @ torch.diag(scene.scales[n].to(F64) ** 2) @ rot.T
        p = w2c[:3, :3] @ scene.means[n].to(F64) + w2c[:3, 3]
        sigma = w2c[:3, :3] @ sigma @ w2c[:3, :3].T
        x, y, z = p.tolist()
        if not cam.near < z < cam.far:
            continue
        limx_lo, limx_hi = -(cam.cx / cam.fx + 0.15 * w / cam.fx), (w - cam.cx) / cam.fx + 0.15 * w / cam.fx
        limy_lo, limy_hi = -(cam.cy / cam.fy + 0.15 * h / cam.fy), (h - cam.cy) / cam.fy + 0.15 * h / cam.fy
        xc, yc = min(max(x / z, limx_lo), limx_hi) * z, min(max(y / z, limy_lo), limy_hi) * z
        jac = torch.tensor([[cam.fx / z, 0, -cam.fx * xc / z ** 2], [0, cam.fy / z, -cam.fy * yc / z ** 2]], dtype=F64)
        cov = jac @ sigma @ jac.T + 0.3 * torch.eye(2, dtype=F64)
        det = float(torch.det(cov))
        mid = 0.5 * float(cov[0, 0] + cov[1, 1])
        radius = math.ceil(3 * math.sqrt(mid + math.sqrt(max(0.1, mid * mid - det))))
        u, v = cam.fx * x / z + cam.cx, cam.fy * y / z + cam.cy
        gx, gy = math.ceil(w / 16), math.ceil(h / 16)
        px, py = u - 0.5, v - 0.5
        tmin = (min(gx, max(0, int((px - radius) / 16))), min(gy, max(0, int((py - radius) / 16))))
        tmax = (min(gx, max(0, int((px + radius + 15) / 16))), min(gy, max(0, int((py + radius + 15) / 16))))
        if (tmax[0] - tmin[0]) * (tmax[1] - tmin[1]) == 0:
            continue
        items.append((z, n, torch.linalg.inv(cov), u, v, tmin, tmax))
    for z, n, conic, u, v, tmin, tmax in sorted(items, key=lambda it: it[0]):
        tile_x, tile_y = torch.div(ii, 16, rounding_mode="floor"), torch.div(jj, 16, rounding_mode="floor")
        in_rect = (tile_x >= tmin[0]) & (tile_x < tmax[0]) & (tile_y >= tmin[1]) & (tile_y < tmax[1])
        dx, dy = u - (ii + 0.5), v - (jj + 0.5)
        power = -0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) - conic[0, 1] * dx * dy
        alpha = torch.clamp(float(scene.opacities[n]) * torch.exp(power), max=0.99)
        contributes = in_rect & (power <= 0) & (alpha >= 1 / 255) & active
        capped += int((contributes & (alpha == 0.99)).sum())
        test_t = trans * (1 - alpha)
        stops = contributes & (test_t < 1e-4)
        active &= ~stops
        contributes &= ~stops
        weight = torch.where(contributes, alpha * trans, torch.zeros_like(trans))
        color += weight[..., None] * scene.colors[n].to(F64)
        depth += weight * z
        trans = torch.where(contributes, test_t, trans)
    return color + trans[..., None] * scene.background.to(F64), 1 - trans, depth, int((~active).sum()), capped


@pytest.mark.parametrize("case", ["sparse", "dense-opaque", "large"])
def test_matches_the_per_gaussian_reference(case):
    if case == "sparse":  # partial edge tiles (40 x 36), few overlaps
        scene = random_scene(60, 40, 36, seed=1, dtype=F64)
    elif case == "dense-opaque":  # many opaque layers: the 0.99 cap and the 1e-4 stop both act
        scene = random_scene(300, 33, 34, seed=2, dtype=F64, scale=0.2)
        scene.opacities[::2] = 1.0
    else:  # Gaussians larger than the image and beyond the frustum edge (Jacobian clamp, many tiles)
        scene = random_scene(25, 50, 30, seed=4, dtype=F64, scale=0.4)
        scene.camera = posed_camera(50, 30, 30.0, 33.0, 21.0, 11.0, w2c=torch.eye(4, dtype=F64))
    image, alpha, depth, stopped, capped = reference_render(scene)
    out = rasterize(*scene.args(), backend="torch")
    if case == "dense-opaque":
        assert stopped > 200 and capped > 20  # the early stop and the cap are exercised
    torch.testing.assert_close(out.image, image, atol=1e-10, rtol=0)
    torch.testing.assert_close(out.alpha, alpha, atol=1e-10, rtol=0)
    torch.testing.assert_close(out.depth, depth, atol=1e-9, rtol=0)
    # float32 gives the same picture to float32 precision
    scene32 = Scene(*(t.float() for t in (scene.means, scene.quats, scene.scales, scene.opacities, scene.colors)),
                    scene.camera, scene.background.float())
    out32 = rasterize(*scene32.args(), backend="torch")
    assert float((out32.image.double() - image).abs().mean()) < 1e-5
    assert float((out32.image.double() - image).abs().max()) < 1e-2


def test_memory_bounded_chunks_give_the_same_result():
    """A tiny work budget forces buckets of one tile and chunks along K with carried transmittance."""
    scene = random_scene(200, 40, 40, seed=5, dtype=F64, scale=0.08, max_opacity=1.0)
    outputs, grads = [], []
    for max_elements in (None, 256 * 13):
        leaves = scene.detached_leaves()
        means_cam, quats_cam = to_camera(leaves.means, leaves.quats, scene.camera.world_to_camera)
        out = rasterize_torch(means_cam, quats_cam, leaves.scales, leaves.opacities, leaves.colors, scene.camera,
                              scene.background, max_elements=max_elements)
        (out.image.square().sum() + out.alpha.sum() + 0.1 * out.depth.sum()).backward()
        outputs.append(out)
        grads.append([leaves.means.grad, leaves.scales.grad, leaves.opacities.grad, leaves.colors.grad,
                      out.means2d.grad])
    torch.testing.assert_close(outputs[0].image, outputs[1].image, atol=1e-12, rtol=0)
    torch.testing.assert_close(outputs[0].depth, outputs[1].depth, atol=1e-12, rtol=0)
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, atol=1e-9, rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# Gradients against central finite differences, float64.

def fd_scene() -> tuple[Scene, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    w2c = torch.eye(4, dtype=F64)
    w2c[:3, :3] = rotation_xyz(0.1, 0.15, -0.05)
    w2c[:3, 3] = torch.tensor([0.05, -0.03, 0.2], dtype=F64)
    camera = Camera(w2c, 22.0, 20.0, 11.3, 9.1, 24, 20)
    means = torch.tensor([[0.1, 0.05, 2.0], [-0.15, 0.1, 2.5], [0.05, -0.1, 3.0], [0.2, 0.15, 2.2]], dtype=F64)
    means = ((means - w2c[:3, 3]) @ w2c[:3, :3]).contiguous()  # world points that sit in front of the camera
    scene = Scene(means, torch.randn(4, 4, generator=gen, dtype=F64),
                  0.25 + 0.2 * torch.rand(4, 3, generator=gen, dtype=F64),
                  torch.tensor([0.5, 0.7, 0.6, 0.4], dtype=F64), torch.rand(4, 3, generator=gen, dtype=F64),
                  camera, torch.tensor([0.2, 0.4, 0.9], dtype=F64))
    weights = (torch.randn(20, 24, 3, generator=gen, dtype=F64), torch.randn(20, 24, generator=gen, dtype=F64),
               torch.randn(20, 24, generator=gen, dtype=F64))
    return scene, *weights


def loss_of(out, w_img, w_alpha, w_depth):
    return (out.image * w_img).sum() + (out.alpha * w_alpha).sum() + 0.3 * (out.depth * w_depth).sum()


def test_gradients_match_finite_differences():
    scene, w_img, w_alpha, w_depth = fd_scene()
    leaves = scene.detached_leaves()
    w2c = scene.camera.world_to_camera.clone().requires_grad_(True)
    cam = Camera(w2c, *(getattr(scene.camera, k) for k in ("fx", "fy", "cx", "cy", "width", "height")))
    out = rasterize(leaves.means, leaves.quats, leaves.scales, leaves.opacities, leaves.colors, cam,
                    scene.background, backend="torch")
    # Large Gaussians on a 2 x 2 tile image: no tile cut moves under the nudges below.
    assert out.visible.all()
    loss_of(out, w_img, w_alpha, w_depth).backward()

    def loss_at(**changes) -> float:
        s = scene
        params = dict(means=s.means, quats=s.quats, scales=s.scales, opacities=s.opacities, colors=s.colors,
                      w2c=s.camera.world_to_camera, cx=s.camera.cx)
        params.update(changes)
        c = Camera(params["w2c"], s.camera.fx, s.camera.fy, params["cx"], s.camera.cy, s.camera.width, s.camera.height)
        o = rasterize(params["means"], params["quats"], params["scales"], params["opacities"], params["colors"],
                      c, s.background, backend="torch")
        return float(loss_of(o, w_img, w_alpha, w_depth))

    eps = 1e-6
    for name, analytic in (("means", leaves.means.grad), ("quats", leaves.quats.grad), ("scales", leaves.scales.grad),
                           ("opacities", leaves.opacities.grad), ("colors", leaves.colors.grad)):
        base = getattr(scene, name)
        numeric = torch.zeros_like(base)
        for i in range(base.numel()):
            plus, minus = base.clone(), base.clone()
            plus.view(-1)[i] += eps
            minus.view(-1)[i] -= eps
            numeric.view(-1)[i] = (loss_at(**{name: plus}) - loss_at(**{name: minus})) / (2 * eps)
        torch.testing.assert_close(analytic, numeric, atol=1e-6, rtol=1e-5, msg=f"d loss / d {name}")

    # Camera translation (the per-frame camera refinement).
    for i in range(3):
        plus, minus = scene.camera.world_to_camera.clone(), scene.camera.world_to_camera.clone()
        plus[i, 3] += eps
        minus[i, 3] -= eps
        numeric = (loss_at(w2c=plus) - loss_at(w2c=minus)) / (2 * eps)
        assert float(w2c.grad[i, 3]) == pytest.approx(numeric, rel=1e-5, abs=1e-6)

    # Screen-space gradient, in pixels: moving cx shifts every projected mean by the same du, and
    # nothing else (no mean is near the Jacobian clamp), so dL/dcx = sum_n dL/du_n.
    numeric = (loss_at(cx=scene.camera.cx + eps) - loss_at(cx=scene.camera.cx - eps)) / (2 * eps)
    assert float(out.means2d.grad[:, 0].sum()) == pytest.approx(numeric, rel=1e-5, abs=1e-6)
    assert out.means2d.grad.shape == (4, 2) and float(out.means2d.grad.abs().min()) > 0


def test_camera_space_quaternions_rotate_like_the_matrices():
    """to_camera: R(q_cam) = R_w2c R(q) for rotations of every kind (incl. near 180 degrees)."""
    gen = torch.Generator().manual_seed(3)
    quats = torch.randn(50, 4, generator=gen, dtype=F64)
    for angles in ((0.3, -0.2, 0.5), (3.1, 0.0, 0.0), (0.0, 3.14159, 0.0), (0.0, 0.0, -3.1), (2.0, 2.5, -1.0)):
        w2c = torch.eye(4, dtype=F64)
        w2c[:3, :3] = rotation_xyz(*angles)
        q_r = rotation_to_quaternion(w2c[:3, :3])
        torch.testing.assert_close(quaternion_to_rotation(q_r[None])[0], w2c[:3, :3], atol=1e-12, rtol=0)
        _, quats_cam = to_camera(torch.zeros(50, 3, dtype=F64), quats, w2c)
        torch.testing.assert_close(quaternion_to_rotation(quats_cam), w2c[:3, :3] @ quaternion_to_rotation(quats),
                                   atol=1e-12, rtol=0)
        torch.testing.assert_close(quats_cam.norm(dim=-1), torch.ones(50, dtype=F64))


def test_rasterize_frames_stacks_the_frames():
    from dynavatar.render import rasterize_frames
    scenes = [random_scene(300, 24, 16, seed=s) for s in (1, 2)]
    fields = ("means", "quats", "scales", "opacities", "colors")
    out = rasterize_frames(*(torch.stack([getattr(s, k) for s in scenes]) for k in fields),
                           [s.camera for s in scenes], scenes[0].background, backend="torch")
    assert out.image.shape == (2, 16, 24, 3) and out.alpha.shape == (2, 16, 24) and out.radii.shape == (2, 300)
    for b, s in enumerate(scenes):
        one = rasterize(s.means, s.quats, s.scales, s.opacities, s.colors, s.camera, s.background, "torch")
        assert torch.equal(out.image[b], one.image) and torch.equal(out.depth[b], one.depth)
    with pytest.raises(ValueError, match="2 frames of Gaussians but 1 cameras"):
        rasterize_frames(*(torch.stack([getattr(s, k) for s in scenes]) for k in fields), [scenes[0].camera],
                         scenes[0].background)


def test_without_depth_the_same_image_alpha_and_gradients_and_no_depth():
    """depth=False composites one feature fewer: image, alpha and every gradient as with it."""
    from dynavatar.render import rasterize_frames
    scenes = [random_scene(300, 24, 16, seed=s) for s in (5, 6)]
    results = []
    for depth in (True, False):
        leaves = stacked_leaves(scenes)
        out = rasterize_frames(*leaves, [s.camera for s in scenes], scenes[0].background, "torch", depth=depth)
        (out.image.square().sum() + out.alpha.sum()).backward()
        results.append((out, [t.grad for t in leaves]))
    (with_depth, grads), (without, grads_without) = results
    assert with_depth.depth.shape == (2, 16, 24) and without.depth is None
    torch.testing.assert_close(without.image, with_depth.image, atol=1e-6, rtol=0)  # float32 sums, other order
    torch.testing.assert_close(without.alpha, with_depth.alpha, atol=1e-6, rtol=0)
    for a, b in zip(grads_without, grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def stacked_leaves(scenes) -> list[torch.Tensor]:
    return [torch.stack([getattr(s, k) for s in scenes]).detach().requires_grad_(True)
            for k in ("means", "quats", "scales", "opacities", "colors")]


def test_rasterize_frames_gives_each_frames_screen_gradient_in_one_leaf():
    """The stacked means2d [B, N, 2] is a leaf whose .grad is each frame's dL/d(pixel position)."""
    from dynavatar.render import rasterize_frames
    scenes = [random_scene(200, 24, 16, seed=s) for s in (3, 4)]
    weights = torch.randn(2, 16, 24, 3, generator=torch.Generator().manual_seed(0))
    out = rasterize_frames(*stacked_leaves(scenes), [s.camera for s in scenes], scenes[0].background, "torch")
    (out.image * weights).sum().backward()
    assert out.means2d.is_leaf and out.means2d.grad.shape == (2, 200, 2)
    assert torch.equal(out.visible, out.radii > 0) and out.radii.dtype == torch.int32
    for b, s in enumerate(scenes):
        leaves = s.detached_leaves()
        one = rasterize(*leaves.args(), "torch")
        (one.image * weights[b]).sum().backward()
        assert torch.equal(out.means2d.detach()[b], one.means2d.detach()) and torch.equal(out.radii[b], one.radii)
        torch.testing.assert_close(out.means2d.grad[b], one.means2d.grad, rtol=1e-5, atol=1e-7)
    assert float(out.means2d.grad.abs().sum()) > 0
    with torch.no_grad():  # without gradients, plain values
        quiet = rasterize_frames(*(t.detach() for t in stacked_leaves(scenes)), [s.camera for s in scenes],
                                 scenes[0].background, "torch")
    assert not quiet.means2d.requires_grad and torch.equal(quiet.means2d, out.means2d.detach())


def test_render_gaussians_composites_a_learnt_background_and_keeps_the_raster_statistics():
    from dynavatar.model.gaussians import Gaussians
    from dynavatar.model.rendering import render_gaussians
    from dynavatar.render import rasterize_frames
    scenes = [random_scene(150, 20, 12, seed=s) for s in (5, 6)]
    means, quats, scales, opacities, colors = (t.detach() for t in stacked_leaves(scenes))
    unit = quats / quats.norm(dim=-1, keepdim=True)
    gaussians = Gaussians(means, unit, scales, opacities, colors)
    cameras = [s.camera for s in scenes]
    image = torch.rand(12, 20, 3, generator=torch.Generator().manual_seed(1))
    rgb, alpha, depth, raster = render_gaussians(gaussians, cameras, image, "torch", depth=True)
    black = rasterize_frames(means, unit, scales, opacities, colors, cameras, torch.zeros(3), "torch")
    assert torch.equal(alpha, black.alpha) and torch.equal(depth, black.depth)
    assert torch.equal(rgb, black.image + (1.0 - black.alpha[..., None]) * image)
    assert raster.means2d.shape == (2, 150, 2) and torch.equal(raster.radii, black.radii)
    assert torch.equal(raster.visible, black.visible)
    white = render_gaussians(gaussians, cameras, torch.ones(3), "torch")  # a colour: drawn by the rasterizer
    over_white = rasterize_frames(means, unit, scales, opacities, colors, cameras, torch.ones(3), "torch")
    assert white.depth is None  # not asked for
    torch.testing.assert_close(white.rgb, over_white.image, atol=1e-6, rtol=0)
    assert float((alpha < 0.5).float().mean()) > 0.05  # some background shows
