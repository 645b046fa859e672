"""SSIM's training term, 1 - SSIM, with its gradient in two fused Triton kernels (a GPU with Triton).

The same maths as `image.ssim_loss` (11x11 Gaussian window, sigma 1.5, zero-padded "same"
windows, mean over pixels, channels and images) in two launches instead of about forty. PyTorch's
form builds five moment images, filters them with grouped convolutions and lets autograd run the
chain back through every elementwise step; at 512x512 with 8 frames that is several milliseconds
of a training step on its own.

- Forward, per pixel: the five windowed moments (filtered separably: each row of a tile's halo
  along the row once, then into the tile's rows its window reaches), the SSIM value, summed per
  tile into a partial sum, and the derivatives of that value by the three
  moments that depend on the rendering x: mu_x, E[x^2] and E[xy].
- Backward: the gradient at pixel p collects those derivatives over every window that holds p.
  The window is symmetric and zero-padded, so that is the same filter again:
  dS/dx(p) = G*d_mu (p) + 2 x(p) G*d_xx (p) + y(p) G*d_xy (p).

Partial sums are added in a fixed order, so the loss is deterministic (bitwise resumption).
Triton's interpreter (TRITON_INTERPRET=1, set before this module is imported) runs the same kernels
on the CPU; the tests use it to check them against PyTorch's form.
"""

from __future__ import annotations

import importlib.util

import torch

from .image import SSIM_K1, SSIM_K2, SSIM_WINDOW, gaussian_window

BLOCK_H = 8
BLOCK_W = 128
NUM_WARPS = 4

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: `available` says so and the callers use PyTorch's form
    triton = None


def available(device: torch.device) -> bool:
    """Whether the fused kernels can run on `device`: a CUDA device with Triton installed."""
    return device.type == "cuda" and triton is not None


def fits(image: torch.Tensor) -> bool:
    """Whether the kernels' 32-bit offsets reach every value of `image` and its three derivative
    images (up to about 700 million values)."""
    return 3 * image.numel() < 2 ** 31


def interpreter_available() -> bool:
    """Whether Triton is installed, so its CPU interpreter can run the kernels (tests)."""
    return importlib.util.find_spec("triton") is not None


