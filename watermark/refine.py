"""Conforming refinement: split every edge longer than a target length.

Each pass splits all long edges at their midpoints and re-triangulates every
face with the template for 1, 2 or 3 split edges.  A split edge is shared by
both of its faces, so no T-junction appears and a watertight mesh stays
watertight.  New vertices lie on the original (planar) triangles: the shape is
unchanged.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

_ROLL = np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]])


def _templates(
    v: NDArray[np.int64], m: NDArray[np.int64], count: NDArray[np.int64]
) -> list[NDArray[np.int64]]:
    """Triangles for faces rolled so split edges come first (edge i = v_i -> v_i+1)."""
    v0, v1, v2 = v.T
    m0, m1, m2 = m.T
    one, two, three = count == 1, count == 2, count == 3
    return [
        np.stack([v0, v1, v2], 1)[count == 0],
        np.stack([v0, m0, v2], 1)[one],
        np.stack([m0, v1, v2], 1)[one],
        np.stack([m0, v1, m1], 1)[two],
        np.stack([v0, m0, m1], 1)[two],
        np.stack([v0, m1, v2], 1)[two],
        np.stack([v0, m0, m2], 1)[three],
        np.stack([m0, v1, m1], 1)[three],
        np.stack([m2, m1, v2], 1)[three],
        np.stack([m0, m1, m2], 1)[three],
    ]


def _roll_amount(split: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Per face, the rotation that puts split edges at positions 0 (and 1)."""
    count = split.sum(1)
    first = np.argmax(split, axis=1)
    unsplit = np.argmin(split, axis=1)
    return np.where(count == 2, (unsplit + 1) % 3, np.where(count == 1, first, 0))


def _split_pass(
    vertices: NDArray[np.float64], faces: NDArray[np.int64], max_edge: float
) -> tuple[NDArray[np.float64], NDArray[np.int64], bool]:
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    keys, inverse = np.unique(edges[:, 0] * len(vertices) + edges[:, 1], return_inverse=True)
    unique = np.stack([keys // len(vertices), keys % len(vertices)], axis=1)
    length = np.linalg.norm(vertices[unique[:, 0]] - vertices[unique[:, 1]], axis=1)
    per_face = length[inverse.reshape(-1, 3)]
    longest = inverse.reshape(-1, 3)[np.arange(len(faces)), np.argmax(per_face, axis=1)]
    long_edge = np.zeros(len(unique), dtype=bool)
    long_edge[longest] = True
    long_edge &= length > max_edge
    if not long_edge.any():
        return vertices, faces, False
    mid_index = np.full(len(unique), -1, dtype=np.int64)
    mid_index[long_edge] = np.arange(long_edge.sum()) + len(vertices)
    mids = vertices[unique[long_edge]].mean(axis=1)
    m = mid_index[inverse.reshape(-1)].reshape(-1, 3)
    roll = _ROLL[_roll_amount(m >= 0)]
    rows = np.arange(len(faces))[:, None]
    v, m = faces[rows, roll], m[rows, roll]
    new_faces = np.concatenate(_templates(v, m, (m >= 0).sum(1)))
    return np.vstack([vertices, mids]), new_faces, True


def refine(
    vertices: NDArray[np.float64], faces: NDArray[np.int64], max_edge: float
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Split edges until none is longer than ``max_edge``."""
    changed = True
    while changed:
        vertices, faces, changed = _split_pass(vertices, faces, max_edge)
    return vertices, faces
