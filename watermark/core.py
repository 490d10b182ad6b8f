"""Embedding and blind detection of the print-serial watermark."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import trimesh
from numpy.typing import NDArray

from watermark import ecc
from watermark.frame import (
    Frame,
    candidate_frames,
    hull_triangles,
    robust_areas,
    turned,
    weak_axis,
)
from watermark.pattern import CELL, Grid, chips, soft_bits, soft_reads
from watermark.refine import refine

FloatArray = NDArray[np.float64]

SAMPLES = 200_000
SCREEN_SAMPLES = 25_000
PRESCREEN_SAMPLES = 8_000
PRESCREEN_KEEP = 24
PRESCREEN_FROM = 128  # candidates; measured: the torus (100) loses its frame when prescreened
DECODE_CANDIDATES = 3
SECOND_CHANCE = 2  # frames decoded only when the first ones fail: see ``_second_chance``
READS = 2  # per decoded frame: see ``soft_reads``
SYMMETRIC_FROM = 16  # candidates: from here on the frame comes from a symmetry's harmonics
TURNS = np.radians([-2.0, -1.0, 1.0, 2.0])  # about a weakly fixed axis: see ``_second_chance``
TURNED_CANDIDATES = 4  # all four sign choices of a principal-axes frame
TURN_SAMPLES = 50_000  # a degree off, the mark is too weak to rank on fewer samples
P_THRESHOLD = 1e-9
RMS_FRACTION = 0.00011  # of the bounding-box diagonal (budget 0.012 %)
MAX_FRACTION = 0.00045  # of the diagonal (budget 0.05 %)
MAX_MM = 0.045  # budget 0.05 mm
BBOX_MM = 0.018  # bounding box must hold to 0.02 mm
MAX_REFINED_VERTICES = 150_000
BOOSTED_VERTICES = 100_000  # at most this many vertices make up for a clipped mark
MIN_BOOST = 1.2
MAX_BOOST = 3.0
HARD_MAX_REFINED_VERTICES = 300_000
VERTICES_PER_SUBCELL_EDGE = 1.5


@dataclass(frozen=True)
class Detection:
    """Outcome of ``detect``: a serial only when ``found``."""

    found: bool
    serial: int | None
    p_value: float
    bit_errors: int
    ber: float


@dataclass(frozen=True)
class Surface:
    """What detection reads from a mesh: convex hull and area-uniform surface samples.

    The hull gives the pose; samples carry a ring-smoothed normal (for reading
    the mark, robust to vertex noise).
    """

    hull: FloatArray
    points: FloatArray
    point_normals: FloatArray

    @classmethod
    def of(cls, mesh: trimesh.Trimesh, count: int = SAMPLES) -> Surface:
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        faces = np.asarray(mesh.faces, dtype=np.int64)
        area, normal = robust_areas(vertices, faces)
        face, bary = _stratified(area, count)
        points = np.einsum("nk,nkj->nj", bary, vertices[faces[face]])
        return cls(hull_triangles(vertices), points, normal[face])

    def frames(self, strict: bool) -> list[Frame]:
        return candidate_frames(self.hull, strict)


def _stratified(area: FloatArray, count: int) -> tuple[NDArray[np.int64], FloatArray]:
    """Deterministic area-stratified choice of faces and barycentric coordinates."""
    cumulative = np.cumsum(area)
    rng = np.random.default_rng(20070101)
    targets = (np.arange(count) + rng.random(count)) * cumulative[-1] / count
    face = np.minimum(np.searchsorted(cumulative, targets), len(area) - 1)
    r1, r2 = rng.random((2, count))
    flip = r1 + r2 > 1.0
    r1, r2 = np.where(flip, 1.0 - r1, r1), np.where(flip, 1.0 - r2, r2)
    return face, np.stack([1.0 - r1 - r2, r1, r2], axis=1)


def _amplitude(diagonal: float, unit_to_mm: float) -> tuple[float, float]:
    """(alpha, max displacement) in mesh units."""
    limit = min(MAX_FRACTION * diagonal, MAX_MM / unit_to_mm)
    return min(RMS_FRACTION * diagonal, limit), limit


def _refined(mesh: trimesh.Trimesh, frame: Frame, power: Callable[[], float]) -> trimesh.Trimesh:
    """Refine to the pattern's density, coarser where slivers would pass the hard cap.

    Thin sliver faces refine to far more vertices than their area suggests, so
    the target edge grows until at most ``HARD_MAX_REFINED_VERTICES`` remain.
    A mark weakened by the bounding-box clip gets more vertices: see ``_boosted``.
    """
    edge = CELL * frame.scale / (2.0 * VERTICES_PER_SUBCELL_EDGE)
    edge = max(edge, _edge_for(mesh, MAX_REFINED_VERTICES))
    original = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    while True:
        vertices, faces = refine(*original, edge)
        if len(vertices) <= max(HARD_MAX_REFINED_VERTICES, len(original[0])):
            return trimesh.Trimesh(*_boosted(vertices, faces, edge, power), process=False)
        edge *= 1.25


def _boosted(
    vertices: FloatArray, faces: NDArray[np.int64], edge: float, power: Callable[[], float]
) -> tuple[FloatArray, NDArray[np.int64]]:
    """Refine further by ``1 / power()`` (the mark's relative mean square amplitude).

    Detection averages over vertices, so a mark of a fraction ``power`` of
    the full energy needs ``1 / power`` times the vertices, up to
    ``MAX_BOOST`` times and ``BOOSTED_VERTICES`` in all (large meshes never
    evaluate ``power``).
    """
    cap = BOOSTED_VERTICES / len(vertices)
    boost = min(1.0 / power(), MAX_BOOST, cap) if cap >= MIN_BOOST else 1.0
    if boost < MIN_BOOST:
        return vertices, faces
    return refine(vertices, faces, edge / math.sqrt(boost))


def _edge_for(mesh: trimesh.Trimesh, vertices: int) -> float:
    """Target edge length that refines ``mesh`` to about ``vertices`` vertices."""
    return math.sqrt(mesh.area / (0.87 * vertices))


def _bbox_limited(vertices: FloatArray, margin: float) -> NDArray[np.bool_]:
    low, high = vertices.min(0), vertices.max(0)
    return np.asarray(((vertices - low < margin) | (high - vertices < margin)).any(1))


def _clipped_power(mesh: trimesh.Trimesh, alpha: float, limit: float, bbox_limit: float) -> float:
    """Mean square mark amplitude over the surface relative to ``alpha**2``.

    Faces on the bounding box only move by ``bbox_limit``: a thin plate lying
    in its box carries a much weaker mark, which more vertices make up for.
    """
    faces = np.asarray(mesh.faces)
    limited = _bbox_limited(np.asarray(mesh.vertices, dtype=np.float64), limit)[faces].all(1)
    area = np.asarray(mesh.area_faces)
    fraction = float(area[limited].sum() / max(float(area.sum()), 1e-300))
    return 1.0 - fraction * (1.0 - min(1.0, bbox_limit / alpha) ** 2)


@dataclass(frozen=True)
class Embedding:
    """A marked mesh and the refined, unmarked mesh it was made from.

    Both share vertex order and faces, so the distortion can be measured
    vertex by vertex without refining again.
    """

    refined: trimesh.Trimesh
    marked: trimesh.Trimesh


def embed(
    mesh: trimesh.Trimesh, payload: int, key: bytes, *, unit_to_mm: float = 1.0
) -> trimesh.Trimesh:
    """Return a refined copy of ``mesh`` carrying ``payload`` (a 64-bit serial) under ``key``."""
    return embedding(mesh, payload, key, unit_to_mm=unit_to_mm).marked


def embedding(
    mesh: trimesh.Trimesh, payload: int, key: bytes, *, unit_to_mm: float = 1.0
) -> Embedding:
    """`embed`, also returning the refined original the mark was added to."""
    frame = Surface.of(mesh).frames(strict=True)[0]
    alpha, limit = _amplitude(float(np.linalg.norm(mesh.extents)), unit_to_mm)
    bbox_limit = BBOX_MM / unit_to_mm
    refined = _refined(mesh, frame, partial(_clipped_power, mesh, alpha, limit, bbox_limit))
    vertices = np.asarray(refined.vertices)
    grid = Grid.from_key(key)
    bit, sign, chi, _ = chips(grid, grid.coords(frame.to_local(vertices)))
    symbols = 1.0 - 2.0 * ecc.encode(payload, key)
    shift = alpha * sign * chi * symbols[bit]
    weights = _vertex_areas(refined)
    shift -= float(weights @ shift) / float(weights.sum())
    shift = np.clip(shift, -limit, limit)
    edge = _bbox_limited(vertices, limit)
    shift[edge] = np.clip(shift[edge], -bbox_limit, bbox_limit)
    moved = vertices + shift[:, None] * np.asarray(refined.vertex_normals)
    marked = trimesh.Trimesh(moved, np.asarray(refined.faces), process=False)
    return Embedding(refined, marked)


def _vertex_areas(mesh: trimesh.Trimesh) -> FloatArray:
    faces = np.asarray(mesh.faces)
    share = np.repeat(np.asarray(mesh.area_faces) / 3.0, 3)
    return np.bincount(faces.reshape(-1), share, len(mesh.vertices)).astype(np.float64)


def _p_value(errors: int, tried: int) -> float:
    """Union bound on an unmarked mesh decoding to a valid check this close."""
    log_binom = _log_binomial_cdf(errors, ecc.CODED_BITS) + ecc.SERIAL_BITS * math.log(2)
    log_check = -ecc.CHECK_BITS * math.log(2)
    return min(1.0, tried * math.exp(min(log_binom, log_check)))


def _log_binomial_cdf(k: int, n: int) -> float:
    """log P(X <= k) for X ~ Binomial(n, 1/2), exact in integers (no scipy.stats at import)."""
    ways = sum(math.comb(n, i) for i in range(k + 1))
    return math.log(ways / 2**n) if ways else -math.inf


def _bit_errors(soft: FloatArray, serial: int, key: bytes) -> int:
    expected = 1.0 - 2.0 * ecc.encode(serial, key)
    return int((np.sign(soft) != expected).sum())


def _energies(
    grid: Grid,
    frames: list[Frame],
    points: FloatArray,
    normals: FloatArray,
    count: int,
    bent: bool = False,
) -> FloatArray:
    """Mark energy of each candidate frame, read on about ``count`` of the samples.

    Screening reads with the plane host only (``soft_bits``) unless ``bent``:
    it is faster, and the ranking only has to put the right frame among the
    few decoded.
    """
    step = slice(0, None, max(1, len(points) // count))
    sub_points, sub_normals = points[step], normals[step]
    read = soft_reads if bent else _plane_read
    return np.array(
        [
            float((read(grid, f.to_local(sub_points), f.rotate(sub_normals))[0] ** 2).sum())
            for f in frames
        ]
    )


def _plane_read(grid: Grid, local: FloatArray, normals: FloatArray) -> list[FloatArray]:
    return [soft_bits(grid, local, normals)]


def _ranked_frames(
    grid: Grid, frames: list[Frame], points: FloatArray, normals: FloatArray
) -> list[Frame]:
    """Candidate frames by mark energy, strongest first.

    Parts without any orientation cue have up to 160 candidates: from
    ``PRESCREEN_FROM`` on, all are screened on a coarse subsample first and only
    the strongest ``PRESCREEN_KEEP`` on the finer one.
    """
    if len(frames) >= PRESCREEN_FROM:
        coarse = _energies(grid, frames, points, normals, PRESCREEN_SAMPLES)
        frames = [frames[int(i)] for i in np.argsort(coarse)[::-1][:PRESCREEN_KEEP]]
    fine = _energies(grid, frames, points, normals, SCREEN_SAMPLES)
    return [frames[int(i)] for i in np.argsort(fine)[::-1]]


def detect(mesh: trimesh.Trimesh, key: bytes) -> Detection:
    """Blind detection: the serial with its p-value, or ``found=False``."""
    return analyse(mesh, key)[0]


def analyse(mesh: trimesh.Trimesh, key: bytes) -> tuple[Detection, FloatArray]:
    """``detect``, plus the soft coded bits it decided on (for evaluation).

    The best ``DECODE_CANDIDATES`` frames, then up to ``SECOND_CHANCE`` more,
    are read twice (``soft_reads``); every read that may be decoded counts in
    the p-value.
    """
    surface = Surface.of(mesh)
    points, normals = surface.points, surface.point_normals
    grid = Grid.from_key(key)
    candidates = surface.frames(strict=False)
    ranked = _ranked_frames(grid, candidates, points, normals)
    tried = READS * (DECODE_CANDIDATES + SECOND_CHANCE)
    outcomes = []
    symmetric = len(candidates) >= SYMMETRIC_FROM
    for frame in _decode_order(grid, surface, symmetric, ranked):
        for soft in soft_reads(grid, frame.to_local(points), frame.rotate(normals)):
            result = _decision(soft, key, tried)
            if result.found:
                return result, soft
            outcomes.append((result, soft))
    return min(outcomes, key=lambda pair: pair[0].bit_errors)


def _decode_order(
    grid: Grid, surface: Surface, symmetric: bool, ranked: list[Frame]
) -> Iterator[Frame]:
    """The frames to decode, best first; the second chance is only computed if reached."""
    yield from ranked[:DECODE_CANDIDATES]
    yield from _second_chance(grid, surface, symmetric, ranked)


def _second_chance(
    grid: Grid, surface: Surface, symmetric: bool, ranked: list[Frame]
) -> Iterator[Frame]:
    """Frames the plane-host screening missed (at most ``SECOND_CHANCE``).

    Smoothing bends the surface inside a cell: among a symmetry's many
    candidates the plane host then favours a wrong one, while the bent host
    still ranks the right one first.  Smoothing also moves the hull: where two
    principal moments are close, the frame turns by a degree or two about the
    third axis, so the first candidates are tried turned about it.  Both are
    slower than the first screening, so they are only done once it has failed.
    """
    points, normals = surface.points, surface.point_normals
    if symmetric:
        bent = _energies(grid, ranked, points, normals, SCREEN_SAMPLES, bent=True)
        best = ranked[int(np.argmax(bent))]
        if all(best is not frame for frame in ranked[:DECODE_CANDIDATES]):
            yield best
    axis = weak_axis(surface.hull)
    if axis is not None:
        trials = [turned(f, axis, a) for f in ranked[:TURNED_CANDIDATES] for a in TURNS]
        yield trials[int(np.argmax(_energies(grid, trials, points, normals, TURN_SAMPLES)))]


def _decision(soft: FloatArray, key: bytes, tried: int) -> Detection:
    """Decode one read: a serial only with a valid check and ``p_value <= P_THRESHOLD``."""
    serial, valid = ecc.decode(soft, key)
    errors = _bit_errors(soft, serial, key)
    p_value = _p_value(errors, tried) if valid else 1.0
    found = valid and p_value <= P_THRESHOLD
    return Detection(found, serial if found else None, p_value, errors, errors / ecc.CODED_BITS)


def raw_ber(soft: FloatArray, key: bytes, serial: int) -> float:
    """Bit error rate before error correction against the known codeword."""
    return _bit_errors(soft, serial, key) / ecc.CODED_BITS
