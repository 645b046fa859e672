"""A small synthetic head written in exactly the FLAME 2020 file layout (no licence needed).

The head is a star-shaped surface around the origin (FLAME units: metres, y up, face towards +z)
sampled on an (elevation, azimuth) grid: an ellipsoidal skull blended into a neck, with nose,
brows, eye sockets, cheekbones, lips, chin and ears as smooth bumps, and a mouth slit that opens
when the jaw rotates (the faces spanning the slit form the mouth interior). Two eyeball spheres
are skinned to the eye joints. Expression components move mouth, lips, brows and cheeks; shape
components change proportions. The same loader and code paths serve it and the real model.

Head variants (`HeadVariant`, `head_variant`) mesh the same anatomy with other tessellations and
vertex counts (FLAME's 5,023 among them), sizes and proportions, so that what trains on one head
model can be checked on others. The default variant is the head above, unchanged.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from ..files import temporary_beside

log = logging.getLogger(__name__)

EL_BOTTOM = -1.25  # elevation of the open neck boundary (radians)
MOUTH_EL = -0.465  # elevation of the lip line
MOUTH_HALF_WIDTH = 0.27  # azimuth half-width of the mouth slit (radians)
EYE_DIRECTION = (0.33, 0.36)  # (elevation, |azimuth|) of the eyes
EYEBALL_RADIUS = 0.0125
N_SHAPE_COMPONENTS = 300  # fixed by FLAME's file layout: expression components start at index 300
N_EXPRESSION_COMPONENTS = 100
MIN_EXPRESSION_COMPONENTS = 50  # the synthetic subjects' motion and the deformer drive 50
N_POSE_FEATURES = 36
GLOBAL, NECK, JAW, LEFT_EYE, RIGHT_EYE = range(5)  # FLAME's joint order; left = subject's left = +x
MODEL_FILE = "generic_model.pkl"
LANDMARK_FILE = "landmark_embedding.npy"


@dataclass(frozen=True)
class HeadVariant:
    """How the synthetic head is meshed and sized. The default builds the project's own head; the
    others keep its anatomy but change what a recipe must not depend on: the vertex count and
    tessellation, the size in FLAME units and the proportions, the number of expression components."""

    name: str = "default"
    rows: int = 60  # elevation rings below the top pole
    cols: int = 64  # azimuth samples (even: one column faces +z; odd: the face's midline lies between two)
    eye_rings: int = 6  # each eyeball is a UV sphere of eye_rings x eye_segments vertices plus two poles
    eye_segments: int = 10
    scale: float = 1.0  # uniform size factor of all geometry (template, joints, blendshapes)
    proportions: tuple[float, float, float] = field(default=(1.0, 1.0, 1.0))  # width, height, depth factors
    n_expression: int = N_EXPRESSION_COMPONENTS

    def __post_init__(self) -> None:
        problems = []
        if self.rows < 20 or self.cols < 24:
            problems.append(f"rows >= 20 and cols >= 24 (got {self.rows}, {self.cols})")
        if self.eye_rings < 2 or self.eye_segments < 3:
            problems.append(f"eye_rings >= 2 and eye_segments >= 3 (got {self.eye_rings}, {self.eye_segments})")
        if not self.scale > 0 or len(self.proportions) != 3 or not all(p > 0 for p in self.proportions):
            problems.append(f"a positive scale and three positive proportions (got {self.scale}, {self.proportions})")
        if self.n_expression < MIN_EXPRESSION_COMPONENTS:
            problems.append(f"n_expression >= {MIN_EXPRESSION_COMPONENTS} (got {self.n_expression})")
        if problems:
            raise ValueError(f"head variant {self.name!r} needs " + "; ".join(problems))

    @property
    def axis_scale(self) -> np.ndarray:
        """Per-axis factor [3] applied to every geometric array."""
        return self.scale * np.asarray(self.proportions, dtype=np.float64)

    @property
    def height_factor(self) -> float:
        """How much taller than the default head this one is (the subject generator frames by it)."""
        return float(self.axis_scale[1])


HEAD_VARIANTS = {
    "default": HeadVariant(),
    # A finer tessellation: 5,892 vertices.
    "dense": HeadVariant("dense", rows=72, cols=80),
    # FLAME's counts: 5,023 vertices (the eyeballs finer, as FLAME's), 300 shape + 100 expression components.
    "flame": HeadVariant("flame", rows=60, cols=67, eye_rings=16, eye_segments=31),
    "coarse": HeadVariant("coarse", rows=40, cols=44),
    "large": HeadVariant("large", scale=1.3),
    "small": HeadVariant("small", scale=0.75),
    "long": HeadVariant("long", proportions=(0.9, 1.15, 1.05)),
}


def head_variant(spec: str | HeadVariant | None) -> HeadVariant:
    """A variant from its name, optionally followed by field overrides: "dense", "flame,scale=1.3",
    "default,rows=50,cols=56,proportions=0.9:1.1:1". None is the default head."""
    if spec is None:
        return HEAD_VARIANTS["default"]
    if isinstance(spec, HeadVariant):
        return spec
    name, *overrides = [part.strip() for part in str(spec).split(",")]
    if name not in HEAD_VARIANTS:
        raise ValueError(f"unknown head variant {name!r}; choose one of {sorted(HEAD_VARIANTS)}")
    variant = HEAD_VARIANTS[name]
    if not overrides:
        return variant
    types = {f.name: f.type for f in fields(HeadVariant) if f.name != "name"}
    changes: dict = {}
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in types or not value:
            raise ValueError(f"head variant override {item!r}: expected key=value with key one of {sorted(types)}")
        try:
            if key == "proportions":
                changes[key] = tuple(float(v) for v in value.split(":"))
            else:
                changes[key] = float(value) if key == "scale" else int(value)
        except ValueError:
            raise ValueError(f"head variant override {item!r}: {value!r} is not a number") from None
    return replace(variant, name=str(spec), **changes)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def _bump(el: np.ndarray, az: np.ndarray, el0: float, az0: float, s_el: float, s_az: float) -> np.ndarray:
    """A Gaussian bump on the (elevation, azimuth) sphere."""
    return np.exp(-0.5 * ((el - el0) / s_el) ** 2 - 0.5 * (_wrap(az - az0) / s_az) ** 2)


def _directions(el: np.ndarray, az: np.ndarray) -> np.ndarray:
    """Unit vectors [..., 3] for elevation/azimuth (azimuth 0 = +z, positive towards +x)."""
    return np.stack([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], axis=-1)


def _base_radius(el: np.ndarray, az: np.ndarray) -> np.ndarray:
    """Distance from the origin to the skull-and-neck surface along each direction (metres)."""
    d = _directions(el, az)
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    front = np.clip(np.cos(az), 0.0, None) ** 2
    a_y = np.where(dy > 0, 0.105, 0.06 + 0.045 * front)
    a_z = np.where(dz > 0, 0.098, 0.092)
    skull = 1.0 / np.sqrt((dx / 0.077) ** 2 + (dy / a_y) ** 2 + (dz / a_z) ** 2)
    r_z = np.where(dz > 0, 0.042, 0.056)
    horizontal = np.sqrt((dx / 0.052) ** 2 + (dz / r_z) ** 2)
    neck = np.minimum(1.0 / np.maximum(horizontal, 1e-6), 0.19 / np.maximum(-dy, 1e-6))
    neck = neck * _smoothstep(-dy, 0.15, 0.45)
    return (skull ** 8 + neck ** 8) ** (1.0 / 8.0)


def _features(el: np.ndarray, az: np.ndarray, nose_scale: float = 1.0) -> np.ndarray:
    """Facial relief added to the base radius (metres)."""
    r = np.zeros_like(el)
    r += nose_scale * 0.024 * _bump(el, az, -0.02, 0.0, 0.14, 0.075)  # nose ridge
    r += nose_scale * 0.008 * _bump(el, az, -0.10, 0.0, 0.06, 0.09)  # nose tip
    for side in (-1.0, 1.0):
        r += 0.005 * _bump(el, az, -0.15, side * 0.12, 0.05, 0.05)  # nostril wings
        r += 0.006 * _bump(el, az, 0.45, side * 0.30, 0.07, 0.25)  # brow ridge
        r -= 0.010 * _bump(el, az, EYE_DIRECTION[0], side * EYE_DIRECTION[1], 0.08, 0.11)  # eye socket
        r += 0.006 * _bump(el, az, 0.05, side * 0.55, 0.15, 0.18)  # cheekbone
        r -= 0.003 * _bump(el, az, MOUTH_EL, side * 0.30, 0.05, 0.05)  # mouth corner
        r += 0.018 * _bump(el, az, 0.10, side * np.pi / 2, 0.18, 0.07)  # ear
    r += 0.007 * _bump(el, az, -0.40, 0.0, 0.05, 0.22)  # upper lip
    r += 0.007 * _bump(el, az, -0.53, 0.0, 0.05, 0.20)  # lower lip
    r += 0.008 * _bump(el, az, -0.80, 0.0, 0.10, 0.18)  # chin
    return r


def surface_points(el: np.ndarray, az: np.ndarray) -> np.ndarray:
    """Points [..., 3] of the template surface in the given directions."""
    el, az = np.asarray(el, dtype=np.float64), np.asarray(az, dtype=np.float64)
    return _directions(el, az) * (_base_radius(el, az) + _features(el, az))[..., None]


@dataclass
class _Grid:
    """Vertex bookkeeping of the head surface."""

    el: np.ndarray  # [rows] ring elevations
    az: np.ndarray  # [cols] column azimuths
    lip_row: int
    cut_cols: np.ndarray  # columns whose lip-row vertex is split into upper and lower lip
    corner_cols: tuple[int, int]

    @property
    def rows(self) -> int:
        return len(self.el)

    @property
    def cols(self) -> int:
        return len(self.az)

    def vertex(self, row: int, col: int) -> int:
        return 1 + row * self.cols + col % self.cols

    def lower_lip(self, col: int) -> int:
        """The vertex used below the lip line at (lip_row, col): a duplicate inside the slit."""
        col %= self.cols
        hits = np.nonzero(self.cut_cols == col)[0]
        return 1 + self.rows * self.cols + int(hits[0]) if len(hits) else self.vertex(self.lip_row, col)


def _grid(rows: int, cols: int) -> _Grid:
    step = (np.pi / 2 - EL_BOTTOM) / rows
    el = np.pi / 2 - step * (np.arange(rows) + 1)
    az = -np.pi + 2 * np.pi * np.arange(cols) / cols
    lip_row = int(np.argmin(np.abs(el - MOUTH_EL)))
    in_mouth = np.abs(az) <= MOUTH_HALF_WIDTH
    cols = np.nonzero(in_mouth)[0]
    corner_cols = (int(cols.min()) - 1, int(cols.max()) + 1)
    return _Grid(el, az, lip_row, cols, corner_cols)


def _head_surface(grid: _Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Vertices [Vh, 3], faces [F, 3], mouth-interior face flags [F], and face lookup of grid cells."""
    el_grid, az_grid = np.meshgrid(grid.el, grid.az, indexing="ij")
    ring = surface_points(el_grid, az_grid).reshape(-1, 3)
    pole = surface_points(np.array([np.pi / 2]), np.array([0.0]))
    lip_dups = ring[grid.lip_row * grid.cols + grid.cut_cols]
    vertices = np.concatenate([pole, ring, lip_dups], axis=0)

    faces: list[tuple[int, int, int]] = []
    mouth: list[bool] = []
    cells: dict = {}  # (row, col, 'upper'|'lower') -> face index; rows index the ring above the cell
    for col in range(grid.cols):  # triangle fan around the top pole
        faces.append((0, grid.vertex(0, col + 1), grid.vertex(0, col)))
        mouth.append(False)
    for row in range(grid.rows - 1):
        for col in range(grid.cols):
            a, b = grid.vertex(row, col), grid.vertex(row, col + 1)
            if row == grid.lip_row:  # cells just below the slit hang from the lower lip
                a, b = grid.lower_lip(col), grid.lower_lip(col + 1)
            c, d = grid.vertex(row + 1, col + 1), grid.vertex(row + 1, col)
            # Outward winding (counter-clockwise seen from outside): a, c, b and a, d, c.
            cells[(row, col, "upper")] = len(faces)
            faces.append((a, c, b))
            cells[(row, col, "lower")] = len(faces)
            faces.append((a, d, c))
            mouth += [False, False]
    lo, hi = grid.corner_cols
    for col in range(lo, hi):  # the slit's faces: degenerate when closed, the mouth interior when open
        upper_a, upper_b = grid.vertex(grid.lip_row, col), grid.vertex(grid.lip_row, col + 1)
        lower_a, lower_b = grid.lower_lip(col), grid.lower_lip(col + 1)
        # Quad upper_a, lower_a, lower_b, upper_b (counter-clockwise seen from the front); the
        # corner columns are shared by both lips, so their quads collapse to triangles.
        if lower_a != upper_a:
            faces.append((upper_a, lower_a, lower_b))
            mouth.append(True)
        if lower_b != upper_b or lower_a == upper_a:
            faces.append((upper_a, lower_b, upper_b) if lower_b != upper_b else (upper_a, lower_a, upper_b))
            mouth.append(True)
    return vertices, np.asarray(faces, dtype=np.int64), np.asarray(mouth), cells