if triton is not None:

    @triton.jit
    def _vertical_taps(taps_ptr, k, BLOCK_H: tl.constexpr, WINDOW: tl.constexpr):
        """[BLOCK_H, 1]: the weight of the tile's k-th halo row for each output row of the tile (0 for
        the rows whose window does not reach it)."""
        tap = k - tl.arange(0, BLOCK_H)
        return tl.load(taps_ptr + tap, mask=(tap >= 0) & (tap < WINDOW), other=0.0)[:, None]

    @triton.jit
    def _halo_tap(base, row, cols, j, height, width, WINDOW: tl.constexpr):
        """Offsets [BW] of tap j of the row filter centred on `cols`, in halo row `row` ([BW], a block:
        Triton's interpreter masks with no scalars), and where they lie in the image (zero padding)."""
        col = cols + (j - WINDOW // 2)
        return base + row * width + col, (row >= 0) & (row < height) & (col >= 0) & (col < width)

    @triton.jit
    def _forward_kernel(x_ptr, y_ptr, taps_ptr, partial_ptr, deriv_ptr, height, width, plane_size,
                        c1, c2, WINDOW: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                        DERIVATIVES: tl.constexpr):
        """One [BLOCK_H, BLOCK_W] tile of one image plane: its SSIM sum to partial_ptr[tile] and,
        with DERIVATIVES, dS/dmu_x, dS/dE[xx], dS/dE[xy] to deriv_ptr[0|1|2, plane, row, col].

        Separable: each of the tile's BLOCK_H + WINDOW - 1 halo rows is filtered along the row once
        (WINDOW taps), then added into every output row its window reaches."""
        tile_row, tile_col, plane = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        cols = tile_col * BLOCK_W + tl.arange(0, BLOCK_W)  # [BW]
        base = plane * plane_size
        mu_x = tl.zeros((BLOCK_H, BLOCK_W), tl.float32)
        mu_y = tl.zeros((BLOCK_H, BLOCK_W), tl.float32)
        e_xx = tl.zeros((BLOCK_H, BLOCK_W), tl.float32)
        e_yy = tl.zeros((BLOCK_H, BLOCK_W), tl.float32)
        e_xy = tl.zeros((BLOCK_H, BLOCK_W), tl.float32)
        first_row = tile_row * BLOCK_H - WINDOW // 2
        for k in range(BLOCK_H + WINDOW - 1):
            row = first_row + k + tl.zeros((BLOCK_W,), tl.int32)
            h_x = tl.zeros((BLOCK_W,), tl.float32)
            h_y = tl.zeros((BLOCK_W,), tl.float32)
            h_xx = tl.zeros((BLOCK_W,), tl.float32)
            h_yy = tl.zeros((BLOCK_W,), tl.float32)
            h_xy = tl.zeros((BLOCK_W,), tl.float32)
            for j in tl.static_range(WINDOW):
                offset, inside = _halo_tap(base, row, cols, j, height, width, WINDOW)
                x = tl.load(x_ptr + offset, mask=inside, other=0.0)
                y = tl.load(y_ptr + offset, mask=inside, other=0.0)
                w = tl.load(taps_ptr + j)
                wx = w * x
                wy = w * y
                h_x += wx
                h_y += wy
                h_xx += wx * x
                h_yy += wy * y
                h_xy += wx * y
            w = _vertical_taps(taps_ptr, k, BLOCK_H, WINDOW)
            mu_x += w * h_x[None, :]
            mu_y += w * h_y[None, :]
            e_xx += w * h_xx[None, :]
            e_yy += w * h_yy[None, :]
            e_xy += w * h_xy[None, :]
        a1 = 2.0 * mu_x * mu_y + c1
        a2 = 2.0 * (e_xy - mu_x * mu_y) + c2
        b1 = mu_x * mu_x + mu_y * mu_y + c1
        b2 = (e_xx - mu_x * mu_x) + (e_yy - mu_y * mu_y) + c2
        denominator = b1 * b2
        s = a1 * a2 / denominator
        rows = tile_row * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]  # [BH, 1]
        inside = (rows < height) & (cols[None, :] < width)
        s = tl.where(inside, s, 0.0)
        tile = (plane * tl.num_programs(0) + tile_row) * tl.num_programs(1) + tile_col
        tl.store(partial_ptr + tile, tl.sum(tl.sum(s, axis=1), axis=0))
        if DERIVATIVES:
            offset = base + rows * width + cols[None, :]
            planes = tl.num_programs(2) * plane_size
            d_mu = 2.0 * mu_y * (a2 - a1) / denominator - 2.0 * mu_x * s * (1.0 / b1 - 1.0 / b2)
            tl.store(deriv_ptr + offset, d_mu, mask=inside)
            tl.store(deriv_ptr + planes + offset, -s / b2, mask=inside)
            tl.store(deriv_ptr + 2 * planes + offset, 2.0 * a1 / denominator, mask=inside)

    @triton.jit
    def _backward_kernel(x_ptr, y_ptr, taps_ptr, deriv_ptr, grad_out_ptr, grad_ptr, height, width,
                         plane_size, scale, WINDOW: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_W: tl.constexpr):
        """grad_ptr[plane, row, col] = d(1 - mean S)/dx for one tile: the derivative images filtered
        by the window (separably, as in the forward), combined with x and y at the pixel, times
        -grad_out / (pixel count)."""
        tile_row, tile_col, plane = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        cols = tile_col * BLOCK_W + tl.arange(0, BLOCK_W)
        base = plane * plane_size
        planes = tl.num_programs(2) * plane_size
        g_mu = tl.zeros((BLOCK_H, BLOCK_W), tl.float32)
        g_xx = tl.zeros((BLOCK_H, BLOCK_W), tl.float32)
        g_xy = tl.zeros((BLOCK_H, BLOCK_W), tl.float32)
        first_row = tile_row * BLOCK_H - WINDOW // 2
        for k in range(BLOCK_H + WINDOW - 1):
            row = first_row + k + tl.zeros((BLOCK_W,), tl.int32)
            h_mu = tl.zeros((BLOCK_W,), tl.float32)
            h_xx = tl.zeros((BLOCK_W,), tl.float32)
            h_xy = tl.zeros((BLOCK_W,), tl.float32)
            for j in tl.static_range(WINDOW):
                offset, inside = _halo_tap(base, row, cols, j, height, width, WINDOW)
                w = tl.load(taps_ptr + j)
                h_mu += w * tl.load(deriv_ptr + offset, mask=inside, other=0.0)
                h_xx += w * tl.load(deriv_ptr + planes + offset, mask=inside, other=0.0)
                h_xy += w * tl.load(deriv_ptr + 2 * planes + offset, mask=inside, other=0.0)
            w = _vertical_taps(taps_ptr, k, BLOCK_H, WINDOW)
            g_mu += w * h_mu[None, :]
            g_xx += w * h_xx[None, :]
            g_xy += w * h_xy[None, :]
        rows = tile_row * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
        inside = (rows < height) & (cols[None, :] < width)
        offset = base + rows * width + cols[None, :]
        x = tl.load(x_ptr + offset, mask=inside, other=0.0)
        y = tl.load(y_ptr + offset, mask=inside, other=0.0)
        factor = -tl.load(grad_out_ptr).to(tl.float32) * scale
        tl.store(grad_ptr + offset, factor * (g_mu + 2.0 * x * g_xx + y * g_xy), mask=inside)


