"""How the synthetic subject looks: per-region albedo, a procedural texture on the canonical surface,
and Lambert shading from a fixed light.

The texture is evaluated per sample at the interpolated canonical position, so it sticks to the
skin when the face deforms and has detail finer than the mesh (photometric training needs something
to fit). Deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .face_regions import points_in_polygon
from .face_regions import CLOTH, HAIR, L_BROW, L_EYE, L_LIP, MOUTH, NECK, NOSE, R_BROW, R_EYE, SKIN, U_LIP
from .mesh_renderer import Samples, face_values, interpolate

# Light direction (towards the light) in camera space, OpenCV axes: from the upper left, in front.
LIGHT_DIRECTION = (-0.4, -0.5, -0.77)
AMBIENT, DIFFUSE = 0.38, 0.72
MOUTH_INTERIOR = (0.28, 0.06, 0.07)
SCLERA, PUPIL = (0.93, 0.92, 0.88), (0.05, 0.04, 0.04)


def _palette(rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Region albedos with a per-subject variation of skin, hair and shirt."""
    skin = np.array([0.86, 0.66, 0.54]) * rng.uniform(0.85, 1.05) + rng.uniform(-0.03, 0.03, 3)
    hair = np.array([0.22, 0.14, 0.08]) * rng.uniform(0.6, 1.6)
    shirts = [(0.18, 0.32, 0.62), (0.55, 0.16, 0.18), (0.2, 0.45, 0.3), (0.85, 0.85, 0.82)]
    return {
        SKIN: skin, NOSE: skin * np.array([1.03, 0.95, 0.93]), NECK: skin * 0.93,
        U_LIP: np.array([0.70, 0.28, 0.30]), L_LIP: np.array([0.76, 0.33, 0.35]),
        L_BROW: hair * 1.1, R_BROW: hair * 1.1, HAIR: hair,
        CLOTH: np.array(shirts[int(rng.integers(len(shirts)))]),
        MOUTH: np.array(MOUTH_INTERIOR), L_EYE: np.array(SCLERA), R_EYE: np.array(SCLERA),
    }


def _eye_colours(vertices: np.ndarray, mask: np.ndarray, iris: np.ndarray) -> np.ndarray:
    """Sclera, iris and pupil on an eyeball by the angle from its forward (+z) axis -> [n, 3]."""
    pts = vertices[mask]
    d = pts - pts.mean(0)
    cos = d[:, 2] / np.maximum(np.linalg.norm(d, axis=1), 1e-12)
    out = np.tile(np.array(SCLERA), (len(pts), 1))
    out[cos > 0.80] = iris
    out[cos > 0.95] = np.array(PUPIL)
    return out


@dataclass
class _Waves:
    """A sum of random plane waves on 3D points: smooth noise in about [-1, 1]."""

    directions: torch.Tensor  # [K, 3] (frequency included)
    phases: torch.Tensor  # [K]

    @classmethod
    def random(cls, rng: np.random.Generator, count: int, frequency: float) -> "_Waves":
        dirs = rng.normal(size=(count, 3))
        dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * frequency * rng.uniform(0.7, 1.3, (count, 1))
        return cls(torch.tensor(dirs, dtype=torch.float32), torch.tensor(rng.uniform(0, 2 * np.pi, count),
                                                                          dtype=torch.float32))

    def __call__(self, points: torch.Tensor) -> torch.Tensor:  # [..., 3] -> [...]
        return torch.sin(points @ self.directions.T + self.phases).sum(-1) / np.sqrt(len(self.phases) / 2)

    def to(self, device: torch.device) -> "_Waves":
        return _Waves(self.directions.to(device), self.phases.to(device))


