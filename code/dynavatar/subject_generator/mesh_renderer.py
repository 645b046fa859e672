"""A small z-buffer triangle rasterizer for making synthetic ground truth (independent of the Gaussian
rasterizer, so that the avatar is never trained on images of its own renderer).

Vectorised in torch: every (triangle, sample-in-its-bounding-box) pair is tested at once, in chunks,
and a scatter-min keeps the nearest. Anti-aliasing by supersampling: render at `supersample` times
the resolution and box-filter down, which gives soft mask edges and smooth colour edges.

Pixel convention: the same as the rasterizers' (and `Camera.project`): sample centres at
half-integers, so a vertex projected to u lies at column u - 0.5 in IMavatar's integer-centre terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cameras import Camera
from ..flame.mesh import outward_winding, vertex_normals

# Candidate (triangle, sample) pairs tested per chunk; bounds memory to a few hundred MB.
CHUNK_CANDIDATES = 4_000_000


@dataclass
class Fragments:
    """The nearest triangle of every sample of a raster of `height` x `width` samples."""

    face_index: torch.Tensor  # [H, W] long, -1 where no triangle
    bary: torch.Tensor  # [H, W, 3] perspective-correct barycentric coordinates
    depth: torch.Tensor  # [H, W] camera z (inf where empty)

    @property
    def covered(self) -> torch.Tensor:  # [H, W] bool
        return self.face_index >= 0

    def samples(self) -> tuple["Samples", torch.Tensor]:
        """The covered samples only (shading the rest would be wasted work) and their flat indices [K]."""
        flat = torch.nonzero(self.face_index.reshape(-1) >= 0).squeeze(1)
        width = self.face_index.shape[1]
        xy = torch.stack([flat % width, flat // width], 1).float() + 0.5  # sample centres
        return Samples(self.face_index.reshape(-1)[flat], self.bary.reshape(-1, 3)[flat], xy), flat


@dataclass
class Samples:
    """A list of covered samples: what `shade_fn` and `label_fn` of `render_mesh` receive."""

    face_index: torch.Tensor  # [K] long
    bary: torch.Tensor  # [K, 3] perspective-correct barycentric coordinates
    xy: torch.Tensor  # [K, 2] sample centres in supersampled pixel units (rasterizer convention)

    @property
    def covered(self) -> torch.Tensor:  # [K] bool, all True
        return self.face_index >= 0


def rasterize(pixels: torch.Tensor, depth: torch.Tensor, faces: torch.Tensor, height: int, width: int,
              near: float = 1e-3) -> Fragments:
    """Rasterize triangles given projected vertices.

    pixels [V, 2] (u, v) with sample (i, j) centred at (i + 0.5, j + 0.5); depth [V] camera z (> 0 in
    front); faces [F, 3]. Triangles with a vertex behind `near` are dropped (the head never crosses it).
    """
    device = pixels.device
    n_samples = height * width
    zbuf = torch.full((n_samples,), float("inf"), device=device)
    fbuf = torch.full((n_samples,), -1, dtype=torch.long, device=device)
    bbuf = torch.zeros(n_samples, 3, device=device)

    tri = pixels[faces]  # [F, 3, 2]
    tri_z = depth[faces]  # [F, 3]
    x, y = tri[..., 0], tri[..., 1]  # [F, 3]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])  # [F]
    # Bounding boxes in sample indices: sample c covers centre c + 0.5.
    c0 = torch.ceil(x.min(1).values - 0.5).clamp(min=0).long()
    c1 = torch.floor(x.max(1).values - 0.5).clamp(max=width - 1).long()
    r0 = torch.ceil(y.min(1).values - 0.5).clamp(min=0).long()
    r1 = torch.floor(y.max(1).values - 0.5).clamp(max=height - 1).long()
    box_w = (c1 - c0 + 1).clamp(min=0)
    box_h = (r1 - r0 + 1).clamp(min=0)
    valid = (tri_z > near).all(1) & (area.abs() > 1e-12)
    counts = torch.where(valid, box_w * box_h, torch.zeros_like(box_w))  # [F]
    face_ids = torch.nonzero(counts > 0).squeeze(1)

    # Chunks of whole triangles whose candidate counts add up to about CHUNK_CANDIDATES.
    cum = torch.cumsum(counts[face_ids], 0)
    start = 0
    while start < len(face_ids):
        base = cum[start - 1] if start > 0 else torch.zeros((), dtype=cum.dtype, device=device)
        stop = int(torch.searchsorted(cum, base + CHUNK_CANDIDATES, right=True))
        stop = max(stop, start + 1)
        _rasterize_chunk(face_ids[start:stop], counts, c0, r0, box_w, x, y, area, tri_z, width, zbuf, fbuf, bbuf)
        start = stop
    return Fragments(fbuf.view(height, width), bbuf.view(height, width, 3), zbuf.view(height, width))


def _rasterize_chunk(chunk, counts, c0, r0, box_w, x, y, area, tri_z, width, zbuf, fbuf, bbuf) -> None:
    """Test every sample of the chunk's bounding boxes; keep the nearest inside hit per sample (in place)."""
    n = counts[chunk]  # [f]
    face = torch.repeat_interleave(chunk, n)  # [K] triangle of each candidate
    first = torch.cumsum(n, 0) - n
    local = torch.arange(int(n.sum()), device=x.device) - torch.repeat_interleave(first, n)
    col = c0[face] + local % box_w[face]
    row = r0[face] + local // box_w[face]
    px, py = col.float() + 0.5, row.float() + 0.5  # sample centres

    fx, fy = x[face], y[face]  # [K, 3]
    # Screen-space barycentrics from edge functions (w_i is the weight of vertex i).
    w0 = (fx[:, 1] - px) * (fy[:, 2] - py) - (fy[:, 1] - py) * (fx[:, 2] - px)
    w1 = (fx[:, 2] - px) * (fy[:, 0] - py) - (fy[:, 2] - py) * (fx[:, 0] - px)
    w2 = (fx[:, 0] - px) * (fy[:, 1] - py) - (fy[:, 0] - py) * (fx[:, 1] - px)
    bary = torch.stack([w0, w1, w2], 1) / area[face, None]  # [K, 3]
    inside = (bary >= 0).all(1)
    face, bary, col, row = face[inside], bary[inside], col[inside], row[inside]
    # Perspective-correct: interpolate 1/z linearly in screen space.
    inv_z = bary / tri_z[face]  # [K, 3]
    inv_depth = inv_z.sum(1)
    z = 1.0 / inv_depth
    bary = inv_z / inv_depth[:, None]
    sample = row * width + col

    zbuf.scatter_reduce_(0, sample, z, reduce="amin")
    nearest = z <= zbuf[sample]
    # Ties (shared edges, equal depth): keep the highest candidate index, so the result is deterministic.
    order = torch.arange(len(z), device=z.device)
    best = torch.full_like(fbuf, -1).scatter_reduce_(0, sample[nearest], order[nearest], reduce="amax")
    keep = nearest & (best[sample] == order)
    fbuf[sample[keep]] = face[keep]
    bbuf[sample[keep]] = bary[keep]