def _eyeball(center: np.ndarray, radius: float, n_rings: int = 6, n_segments: int = 10
             ) -> tuple[np.ndarray, np.ndarray]:
    """A small UV sphere: vertices [n_rings * n_segments + 2, 3], faces with local indices."""
    el = np.pi / 2 - np.pi * (np.arange(n_rings) + 1) / (n_rings + 1)
    az = 2 * np.pi * np.arange(n_segments) / n_segments
    e, a = np.meshgrid(el, az, indexing="ij")
    ring = _directions(e, a).reshape(-1, 3)
    verts = np.concatenate([[[0, 1, 0]], ring, [[0, -1, 0]]]) * radius + center
    bottom = len(verts) - 1
    idx = lambda r, s: 1 + r * n_segments + s % n_segments  # noqa: E731
    faces = []
    for s in range(n_segments):
        faces.append((0, idx(0, s + 1), idx(0, s)))
        faces.append((bottom, idx(n_rings - 1, s), idx(n_rings - 1, s + 1)))
        for r in range(n_rings - 1):
            faces.append((idx(r, s), idx(r, s + 1), idx(r + 1, s + 1)))
            faces.append((idx(r, s), idx(r + 1, s + 1), idx(r + 1, s)))
    return verts, np.asarray(faces, dtype=np.int64)


