"""Pose normalisation: centre, scale and candidate orientations of a surface.

Centre, scale and principal axes come from the exact area-weighted surface
moments of the convex hull: they do not depend on the tessellation, and noise,
thin triangles or remeshing barely move them.  The orientation comes from
the principal axes of that surface; where two or three
principal moments coincide (cylinders, tori, square plates, cubes) the axes are
not defined by the second moments, and the free rotation about the
well-defined axis is fixed by the phase of the strongest angular harmonic of
the hull's facet normals (area-weighted), up to its m-fold ambiguity.  The
embedder uses the first candidate; the detector tries all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import ConvexHull

FloatArray = NDArray[np.float64]
Facets = tuple[FloatArray, FloatArray]  # hull facet areas (n,) and unit normals (n, 3)

GAP = 0.02  # relative gap between principal moments below which axes are ambiguous
MAX_HARMONIC = 64
MAX_CANDIDATES = 160
HULL_POINTS = 60_000
ORDER_RATIO = 0.6  # the detector also tries harmonics this close to the strongest
WEAK_GAP = 0.15  # principal axes this close to a degeneracy turn by a degree under smoothing


@dataclass(frozen=True)
class Frame:
    """Similarity transform to the canonical frame: q = R (p - centre) / scale."""

    centre: FloatArray
    scale: float
    rotation: FloatArray

    def to_local(self, points: FloatArray) -> FloatArray:
        return np.asarray((points - self.centre) @ self.rotation.T / self.scale)

    def rotate(self, vectors: FloatArray) -> FloatArray:
        return np.asarray(vectors @ self.rotation.T)


def robust_areas(vertices: FloatArray, faces: NDArray[np.int64]) -> tuple[FloatArray, FloatArray]:
    """Per face: area projected on a smoothed normal, and that unit normal.

    The smoothed normal is the vector area of the faces around the face's
    vertices, which depends on the ring's boundary, not on noise inside it.
    Projected areas are unbiased under vertex noise, whereas plain triangle areas
    of small or thin triangles grow with noise and would skew every average.
    """
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flat = faces.reshape(-1)
    ring = np.stack(
        [np.bincount(flat, np.repeat(cross[:, i], 3), len(vertices)) for i in range(3)], 1
    )
    normal = ring[faces].sum(1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-300)
    return np.maximum(0.5 * (cross * normal).sum(1), 0.0), normal


def surface_moments(
    triangles: FloatArray, area: FloatArray
) -> tuple[FloatArray, float, FloatArray]:
    """Area-weighted centroid, RMS radius and covariance of a triangle set (exact per face)."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    total = float(area.sum())
    s = a + b + c
    centre = (area[:, None] * s).sum(0) / (3.0 * total)
    outer = sum(np.einsum("ni,nj->nij", v, v) for v in (a, b, c)) + np.einsum("ni,nj->nij", s, s)
    second = np.einsum("n,nij->ij", area, outer) / (12.0 * total)
    cov = second - np.outer(centre, centre)
    return centre, float(np.sqrt(np.trace(cov))), cov


def _basis(axis: FloatArray) -> tuple[FloatArray, FloatArray]:
    helper = np.eye(3)[int(np.argmin(np.abs(axis)))]
    b1 = np.cross(axis, helper)
    b1 /= np.linalg.norm(b1)
    return b1, np.cross(axis, b1)