_TAPS: dict[torch.device, torch.Tensor] = {}


def _taps(device: torch.device) -> torch.Tensor:
    """The window's 1-D taps [SSIM_WINDOW] on `device`, made once: no host copy in each step."""
    if device not in _TAPS:
        _TAPS[device] = gaussian_window(SSIM_WINDOW, dtype=torch.float32, device=device)
    return _TAPS[device]


def _planes(image: torch.Tensor) -> torch.Tensor:
    """[B,H,W,C] -> contiguous float32 [B*C, H, W]: each channel of each image one plane."""
    b, h, w, c = image.shape
    return image.float().permute(0, 3, 1, 2).reshape(b * c, h, w).contiguous()


def _grid(planes: torch.Tensor) -> tuple[int, int, int]:
    count, height, width = planes.shape
    return triton.cdiv(height, BLOCK_H), triton.cdiv(width, BLOCK_W), count


class _FusedSSIMLoss(torch.autograd.Function):
    """1 - SSIM of x against y ([B,H,W,C] each); the gradient reaches x only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xp, yp = _planes(x), _planes(y.detach())
        grid = _grid(xp)
        taps = _taps(x.device)
        partial = torch.empty(grid[0] * grid[1] * grid[2], dtype=torch.float32, device=x.device)
        derivatives = ctx.needs_input_grad[0]
        deriv = torch.empty((3, *xp.shape) if derivatives else (1,), dtype=torch.float32, device=x.device)
        _forward_kernel[grid](xp, yp, taps, partial, deriv, xp.shape[1], xp.shape[2], xp.shape[1] * xp.shape[2],
                              SSIM_K1 ** 2, SSIM_K2 ** 2, WINDOW=SSIM_WINDOW, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W,
                              DERIVATIVES=derivatives, num_warps=NUM_WARPS)
        if derivatives:
            ctx.save_for_backward(xp, yp, taps, deriv)
            ctx.shape, ctx.dtype = x.shape, x.dtype
        return (1.0 - partial.sum() / xp.numel()).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        xp, yp, taps, deriv = ctx.saved_tensors
        grad = torch.empty_like(xp)
        _backward_kernel[_grid(xp)](xp, yp, taps, deriv, grad_out.float().contiguous(), grad, xp.shape[1],
                                    xp.shape[2], xp.shape[1] * xp.shape[2], 1.0 / xp.numel(),
                                    WINDOW=SSIM_WINDOW, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, num_warps=NUM_WARPS)
        b, h, w, c = ctx.shape
        return grad.view(b, c, h, w).permute(0, 2, 3, 1).to(ctx.dtype), None


def fused_ssim_loss(rendering: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - SSIM of rendering against target, [B,H,W,C] each (or [H,W,C]), as `image.ssim_loss`
    computes it; needs Triton (`available`). The gradient reaches the rendering only."""
    if triton is None:
        raise RuntimeError("the fused SSIM kernels need Triton (pip install triton); "
                           "set loss.fused_ssim=false to use PyTorch's form")
    if rendering.shape != target.shape:
        raise ValueError(f"images differ in shape: {tuple(rendering.shape)} vs {tuple(target.shape)}")
    if not fits(rendering):
        raise ValueError(f"images of {rendering.numel()} values are beyond the fused kernels' 32-bit offsets; "
                         "set loss.fused_ssim=false")
    if rendering.dim() == 3:
        rendering, target = rendering.unsqueeze(0), target.unsqueeze(0)
    return _FusedSSIMLoss.apply(rendering, target)
