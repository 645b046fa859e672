"""Face-parsing regions of a FLAME mesh, derived from its canonical geometry and 68 landmarks.

Only geometry that every FLAME-format model has is used (landmarks, skinning weights, the y-up /
face-towards-+z frame), so the same rules label the synthetic head and the real FLAME 2020 mesh.
Labels follow the face-parsing convention of IMavatar's preprocessing (docs/DATA_FORMAT.md).
"""

from __future__ import annotations

import numpy as np

BACKGROUND, SKIN, L_BROW, R_BROW, L_EYE, R_EYE = 0, 1, 2, 3, 4, 5
NOSE, MOUTH, U_LIP, L_LIP, NECK, CLOTH, HAIR = 10, 11, 12, 13, 14, 16, 17  # 15 is a necklace
N_LABELS = 19
LEFT_EYE_JOINT, RIGHT_EYE_JOINT = 3, 4  # FLAME joint order; left = the subject's left (+x)

# 68-landmark index groups (iBUG order).
JAW = list(range(0, 17))
RIGHT_BROW, LEFT_BROW = list(range(17, 22)), list(range(22, 27))
NOSE_BASE = list(range(31, 36))
OUTER_UPPER_LIP = list(range(48, 55))  # right corner .. left corner along the top
OUTER_LOWER_LIP = [54, 55, 56, 57, 58, 59, 48]
INNER_UPPER_LIP = [64, 63, 62, 61, 60]  # back from left to right
INNER_LOWER_LIP = [60, 67, 66, 65, 64]
INNER_LIP = [60, 61, 62, 63, 64, 65, 66, 67]


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """points [N, 2], polygon [M, 2] (closed implicitly) -> inside [N] bool (even-odd rule)."""
    x, y = points[:, :1], points[:, 1:2]
    x1, y1 = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    crosses = (y1 > y) != (y2 > y)
    dy = np.where(np.abs(y2 - y1) < 1e-12, 1e-12, y2 - y1)
    x_cross = x1 + (y - y1) * (x2 - x1) / dy
    return (crosses & (x < x_cross)).sum(1) % 2 == 1


def _distance_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """points [N, D], polyline [M, D] -> distance [N] to the nearest segment."""
    a, b = line[:-1][None], line[1:][None]  # [1, M-1, D]
    p = points[:, None]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1).min(1)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def point_regions(points: np.ndarray, landmarks: np.ndarray, mesh_min_y: float, mesh_min_z: float) -> np.ndarray:
    """Labels [N] of canonical points [N, 3] on the head surface, given the canonical landmarks [68, 3].

    Eyes and the mouth interior need more than positions; see `vertex_regions` and `face_regions`.
    """
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    lm = landmarks
    brow_y = lm[RIGHT_BROW + LEFT_BROW, 1].mean()
    nose_base_y = lm[NOSE_BASE, 1].mean()
    chin_y = lm[8, 1]
    face_third = brow_y - nose_base_y  # forehead, nose and lower face are about this tall
    ear_z = lm[[0, 16], 2].mean()  # the jaw contour's ends lie in front of the ears
    front = z > ear_z
    labels = np.full(len(points), SKIN, dtype=np.int64)

    # Neck: below the jaw contour seen from the front; behind the jaw, below its ends.
    order = np.argsort(lm[JAW, 0])
    jaw_y = np.interp(x, lm[JAW, 0][order], lm[JAW, 1][order])
    neck = np.where(front, y < jaw_y - 0.02 * face_third, y < lm[[0, 16], 1].mean())
    labels[neck] = NECK
    # Cloth: the lowest part of the neck, where a collar would be.
    labels[y < mesh_min_y + 0.3 * (chin_y - mesh_min_y)] = CLOTH

    # Hair: a cap whose edge runs from the forehead (front) down to the nape (back).
    z_front = lm[RIGHT_BROW + LEFT_BROW, 2].mean()
    t = _smoothstep((z - mesh_min_z) / max(z_front - mesh_min_z, 1e-6), 0.2, 0.7)
    hairline = nose_base_y + t * (brow_y + 0.45 * face_third - nose_base_y)
    labels[y > hairline] = HAIR

    # Brows: bands along the brow landmarks.
    for group, label in ((RIGHT_BROW, R_BROW), (LEFT_BROW, L_BROW)):
        near = _distance_to_polyline(points, lm[group]) < 0.09 * face_third
        labels[near & front] = label

    # Nose: between the bridge top and the nose base, widening towards the nostrils.
    top_y, base_y = lm[27, 1], lm[NOSE_BASE, 1].min()
    half_width = 0.5 * (lm[35, 0] - lm[31, 0])
    s = np.clip((top_y - y) / max(top_y - base_y, 1e-6), 0.0, 1.0)
    width = half_width * (0.45 + 0.85 * s)
    nose = front & (y <= top_y) & (y >= base_y - 0.05 * face_third) & (np.abs(x - lm[30, 0]) <= width)
    labels[nose] = NOSE

    # Lips: inside the outer lip contour, split by the inner lip line (frontal projection).
    xy = points[:, :2]
    upper = np.concatenate([lm[OUTER_UPPER_LIP, :2], lm[INNER_UPPER_LIP, :2]])
    lower = np.concatenate([lm[OUTER_LOWER_LIP, :2], lm[INNER_LOWER_LIP, :2]])
    lips_front = z > lm[[48, 54], 2].mean() - 0.1 * face_third
    labels[lips_front & points_in_polygon(xy, upper)] = U_LIP
    labels[lips_front & points_in_polygon(xy, lower)] = L_LIP
    return labels


def vertex_regions(vertices: np.ndarray, landmarks: np.ndarray, lbs_weights: np.ndarray) -> np.ndarray:
    """Labels [V] of the canonical mesh vertices; eyeballs are the vertices skinned to the eye joints."""
    labels = point_regions(vertices, landmarks, float(vertices[:, 1].min()), float(vertices[:, 2].min()))
    dominant = lbs_weights.argmax(1)
    labels[dominant == LEFT_EYE_JOINT] = L_EYE
    labels[dominant == RIGHT_EYE_JOINT] = R_EYE
    return labels


def face_regions(vertices: np.ndarray, faces: np.ndarray, landmarks: np.ndarray, lbs_weights: np.ndarray,
                 open_vertices: np.ndarray, open_landmarks: np.ndarray) -> np.ndarray:
    """Labels [F] of the faces, from their canonical centroids.

    The mouth interior is found on the mesh with the jaw opened (open_vertices, open_landmarks): faces
    inside the inner lip contour there and not far behind the lips (which excludes the back of the
    head). FLAME itself has a hole there, seen through to back faces that the renderer labels apart.
    """
    centroids = vertices[faces].mean(1)
    labels = point_regions(centroids, landmarks, float(vertices[:, 1].min()), float(vertices[:, 2].min()))
    eye = vertex_regions(vertices, landmarks, lbs_weights)[faces]  # [F, 3]
    for label in (L_EYE, R_EYE):
        labels[(eye == label).sum(1) >= 2] = label
    open_centroids = open_vertices[faces].mean(1)
    lips_z = open_landmarks[INNER_LIP, 2].mean()
    face_third = landmarks[RIGHT_BROW + LEFT_BROW, 1].mean() - landmarks[NOSE_BASE, 1].mean()
    inside = points_in_polygon(open_centroids[:, :2], open_landmarks[INNER_LIP, :2])
    mouth = inside & (open_centroids[:, 2] > lips_z - 0.6 * face_third) & (labels != L_EYE) & (labels != R_EYE)
    labels[mouth] = MOUTH
    return labels