def interpolate(vertex_attr: torch.Tensor, faces: torch.Tensor, fragments: Fragments | Samples) -> torch.Tensor:
    """Per-vertex attributes [V, C] -> per-sample [..., C] (zero where no triangle)."""
    face = fragments.face_index.clamp(min=0)
    corners = vertex_attr[faces[face]]  # [..., 3, C]
    out = (corners * fragments.bary[..., None]).sum(-2)
    return torch.where(fragments.covered[..., None], out, torch.zeros_like(out))


def face_values(face_attr: torch.Tensor, fragments: Fragments | Samples, empty: float | int = 0) -> torch.Tensor:
    """Per-face values [F] or [F, C] -> per-sample [...] or [..., C] (`empty` where no triangle)."""
    out = face_attr[fragments.face_index.clamp(min=0)]
    covered = fragments.covered if out.dim() == fragments.face_index.dim() else fragments.covered[..., None]
    return torch.where(covered, out, torch.full_like(out, empty))


def box_downsample(image: torch.Tensor, factor: int) -> torch.Tensor:
    """[H*s, W*s] or [H*s, W*s, C] -> [H, W] or [H, W, C], averaging s x s blocks."""
    if factor == 1:
        return image
    squeeze = image.dim() == 2
    img = image[..., None] if squeeze else image
    hs, ws, c = img.shape
    out = img.reshape(hs // factor, factor, ws // factor, factor, c).mean((1, 3))
    return out[..., 0] if squeeze else out


def majority_downsample(labels: torch.Tensor, factor: int, n_labels: int) -> torch.Tensor:
    """Label map [H*s, W*s] -> [H, W], the most frequent label of each s x s block."""
    if factor == 1:
        return labels
    hs, ws = labels.shape
    rows = torch.arange(hs, device=labels.device)[:, None] // factor
    cols = torch.arange(ws, device=labels.device)[None, :] // factor
    pixel = rows * (ws // factor) + cols  # [Hs, Ws] output pixel of each sample
    votes = torch.zeros((hs // factor) * (ws // factor) * n_labels, device=labels.device)
    votes.index_add_(0, (pixel * n_labels + labels.long()).reshape(-1), torch.ones(hs * ws, device=labels.device))
    # Ties go to the lowest label (argmax returns the first maximum).
    return votes.reshape(hs // factor, ws // factor, n_labels).argmax(-1)


@dataclass
class MeshImage:
    """A rendered mesh at the output resolution."""

    rgb: torch.Tensor  # [H, W, 3] over the background
    alpha: torch.Tensor  # [H, W] coverage in [0, 1] (soft edges)
    labels: torch.Tensor | None  # [H, W] long, 0 where background


def render_mesh(camera: Camera, vertices: torch.Tensor, faces: torch.Tensor, shade_fn, label_fn=None,
                background: torch.Tensor | None = None, supersample: int = 4, n_labels: int = 19,
                winding: torch.Tensor | None = None) -> MeshImage:
    """Render a mesh with a z-buffer, supersampled, through `camera` (the dataset's pinhole camera).

    vertices [V, 3] world; faces [F, 3]. The covered samples are shaded as a list (`Samples`, K of
    them): `shade_fn(samples, front, normals) -> [K, 3]` colours them, where front [K] bool is True
    where the outside of the mesh is seen (FLAME's open mouth and neck show inside faces) and
    normals [K, 3] are outward unit normals in camera space (OpenCV axes); `label_fn(samples, front)
    -> [K] long` labels them (majority per pixel). background [H, W, 3] (default white). `winding`
    [F] is `outward_winding` of the canonical mesh (computed from `vertices` when not given).
    """
    pixels, depth = camera.project(vertices)  # [V, 2], [V]
    s = int(supersample)
    height, width = camera.height * s, camera.width * s
    frags = rasterize(pixels * s, depth, faces, height, width)
    samples, flat = frags.samples()
    if winding is None:
        winding = outward_winding(vertices, faces)
    cam_vertices = camera.to_camera_space(vertices)  # [V, 3]
    v0, v1, v2 = cam_vertices[faces].unbind(1)
    face_n = winding[:, None] * torch.cross(v1 - v0, v2 - v0, dim=-1)  # outward normals in camera space
    facing = (face_n * (v0 + v1 + v2)).sum(-1) < 0  # [F] outward side seen from the camera (at origin)
    front = facing[samples.face_index]  # [K]
    normals = F.normalize(interpolate(vertex_normals(cam_vertices, faces, winding), faces, samples), dim=-1)
    device = vertices.device
    colour = torch.zeros(height * width, 3, device=device)
    colour[flat] = shade_fn(samples, front, normals)
    alpha = box_downsample(frags.covered.float(), s)
    if background is None:
        background = torch.ones(camera.height, camera.width, 3, device=device)
    rgb = box_downsample(colour.view(height, width, 3), s) + (1.0 - alpha[..., None]) * background
    labels = None
    if label_fn is not None:
        sample_labels = torch.zeros(height * width, dtype=torch.long, device=device)
        sample_labels[flat] = label_fn(samples, front)
        labels = majority_downsample(sample_labels.view(height, width), s, n_labels)
    return MeshImage(rgb.clamp(0, 1), alpha, labels)