def _smooth_field(points: np.ndarray, rng: np.random.Generator, n_waves: int, freq: float) -> np.ndarray:
    """A random smooth displacement field [V, 3] with max norm 1 (sum of low-frequency plane waves)."""
    field = np.zeros_like(points)
    for _ in range(n_waves):
        omega = rng.normal(size=3) * freq
        phase = rng.uniform(0, 2 * np.pi)
        field += np.sin(points @ omega + phase)[:, None] * rng.normal(size=3)[None]
    return field / max(np.linalg.norm(field, axis=1).max(), 1e-12)


def _gauss3(points: np.ndarray, center: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * np.sum((points - center) ** 2, axis=-1) / sigma ** 2)


@dataclass
class SyntheticFlame:
    """The synthetic model's arrays in FLAME's file layout, plus its 68-landmark embedding."""

    arrays: dict
    lmk_faces_idx: np.ndarray  # [68]
    lmk_bary_coords: np.ndarray  # [68, 3]
    mouth_faces: np.ndarray  # [F] bool: faces spanning the mouth slit


def _landmark_directions(corner_az: float) -> np.ndarray:
    """(elevation, azimuth) of the 68 iBUG landmarks in their standard order, [68, 2]."""
    pts: list[tuple[float, float]] = []
    for s in np.linspace(-1.0, 1.0, 17):  # 0-16 jaw line, subject's right (-x) to left
        pts.append((-0.12 - 0.72 * np.cos(s * np.pi / 2) ** 1.3, 1.38 * s))
    for side in (-1.0, 1.0):  # 17-21 right brow (outer to inner), 22-26 left brow (inner to outer)
        azs = np.linspace(0.58, 0.12, 5) if side < 0 else np.linspace(0.12, 0.58, 5)
        for a in azs:
            pts.append((0.47 + 0.04 * np.sin((a - 0.12) / 0.46 * np.pi), side * a))
    for e in np.linspace(0.28, -0.08, 4):  # 27-30 nose bridge to tip
        pts.append((e, 0.0))
    for a in np.linspace(-0.12, 0.12, 5):  # 31-35 nose base
        pts.append((-0.19 + 0.03 * (1 - abs(a) / 0.12), a))
    el0, a_eye = EYE_DIRECTION
    # 36-41 right eye, 42-47 left eye; both start at their image-left corner and run along the upper lid.
    eye_shape = [(0.0, -1.0), (0.045, -0.45), (0.045, 0.45), (0.0, 1.0), (-0.04, 0.45), (-0.04, -0.45)]
    for side in (-1.0, 1.0):
        for de, da in eye_shape:
            pts.append((el0 + de, side * a_eye + 0.09 * da))
    half = corner_az + 0.02  # outer corners just outside the slit's corners
    outer_upper = [(-1.0, 0.0), (-0.6, 0.055), (-0.25, 0.065), (0.0, 0.06), (0.25, 0.065), (0.6, 0.055)]
    for f, de in outer_upper:  # 48-53 outer lip, right corner along the upper lip
        pts.append((MOUTH_EL + de, f * half))
    pts.append((MOUTH_EL, half))  # 54 left corner
    for f, de in [(0.6, -0.06), (0.25, -0.075), (0.0, -0.08), (-0.25, -0.075), (-0.6, -0.06)]:  # 55-59 lower lip
        pts.append((MOUTH_EL + de, f * half))
    return np.asarray(pts, dtype=np.float64)


