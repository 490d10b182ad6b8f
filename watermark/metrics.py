"""Distortion of a marked mesh against its original."""

from __future__ import annotations

import numpy as np
import trimesh
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from watermark.refine import refine

CANDIDATES = 12
PIECES_PER_DIAGONAL = 150
NORMAL_WEIGHT = 0.002
CHUNK = 100_000
FloatArray = NDArray[np.float64]


def _segment_distance(p: FloatArray, a: FloatArray, b: FloatArray) -> FloatArray:
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-300), 0.0, 1.0)
    return np.asarray(np.linalg.norm(p - (a + t[..., None] * ab), axis=-1))


def point_triangle_distance(p: FloatArray, tri: FloatArray) -> FloatArray:
    """Exact distance from points ``p`` (..., 3) to triangles ``tri`` (..., 3, 3)."""
    a, b, c = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    n = np.cross(b - a, c - a)
    norm = np.linalg.norm(n, axis=-1)
    inside = norm > 0
    for u, v in ((a, b), (b, c), (c, a)):
        inside &= (np.cross(v - u, p - u) * n).sum(-1) >= 0
    plane = np.abs(((p - a) * n).sum(-1)) / np.maximum(norm, 1e-300)
    edges = np.minimum.reduce([_segment_distance(p, u, v) for u, v in ((a, b), (b, c), (c, a))])
    return np.asarray(np.where(inside, plane, edges))


def surface_distances(
    original: trimesh.Trimesh, points: FloatArray, normals: FloatArray
) -> FloatArray:
    """Distance from each point (with its surface normal) to the surface of ``original``.

    The original is first split into small triangles (same surface).  Each
    point is measured exactly against the triangles nearest in position and
    normal (so the far side of a thin wall does not crowd out the near side);
    a candidate miss can only overstate the distance.
    """
    diagonal = float(np.linalg.norm(original.extents))
    vertices, faces = refine(
        np.asarray(original.vertices, dtype=np.float64),
        np.asarray(original.faces, dtype=np.int64),
        diagonal / PIECES_PER_DIAGONAL,
    )
    triangles = vertices[faces]
    face_normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    face_normals /= np.maximum(np.linalg.norm(face_normals, axis=1, keepdims=True), 1e-300)
    weight = NORMAL_WEIGHT * diagonal
    tree = cKDTree(np.hstack([triangles.mean(axis=1), weight * face_normals]))  # 6-d search
    out = np.empty(len(points))
    for start in range(0, len(points), CHUNK):
        chunk = slice(start, start + CHUNK)
        query = np.hstack([points[chunk], weight * normals[chunk]])
        _, nearest = tree.query(query, k=min(CANDIDATES, len(triangles)))
        distance = point_triangle_distance(points[chunk][:, None, :], triangles[nearest])
        out[chunk] = distance.min(axis=1)
    return out


def distortion(
    original: trimesh.Trimesh, marked: trimesh.Trimesh, unit_to_mm: float = 1.0
) -> tuple[float, float, float]:
    """(max vertex distance in mm, max in % of the diagonal, area-weighted RMS in % of it).

    Distances are from the marked vertices to the original surface; the RMS
    weights each vertex by a third of the area of its faces.
    """
    distance = surface_distances(
        original, np.asarray(marked.vertices), np.asarray(marked.vertex_normals)
    )
    faces = np.asarray(marked.faces)
    weight = np.bincount(
        faces.reshape(-1), np.repeat(marked.area_faces / 3.0, 3), len(marked.vertices)
    )
    diagonal = float(np.linalg.norm(original.extents))
    rms = float(np.sqrt((weight * distance**2).sum() / weight.sum()))
    peak = float(distance.max())
    return peak * unit_to_mm, 100.0 * peak / diagonal, 100.0 * rms / diagonal