class Appearance:
    """Albedo, texture and shading of one synthetic subject (a `shade_fn` for `render_mesh`)."""

    def __init__(self, canonical_vertices: np.ndarray, faces: np.ndarray, vertex_labels: np.ndarray,
                 face_labels: np.ndarray, seed: int):
        rng = np.random.default_rng([seed, 7])
        palette = _palette(rng)
        albedo = np.stack([palette.get(int(label), palette[SKIN]) for label in vertex_labels])
        iris = rng.uniform(0.15, 0.45, 3) * np.array([0.8, 0.9, 1.0])
        for label in (L_EYE, R_EYE):
            mask = vertex_labels == label
            if mask.any():
                albedo[mask] = _eye_colours(canonical_vertices, mask, iris)
        self.albedo = torch.tensor(albedo, dtype=torch.float32)  # [V, 3]
        self.canonical = torch.tensor(canonical_vertices, dtype=torch.float32)  # [V, 3]
        self.faces = torch.as_tensor(faces, dtype=torch.long)
        self.face_labels = torch.as_tensor(face_labels, dtype=torch.long)
        self.blotches = _Waves.random(rng, 6, 14.0)
        self.fine = _Waves.random(rng, 8, 45.0)
        self.strands = _Waves.random(rng, 3, 6.0)
        self.light = torch.nn.functional.normalize(torch.tensor(LIGHT_DIRECTION), dim=0)

    def to(self, device: torch.device) -> "Appearance":
        """Move the tensors to `device` (in place; returns self)."""
        for name in ("albedo", "canonical", "faces", "face_labels", "light", "blotches", "fine", "strands"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def texture(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Multiplicative texture [..., 1] at canonical points [..., 3] of regions `labels` [...]."""
        x, y = points[..., 0], points[..., 1]
        skin = 1.0 + 0.14 * torch.tanh(1.5 * self.blotches(points)) + 0.06 * self.fine(points)
        hair = 1.0 + 0.28 * torch.sin(120.0 * x + 4.0 * self.strands(points)) + 0.08 * self.fine(points)
        cloth = 1.0 + 0.22 * torch.tanh(4.0 * torch.sin(38.0 * y + 2.0 * self.strands(points)))
        lips = 1.0 + 0.06 * self.fine(points)
        out = torch.where(labels == HAIR, hair, skin)
        out = torch.where((labels == L_BROW) | (labels == R_BROW), 1.0 + 0.15 * torch.sin(150.0 * y), out)
        out = torch.where(labels == CLOTH, cloth, out)
        out = torch.where((labels == U_LIP) | (labels == L_LIP), lips, out)
        out = torch.where((labels == L_EYE) | (labels == R_EYE) | (labels == MOUTH), torch.ones_like(out), out)
        return out[..., None]

    def for_frame(self, mouth_polygon: torch.Tensor) -> "FrameLook":
        """Shading and labels of one frame; mouth_polygon [K, 2] is the inner lip contour in sample
        coordinates (inside faces seen through it are the mouth interior)."""
        return FrameLook(self, mouth_polygon)


class FrameLook:
    """`shade_fn` and `label_fn` of `render_mesh` for one frame."""

    def __init__(self, appearance: Appearance, mouth_polygon: torch.Tensor):
        self.app = appearance
        self.mouth_polygon = mouth_polygon.detach().cpu().numpy()

    def _through_mouth(self, samples: Samples, front: torch.Tensor) -> torch.Tensor:
        """[K] bool: inside faces seen through the open lips (FLAME has no mouth cavity)."""
        out = torch.zeros_like(front)
        back = torch.nonzero(~front).squeeze(1)
        if len(back):
            centres = samples.xy[back].double().cpu().numpy()
            out[back] = torch.from_numpy(points_in_polygon(centres, self.mouth_polygon)).to(out.device)
        return out

    def labels(self, samples: Samples, front: torch.Tensor) -> torch.Tensor:
        """Face-parsing labels [K] of the covered samples."""
        labels = face_values(self.app.face_labels, samples)
        return torch.where(self._through_mouth(samples, front), torch.full_like(labels, MOUTH), labels)

    def shade(self, samples: Samples, front: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """Colours [K, 3] of the covered samples."""
        app = self.app
        points = interpolate(app.canonical, app.faces, samples)  # [K, 3]
        labels = face_values(app.face_labels, samples)  # [K]
        albedo = interpolate(app.albedo, app.faces, samples) * app.texture(points, labels)
        lambert = (normals * app.light).sum(-1, keepdim=True).clamp(min=0.0)
        colour = albedo * (AMBIENT + DIFFUSE * lambert)
        mouth = torch.tensor(MOUTH_INTERIOR, device=colour.device)
        colour = torch.where((labels == MOUTH)[..., None], mouth * (0.6 + 0.4 * lambert), colour)
        # Inside faces: dark mouth through the lips, else the shadowed inside of neck and collar.
        inside = torch.where(self._through_mouth(samples, front)[..., None], mouth * 0.6, albedo * 0.3)
        colour = torch.where(front[..., None], colour, inside)
        return colour.clamp(0.0, 1.0)
