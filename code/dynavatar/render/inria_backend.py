"""Adapter to graphdeco-inria's diff-gaussian-rasterization (the 3DGS CUDA rasterizer).

Camera: the Gaussians arrive in camera space, so the view matrix is the identity and the full
projection matrix is the OpenCV projection with the principal point (not only tan(fov)), so an
off-centre cx, cy lands where `Camera.project` says. The kernel maps NDC [-1, 1] onto pixel edges
[0, W] (its pixel centres sit at integers after `ndc2Pix`), which is the same pixel-centre
convention as gsplat's and ours. Camera-space quaternions and scales are passed as they are.

Outputs: the main-branch kernel returns colour and radii only, so alpha and depth come from a
second pass with colours (z, 1, 0) over a black background (its backward runs only when a loss
uses them). Its screen-space gradient is dL/d(NDC) (= dL/dpixel * W/2, H/2); `means2d` is a leaf
fed to the kernel as means2d * (2/W, 2/H), so its .grad is in pixels like the other backends'.

Culling: the kernel itself culls camera z <= 0.2 (hard-coded); z outside (near, far) is culled
here by zero opacity and radius.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import Camera
from ..runtime import constant, data_constant
from .backends import get_backend
from .output import RasterOutput

_IDENTITY = ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0))


def projection_matrix(camera: Camera, device: torch.device | str | None = None) -> Tensor:
    """The 4x4 OpenCV perspective projection to NDC honouring the principal point (row-major, P @ [x, y, z, 1]).

    ndc_x = (2 fx / W) x / z + (2 cx / W - 1), so ndc_x = -1 .. 1 spans the pixel edges 0 .. W and
    u = (ndc_x + 1) W / 2 = fx x / z + cx. The depth row maps near -> 0 and far -> 1.
    """
    return data_constant(_projection_rows(camera), torch.float32, torch.device(device or "cpu"))


def _projection_rows(camera: Camera) -> tuple:
    w, h, n, f = camera.width, camera.height, camera.near, camera.far
    return ((2 * camera.fx / w, 0.0, 2 * camera.cx / w - 1, 0.0),
            (0.0, 2 * camera.fy / h, 2 * camera.cy / h - 1, 0.0),
            (0.0, 0.0, f / (f - n), -f * n / (f - n)),
            (0.0, 0.0, 1.0, 0.0))


def _settings(dgr, camera: Camera, background: Tensor):
    device = background.device
    fields = dict(
        image_height=camera.height, image_width=camera.width,
        tanfovx=0.5 * camera.width / camera.fx, tanfovy=0.5 * camera.height / camera.fy,
        bg=background.float().contiguous(), scale_modifier=1.0,
        viewmatrix=constant(_IDENTITY, torch.float32, device),
        # The kernel reads matrices column-major (glm): pass the transpose of the row-major P.
        projmatrix=data_constant(tuple(zip(*_projection_rows(camera))), torch.float32, device),
        sh_degree=0, campos=constant((0.0, 0.0, 0.0), torch.float32, device),
        prefiltered=False, debug=False,
        antialiasing=False,  # only in forks/branches that have it (dropped below otherwise)
    )
    names = dgr.GaussianRasterizationSettings._fields
    return dgr.GaussianRasterizationSettings(**{k: v for k, v in fields.items() if k in names})


def rasterize_inria(means_cam: Tensor, quats_cam: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                    camera: Camera, background: Tensor, depth: bool = True) -> RasterOutput:
    """Rasterize camera-space Gaussians (means [N, 3], unit quaternions [N, 4], scales [N, 3]) with the Inria kernel."""
    dgr = get_backend("inria").import_package()
    device, dtype = means_cam.device, torch.float32
    n = means_cam.shape[0]
    means = means_cam.to(dtype).contiguous()
    rotations = quats_cam.to(dtype).contiguous()  # unit: the kernel does not normalise
    scales = scales.to(dtype).contiguous()
    z = means[:, 2]
    in_depth = (z > camera.near) & (z < camera.far)
    opac = (opacities.to(dtype) * in_depth)[:, None].contiguous()  # [N, 1]

    with torch.no_grad():
        safe_z = torch.where(in_depth, z, torch.ones_like(z))
        pixels = torch.stack([camera.fx * means[:, 0] / safe_z + camera.cx,
                              camera.fy * means[:, 1] / safe_z + camera.cy], dim=-1)  # [N, 2]
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means_cam, quats_cam, scales, opacities, colors))
    means2d = pixels.requires_grad_(needs_grad)  # a leaf
    to_ndc = data_constant((2.0 / camera.width, 2.0 / camera.height), dtype, device)
    screen = torch.cat([means2d * to_ndc, torch.zeros(n, 1, dtype=dtype, device=device)], dim=-1)  # [N, 3]

    def run(bg: Tensor, col: Tensor) -> tuple[Tensor, Tensor]:
        rasterizer = dgr.GaussianRasterizer(raster_settings=_settings(dgr, camera, bg))
        result = rasterizer(means3D=means, means2D=screen, opacities=opac, colors_precomp=col.contiguous(),
                            scales=scales, rotations=rotations)
        return result[0], result[1]  # colour [3, H, W], radii [N]; a depth output of other branches is unused

    image, radii = run(background, colors.to(dtype))
    aux_colors = torch.stack([z, torch.ones_like(z), torch.zeros_like(z)], dim=-1)  # [N, 3] (z, 1, 0)
    aux, _ = run(constant((0.0, 0.0, 0.0), dtype, device), aux_colors)  # black background
    radii = torch.where(in_depth, radii, torch.zeros_like(radii)).to(torch.int32)
    return RasterOutput(image=image.permute(1, 2, 0), alpha=aux[1], depth=aux[0] if depth else None,
                        radii=radii, visible=radii > 0, means2d=means2d)