def _cell_barycentric(grid: _Grid, cells: dict, el: float, az: float, on_row: str | None = None
                      ) -> tuple[int, np.ndarray]:
    """Face index and barycentric coordinates of the surface point in direction (el, az).

    `on_row='upper'` / `'lower'` snaps to the lip row from above / below (the inner lip landmarks).
    """
    step_el = grid.el[0] - grid.el[1]
    step_az = grid.az[1] - grid.az[0]
    colf = (az - grid.az[0]) / step_az
    col = int(np.floor(colf))
    w = colf - col
    if on_row is None:
        rowf = (grid.el[0] - el) / step_el
        row = int(np.floor(rowf))
        u = rowf - row
    elif on_row == "upper":
        row, u = grid.lip_row - 1, 1.0
    else:
        row, u = grid.lip_row, 0.0
    if w >= u:  # face (a, c, b): p = a + w (b - a) + u (c - b)
        return cells[(row, col % grid.cols, "upper")], np.array([1.0 - w, u, w - u])
    return cells[(row, col % grid.cols, "lower")], np.array([1.0 - u, u - w, w])  # face (a, d, c)


def build_synthetic_flame(seed: int = 0, variant: str | HeadVariant | None = None) -> SyntheticFlame:
    """Build the synthetic FLAME-format model (deterministic for a seed and variant; see `head_variant`)."""
    variant = head_variant(variant)
    rng = np.random.default_rng(seed)
    grid = _grid(variant.rows, variant.cols)
    head_v, head_f, mouth_f, cells = _head_surface(grid)
    n_head = len(head_v)

    eye_centers = []
    eyes_v, eyes_f = [], []
    for side in (1.0, -1.0):  # left eye (+x) first, as FLAME's joint order
        el0, az0 = EYE_DIRECTION[0], side * EYE_DIRECTION[1]
        direction = _directions(np.array(el0), np.array(az0))
        surface = _base_radius(np.array(el0), np.array(az0)) + 0.006  # flush with the face around the socket
        center = direction * (surface - EYEBALL_RADIUS)
        verts, faces = _eyeball(center, EYEBALL_RADIUS, variant.eye_rings, variant.eye_segments)
        eyes_f.append(faces + n_head + sum(len(v) for v in eyes_v))
        eyes_v.append(verts)
        eye_centers.append(center)
    vertices = np.concatenate([head_v] + eyes_v, axis=0)
    faces = np.concatenate([head_f] + eyes_f, axis=0)
    mouth_faces = np.concatenate([mouth_f, np.zeros(sum(len(f) for f in eyes_f), dtype=bool)])
    n_vertices = len(vertices)
    eye_slices = [slice(n_head, n_head + len(eyes_v[0])), slice(n_head + len(eyes_v[0]), n_vertices)]

    # Direction of every head vertex (eyeball vertices take their socket's direction).
    el_v = np.arcsin(np.clip(vertices[:, 1] / np.linalg.norm(vertices, axis=1), -1, 1))
    az_v = np.arctan2(vertices[:, 0], vertices[:, 2])
    for sl, center in zip(eye_slices, eye_centers):
        el_v[sl] = np.arcsin(center[1] / np.linalg.norm(center))
        az_v[sl] = np.arctan2(center[0], center[2])
    lower_lip = np.zeros(n_vertices, dtype=bool)
    lower_lip[1 + grid.rows * grid.cols: n_head] = True
    is_eye = np.zeros(n_vertices, dtype=bool)
    is_eye[n_head:] = True

    # Skinning weights: neck base -> global, head -> neck, lower face -> jaw, eyeballs -> eyes.
    y = vertices[:, 1]
    neck_w = _smoothstep(y, -0.125, -0.07)
    front = _smoothstep(np.cos(az_v), 0.05, 0.45)
    below_lip = _smoothstep(MOUTH_EL - el_v, 0.0, 0.12)
    below_lip[lower_lip] = 1.0
    above_neck = _smoothstep(el_v, -1.2, -0.95)
    jaw_w = front * below_lip * above_neck
    jaw_w[is_eye] = 0.0
    weights = np.zeros((n_vertices, 5))
    weights[:, GLOBAL] = 1.0 - neck_w
    weights[:, NECK] = neck_w * (1.0 - jaw_w)
    weights[:, JAW] = neck_w * jaw_w
    for joint, sl in zip((LEFT_EYE, RIGHT_EYE), eye_slices):
        weights[sl] = 0.0
        weights[sl, joint] = 1.0

    # Joint regressor: each joint is the mean of a set of vertices.
    j_regressor = np.zeros((5, n_vertices))
    ring_rows = {GLOBAL: grid.rows - 1, NECK: int(np.argmin(np.abs(grid.el + 1.0)))}
    for joint, row in ring_rows.items():
        j_regressor[joint, 1 + row * grid.cols: 1 + (row + 1) * grid.cols] = 1.0
    hinge = np.zeros(n_vertices, dtype=bool)
    for side in (-1.0, 1.0):
        hinge |= (_bump(el_v, az_v, -0.25, side * 1.35, 0.08, 0.08) > 0.5) & ~is_eye
    j_regressor[JAW, hinge] = 1.0
    for joint, sl in zip((LEFT_EYE, RIGHT_EYE), eye_slices):
        j_regressor[joint, sl] = 1.0
    j_regressor /= j_regressor.sum(axis=1, keepdims=True)

    shapedirs = np.zeros((n_vertices, 3, N_SHAPE_COMPONENTS + variant.n_expression))
    shapedirs[:, :, :N_SHAPE_COMPONENTS] = _shape_components(vertices, el_v, az_v, rng)
    shapedirs[:, :, N_SHAPE_COMPONENTS:] = _expression_components(vertices, el_v, az_v, lower_lip, is_eye, rng,
                                                                  variant.n_expression)
    posedirs = _pose_correctives(vertices, weights, j_regressor @ vertices, rng)
    # Size and proportions scale all geometry (the shapes above are designed on the default head's
    # metres): every array is a position or a displacement, so one per-axis factor serves all.
    axis = variant.axis_scale
    if not np.array_equal(axis, np.ones(3)):
        vertices = vertices * axis
        shapedirs = shapedirs * axis[None, :, None]
        posedirs = posedirs * axis[None, :, None]

    corner_az = float(grid.az[grid.corner_cols[1]])
    lmk = [_cell_barycentric(grid, cells, e, a) for e, a in _landmark_directions(corner_az)]
    # 60 right inner corner, 61-63 upper inner lip, 64 left inner corner, 65-67 lower inner lip.
    for f, side in ((-1.0, "upper"), (-0.5, "upper"), (0.0, "upper"), (0.5, "upper"),
                    (1.0, "upper"), (0.5, "lower"), (0.0, "lower"), (-0.5, "lower")):
        lmk.append(_cell_barycentric(grid, cells, MOUTH_EL, f * corner_az, side))
    lmk_faces_idx = np.array([f for f, _ in lmk], dtype=np.int64)
    lmk_bary = np.stack([b for _, b in lmk])

    parents = np.array([np.iinfo(np.uint32).max, GLOBAL, NECK, NECK, NECK], dtype=np.int64)
    arrays = {
        "v_template": vertices,
        "f": faces.astype(np.uint32),
        "shapedirs": shapedirs,
        "posedirs": posedirs,
        "J_regressor": j_regressor,
        "J": j_regressor @ vertices,
        "weights": weights,
        "kintree_table": np.stack([parents, np.arange(5)]),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    return SyntheticFlame(arrays, lmk_faces_idx, lmk_bary, mouth_faces)


def _shape_components(vertices: np.ndarray, el: np.ndarray, az: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[V, 3, 300]: first a few interpretable proportions, then smooth random fields of decaying size."""
    out = np.zeros((len(vertices), 3, N_SHAPE_COMPONENTS))
    rel = vertices  # proportions scale about the head's origin
    head = _smoothstep(vertices[:, 1], -0.12, -0.06)[:, None]
    out[:, 0, 0] = 0.06 * rel[:, 0] * head[:, 0]  # head width
    out[:, 1, 1] = 0.05 * rel[:, 1] * head[:, 0]  # head height
    out[:, 2, 2] = 0.05 * rel[:, 2] * head[:, 0]  # head depth
    nose = _bump(el, az, -0.05, 0.0, 0.16, 0.1)
    out[:, :, 3] = 0.004 * nose[:, None] * _directions(el, az)  # nose size
    jaw = _bump(el, az, -0.6, 0.0, 0.3, 0.9) * _smoothstep(-el, 0.2, 0.5)
    out[:, 0, 4] = 0.05 * rel[:, 0] * jaw  # jaw width
    chin = _bump(el, az, -0.85, 0.0, 0.15, 0.3)
    out[:, 1, 5] = -0.004 * chin  # chin length
    out[:, 2, 6] = 0.003 * _bump(el, az, 0.6, 0.0, 0.25, 0.6)  # forehead slope
    for k in range(7, N_SHAPE_COMPONENTS):
        out[:, :, k] = 0.003 / (1.0 + k / 10.0) * _smooth_field(vertices, rng, 4, 12.0)
    return out


def _expression_components(vertices: np.ndarray, el: np.ndarray, az: np.ndarray, lower_lip: np.ndarray,
                           is_eye: np.ndarray, rng: np.random.Generator,
                           n_components: int = N_EXPRESSION_COMPONENTS) -> np.ndarray:
    """[V, 3, n_components]: mouth, lips, brows and cheeks move differently; eyeballs never deform."""
    out = np.zeros((len(vertices), 3, n_components))
    normal = _directions(el, az)
    below = (_smoothstep(MOUTH_EL - el, -0.005, 0.05) + lower_lip).clip(0, 1)
    above = 1.0 - below
    # 0: mouth opens (lower lip and chin drop)
    out[:, 1, 0] = -0.006 * below * _bump(el, az, -0.65, 0.0, 0.25, 0.45)
    # 1: smile (both corners up, out and back; cheeks lift)
    for side in (-1.0, 1.0):
        corner = _bump(el, az, MOUTH_EL, side * 0.30, 0.10, 0.12)
        cheek = _bump(el, az, -0.15, side * 0.45, 0.12, 0.15)
        out[:, :, 1] += 0.005 * corner[:, None] * np.array([side * 0.6, 0.8, -0.4])
        out[:, 1, 1] += 0.002 * cheek
    # 2: brows raise; 3: brows furrow (inner brows down and together)
    out[:, 1, 2] = 0.005 * (_bump(el, az, 0.47, 0.3, 0.08, 0.2) + _bump(el, az, 0.47, -0.3, 0.08, 0.2))
    for side in (-1.0, 1.0):
        inner = _bump(el, az, 0.45, side * 0.15, 0.07, 0.1)
        out[:, :, 3] += 0.004 * inner[:, None] * np.array([-side * 0.7, -0.7, 0.0])
    # 4: pucker (lips forward and narrower)
    lips = _bump(el, az, MOUTH_EL, 0.0, 0.09, 0.3)
    out[:, 2, 4] = 0.006 * lips
    out[:, 0, 4] = -0.05 * vertices[:, 0] * lips
    # 5: cheeks puff (outward along the surface direction)
    for side in (-1.0, 1.0):
        out[:, :, 5] += 0.005 * _bump(el, az, -0.3, side * 0.55, 0.15, 0.18)[:, None] * normal
    # 6: upper lip raise; 7: lower lip down alone
    out[:, 1, 6] = 0.003 * above * _bump(el, az, -0.38, 0.0, 0.06, 0.25)
    out[:, 1, 7] = -0.003 * below * _bump(el, az, -0.55, 0.0, 0.06, 0.22)
    # 8, 9: one-sided smiles
    for k, side in ((8, 1.0), (9, -1.0)):
        corner = _bump(el, az, MOUTH_EL, side * 0.30, 0.10, 0.12)
        out[:, :, k] = 0.004 * corner[:, None] * np.array([side * 0.5, 0.9, -0.3])
    # 10..: localised smooth fields over the face, of decaying size
    face = _smoothstep(np.cos(az), 0.2, 0.6) * _smoothstep(el, -1.05, -0.85) * _smoothstep(-el, -0.75, -0.55)
    for k in range(10, n_components):
        center_el, center_az = rng.uniform(-0.9, 0.6), rng.uniform(-0.7, 0.7)
        local = _bump(el, az, center_el, center_az, 0.2, 0.25) * face
        out[:, :, k] = 0.003 / (1.0 + (k - 10) / 8.0) * local[:, None] * _smooth_field(vertices, rng, 2, 15.0)
    out[is_eye] = 0.0
    return out


def _pose_correctives(vertices: np.ndarray, weights: np.ndarray, joints: np.ndarray, rng: np.random.Generator
                      ) -> np.ndarray:
    """[V, 3, 36]: small smooth bulges near the joint each pose feature belongs to, on the skin it moves."""
    out = np.zeros((len(vertices), 3, N_POSE_FEATURES))
    sigmas = {NECK: 0.05, JAW: 0.05, LEFT_EYE: 0.015, RIGHT_EYE: 0.015}  # metres
    amplitude = {NECK: 0.01, JAW: 0.01, LEFT_EYE: 0.002, RIGHT_EYE: 0.002}
    for joint in (NECK, JAW, LEFT_EYE, RIGHT_EYE):
        local = _gauss3(vertices, joints[joint], sigmas[joint] * 1.5) * weights[:, joint]
        for entry in range(9):
            k = (joint - 1) * 9 + entry
            out[:, :, k] = amplitude[joint] * local[:, None] * _smooth_field(vertices, rng, 2, 10.0)
    return out


def _write_beside(path: Path, suffix: str, write) -> None:
    """write(binary file) into a temporary beside `path`, then move it over `path` (removed if writing fails)."""
    fd, tmp = temporary_beside(path, suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_synthetic_flame(folder: str | Path, seed: int = 0, variant: str | HeadVariant | None = None
                          ) -> tuple[Path, Path]:
    """Write `generic_model.pkl` and `landmark_embedding.npy` of the synthetic model into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_synthetic_flame(seed, variant)
    model_path, landmark_path = folder / MODEL_FILE, folder / LANDMARK_FILE
    # Each writer has a temporary of its own: runs starting at once each move a complete file into place.
    _write_beside(model_path, ".tmp", lambda handle: pickle.dump(model.arrays, handle, protocol=2))
    # FLAME's own landmark-embedding layout: face indices plus barycentric coordinates.
    embedding = {
        "full_lmk_faces_idx": model.lmk_faces_idx[None],
        "full_lmk_bary_coords": model.lmk_bary_coords[None],
        "static_lmk_faces_idx": model.lmk_faces_idx[17:],
        "static_lmk_bary_coords": model.lmk_bary_coords[17:],
    }
    _write_beside(landmark_path, ".tmp", lambda handle: np.save(handle, np.array(embedding, dtype=object),
                                                               allow_pickle=True))
    log.info("wrote the synthetic FLAME model to %s", folder)
    return model_path, landmark_path


def synthetic_flame_files(folder: str | Path, seed: int = 0, variant: str | HeadVariant | None = None
                          ) -> tuple[Path, Path]:
    """Paths of the synthetic model in `folder`, writing it there first if it is missing."""
    folder = Path(folder)
    model_path, landmark_path = folder / MODEL_FILE, folder / LANDMARK_FILE
    if not (model_path.is_file() and landmark_path.is_file()):
        write_synthetic_flame(folder, seed, variant)
    return model_path, landmark_path