def _harmonics(
    normals: FloatArray, area: FloatArray, axis: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Strength (0..1) and phase of angular harmonics m = 2..MAX of normals about ``axis``.

    The normals and areas are those of the convex hull's facets, so this is the
    angular spectrum of the hull's extended Gaussian image: a tessellated
    cylinder, torus or plate has its flat facets at a few discrete azimuths.
    Hull facets are large and span the whole part, so noise, quantisation and
    smoothing, which tilt the normals of the small triangles of a dense mesh
    at random (or towards the quantisation grid), barely move this phase.
    """
    b1, b2 = _basis(axis)
    z = normals @ b1 + 1j * (normals @ b2)
    weight = area * np.abs(z) ** 2
    unit = z / np.maximum(np.abs(z), 1e-300)
    power = unit.copy()
    moments = []
    for _ in range(2, MAX_HARMONIC + 1):
        power *= unit
        moments.append(weight @ power)
    stacked = np.array(moments)
    return np.abs(stacked) / max(float(weight.sum()), 1e-300), np.angle(stacked)


def _orders(strength: FloatArray, count: int) -> list[int]:
    """The lowest strong harmonic orders, skipping multiples of one already taken.

    A shape with m-fold facets is as strong at 2m, 3m, ...: the fundamental
    is the stable choice.
    """
    picked: list[int] = []
    strong = np.flatnonzero(strength >= ORDER_RATIO * strength.max()) + 2
    for m in strong.tolist():
        if len(picked) < count and not any(m % p == 0 for p in picked):
            picked.append(m)
    return picked


def _frames_about(axis: FloatArray, facets: Facets, n_orders: int) -> list[FloatArray]:
    """Rotations whose third row is ``axis`` and whose first row sits at a harmonic's phase."""
    strength, phase = _harmonics(facets[1], facets[0], axis)
    b1, b2 = _basis(axis)
    out = []
    for m in _orders(strength, n_orders):
        for j in range(m):
            angle = (phase[m - 2] + 2.0 * np.pi * j) / m
            e1 = np.cos(angle) * b1 + np.sin(angle) * b2
            out.append(np.stack([e1, np.cross(axis, e1), axis]))
    return out


def _pca_frames(axes: FloatArray) -> list[FloatArray]:
    out = []
    for s1, s2 in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        e1, e2 = s1 * axes[:, 0], s2 * axes[:, 1]
        out.append(np.stack([e1, e2, np.cross(e1, e2)]))
    return out


def _dominant_normals(area: FloatArray, normal: FloatArray, count: int) -> list[FloatArray]:
    """Mean normals of the largest flat regions (by area), for fully symmetric shapes."""
    _, inverse = np.unique(np.round(normal * 8), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    sums = np.stack([np.bincount(inverse, area * normal[:, i]) for i in range(3)], 1)
    order = np.argsort(-np.linalg.norm(sums, axis=1))[:count]
    return [sums[i] / np.linalg.norm(sums[i]) for i in order]


def hull_triangles(vertices: FloatArray) -> FloatArray:
    """Triangles of the convex hull: its moments shrug off noise, slivers and remeshing.

    Dense meshes use a fixed-seed subset plus the extreme vertex in many
    directions; the dropped vertices lie within a triangle's size of the kept
    ones, which moves the hull moments negligibly and keeps qhull fast.
    """
    if len(vertices) > HULL_POINTS:
        rng = np.random.default_rng(HULL_POINTS)
        extreme = [int(np.argmax(vertices @ d)) for d in rng.normal(size=(100, 3))]
        keep = np.union1d(rng.choice(len(vertices), HULL_POINTS, replace=False), extreme)
        vertices = vertices[keep]
    return np.asarray(vertices[ConvexHull(vertices).simplices], dtype=np.float64)


def candidate_frames(hull: FloatArray, strict: bool) -> list[Frame]:
    """Candidate canonical frames from the convex hull's triangles.

    ``strict`` gives only the embedder's family (its first member is used); the
    detector's wider tolerances cover shapes near a degeneracy threshold.
    """
    area, normal, centre, scale, axes, gaps = _principal(hull)
    families: dict[str, Callable[[], list[FloatArray]]] = {
        "pca": lambda: _pca_frames(axes),
        "axis3": lambda: _about_both(axes[:, 2], (area, normal), 1 if strict else 2),
        "axis1": lambda: _about_both(axes[:, 0], (area, normal), 1 if strict else 2),
        "normals": lambda: [
            r
            for n in _dominant_normals(area, normal, 6)
            for r in _frames_about(n, (area, normal), 1)
        ],
    }
    chosen = [_family(gaps, GAP, GAP)]
    if not strict:
        chosen += [f for f in families if f not in chosen and _plausible(f, gaps)]
    rotations = [r for name in chosen for r in families[name]()]
    rotations = rotations[:1] if strict else rotations[:MAX_CANDIDATES]
    return [Frame(centre, scale, rot) for rot in rotations]


def _principal(
    hull: FloatArray,
) -> tuple[FloatArray, FloatArray, FloatArray, float, FloatArray, tuple[float, float]]:
    """Hull facet areas and normals, centre, scale, principal axes and relative moment gaps."""
    cross = np.cross(hull[:, 1] - hull[:, 0], hull[:, 2] - hull[:, 0])
    area = 0.5 * np.linalg.norm(cross, axis=1)
    normal = cross / np.maximum(2.0 * area, 1e-300)[:, None]
    centre, scale, cov = surface_moments(hull, area)
    values, vectors = np.linalg.eigh(cov)
    values, axes = values[::-1], vectors[:, ::-1]
    gaps = ((values[0] - values[1]) / values[0], (values[1] - values[2]) / values[0])
    return area, normal, centre, scale, axes, gaps


def weak_axis(hull: FloatArray) -> int | None:
    """The canonical axis about which principal-axes frames are weakly fixed, if any.

    Two principal moments within ``WEAK_GAP`` (but not degenerate) fix the
    rotation about the third axis poorly: smoothing, which moves the hull,
    can turn the frame about it by a degree or two.
    """
    gaps = _principal(hull)[5]
    if min(gaps) < GAP or min(gaps) >= WEAK_GAP:
        return None
    return 2 if gaps[0] < gaps[1] else 0


def turned(frame: Frame, axis: int, angle: float) -> Frame:
    """``frame`` turned by ``angle`` (radians) about its canonical ``axis``."""
    i, j = (axis + 1) % 3, (axis + 2) % 3
    turn = np.eye(3)
    turn[i, i] = turn[j, j] = np.cos(angle)
    turn[i, j], turn[j, i] = -np.sin(angle), np.sin(angle)
    return Frame(frame.centre, frame.scale, turn @ frame.rotation)


def _about_both(axis: FloatArray, facets: Facets, n_orders: int) -> list[FloatArray]:
    return _frames_about(axis, facets, n_orders) + _frames_about(-axis, facets, n_orders)


def _family(gaps: tuple[float, float], low: float, high: float) -> str:
    """Which candidate family fits principal-moment gaps (low/high: tolerance band)."""
    if min(gaps) >= low:
        return "pca"
    if max(gaps) < high:
        return "normals"
    return "axis3" if gaps[0] < gaps[1] else "axis1"


def _plausible(family: str, gaps: tuple[float, float]) -> bool:
    """Whether a slightly perturbed copy of the shape could have chosen ``family``."""
    return any(
        _family(gaps, low, high) == family
        for low in (GAP / 2, GAP, 2 * GAP)
        for high in (GAP / 2, GAP, 2 * GAP)
    )
