"""What the viewer renders: the avatar at an expression [E] and a FLAME pose [15], from a camera.

The frame-independent state is the avatar's own `canonical_cache` (computed once while the avatar is
frozen); the posed Gaussians are kept for the last (expression, pose), so that a camera move, a new
resolution or backend only rasterizes again, and a slider move poses and rasterizes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..cameras import Camera
from ..model.avatar import Avatar, Gaussians
from ..model.rendering import render_gaussians
from ..render import resolve_backend
from ..runtime import constant

WHITE = (1.0, 1.0, 1.0)


@dataclass
class Frame:
    """One rendered image: rgb [H, W, 3] uint8, alpha [H, W] float32, and the seconds it took."""

    rgb: np.ndarray
    alpha: np.ndarray
    seconds: float


class AvatarScene:
    """The avatar, its current expression and pose, and the rendering of both from a camera.

    Thread-safe: the controls change the expression and pose while the render loop draws.
    `version` grows with every change, so that the loop knows what it has already drawn.
    """

    def __init__(self, avatar: Avatar) -> None:
        self.avatar = avatar
        self.device = avatar.canonical_expression.device
        self._lock = threading.Lock()
        self.neutral_expression = avatar.canonical_expression.detach().clone()  # [E]
        self.neutral_pose = torch.zeros(15, device=self.device)
        self.expression = self.neutral_expression.clone()
        self.pose = self.neutral_pose.clone()
        self.version = 0
        self._posed: tuple[int, Gaussians] | None = None

    @property
    def num_expression(self) -> int:
        return int(self.neutral_expression.numel())

    def set_values(self, expression: torch.Tensor | None = None, pose: torch.Tensor | None = None) -> None:
        """Replace the whole expression [E'] (its first E entries are used, the rest zero) and/or pose [15]."""
        with self._lock:
            if expression is not None:
                full = torch.zeros_like(self.expression)
                n = min(full.numel(), expression.numel())
                full[:n] = expression.reshape(-1)[:n].to(full)
                self.expression = full
            if pose is not None:
                self.pose = pose.reshape(15).to(self.pose).clone()
            self.version += 1

    def set_entries(self, what: str, indices: tuple[int, ...], value: float) -> None:
        """Entries of the expression ('expression') or the FLAME pose ('pose') to one value."""
        with self._lock:
            target = self.expression if what == "expression" else self.pose
            target = target.clone()
            target[list(indices)] = float(value)
            if what == "expression":
                self.expression = target
            else:
                self.pose = target
            self.version += 1

    def value(self, what: str, index: int) -> float:
        with self._lock:
            return float((self.expression if what == "expression" else self.pose)[index])

    def reset(self) -> None:
        self.set_values(self.neutral_expression, self.neutral_pose)

    @torch.no_grad()
    def posed(self) -> Gaussians:
        """The Gaussians [1, N, ...] of the current expression and pose (kept until either changes)."""
        with self._lock:
            version, expression, pose = self.version, self.expression, self.pose
        if self._posed is None or self._posed[0] != version:
            gaussians, _ = self.avatar.deform(expression[None], pose[None])
            self._posed = (version, gaussians)
        return self._posed[1]

    @torch.no_grad()
    def render(self, camera: Camera, backend: str = "auto") -> Frame:
        """The avatar at the current expression and pose from `camera`, over white."""
        start = time.perf_counter()
        gaussians = self.posed()
        background = constant(WHITE, gaussians.means.dtype, gaussians.means.device)
        rgb, alpha, _, _ = render_gaussians(gaussians, [camera], background, resolve_backend(backend, self.device))
        image = (rgb[0].clamp(0, 1) * 255).round().byte().cpu().numpy()
        return Frame(image, alpha[0].float().cpu().numpy(), time.perf_counter() - start)

    @torch.no_grad()
    def canonical_points(self) -> tuple[np.ndarray, np.ndarray]:
        """The canonical point cloud: x' [N, 3] float32 and the points' colours [N, 3] uint8."""
        state = self.avatar.canonical_state()
        colors = torch.sigmoid(state.logits.color)
        return (state.shifted.float().cpu().numpy(),
                (colors.clamp(0, 1) * 255).round().byte().cpu().numpy())
