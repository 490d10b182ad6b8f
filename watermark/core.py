"""Embedding and blind detection of the print-serial watermark."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import trimesh
from numpy.typing import NDArray
from scipy.stats import binom

from watermark import ecc
from watermark.frame import Frame, candidate_frames, hull_triangles, robust_areas
from watermark.pattern import CELL, Grid, chips, soft_bits, soft_reads
from watermark.refine import refine

FloatArray = NDArray[np.float64]

SAMPLES = 200_000
SCREEN_SAMPLES = 25_000
PRESCREEN_SAMPLES = 8_000
PRESCREEN_KEEP = 24
PRESCREEN_FROM = 128  # candidates; measured: the torus (100) loses its frame when prescreened
DECODE_CANDIDATES = 3
READS = 2  # per decoded frame: see ``soft_reads``
P_THRESHOLD = 1e-9
RMS_FRACTION = 0.00011  # of the bounding-box diagonal (budget 0.012 %)
MAX_FRACTION = 0.00045  # of the diagonal (budget 0.05 %)
MAX_MM = 0.045  # budget 0.05 mm
BBOX_MM = 0.018  # bounding box must hold to 0.02 mm
MAX_REFINED_VERTICES = 150_000
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


def _refined(mesh: trimesh.Trimesh, frame: Frame) -> trimesh.Trimesh:
    """Refine to the pattern's density, coarser where slivers would pass the hard cap.

    Thin sliver faces refine to far more vertices than their area suggests, so
    the target edge grows until at most ``HARD_MAX_REFINED_VERTICES`` remain.
    """
    edge = CELL * frame.scale / (2.0 * VERTICES_PER_SUBCELL_EDGE)
    edge = max(edge, math.sqrt(mesh.area / (0.87 * MAX_REFINED_VERTICES)))
    original = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    while True:
        vertices, faces = refine(*original, edge)
        if len(vertices) <= max(HARD_MAX_REFINED_VERTICES, len(original[0])):
            return trimesh.Trimesh(vertices, faces, process=False)
        edge *= 1.25


def _bbox_limited(vertices: FloatArray, margin: float) -> NDArray[np.bool_]:
    low, high = vertices.min(0), vertices.max(0)
    return np.asarray(((vertices - low < margin) | (high - vertices < margin)).any(1))


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
    refined = _refined(mesh, frame)
    vertices = np.asarray(refined.vertices)
    grid = Grid.from_key(key)
    bit, sign, chi, _ = chips(grid, grid.coords(frame.to_local(vertices)))
    symbols = 1.0 - 2.0 * ecc.encode(payload, key)
    alpha, limit = _amplitude(float(np.linalg.norm(mesh.extents)), unit_to_mm)
    shift = alpha * sign * chi * symbols[bit]
    weights = _vertex_areas(refined)
    shift -= float(weights @ shift) / float(weights.sum())
    shift = np.clip(shift, -limit, limit)
    bbox_limit = BBOX_MM / unit_to_mm
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
    log_binom = float(binom.logcdf(errors, ecc.CODED_BITS, 0.5)) + ecc.SERIAL_BITS * math.log(2)
    log_check = -ecc.CHECK_BITS * math.log(2)
    return min(1.0, tried * math.exp(min(log_binom, log_check)))


def _bit_errors(soft: FloatArray, serial: int, key: bytes) -> int:
    expected = 1.0 - 2.0 * ecc.encode(serial, key)
    return int((np.sign(soft) != expected).sum())


def _energies(
    grid: Grid, frames: list[Frame], points: FloatArray, normals: FloatArray, count: int
) -> FloatArray:
    """Mark energy of each candidate frame, read on about ``count`` of the samples.

    Screening reads with the plane host only (``soft_bits``): it is faster,
    and the ranking only has to put the right frame among the few decoded.
    """
    step = slice(0, None, max(1, len(points) // count))
    sub_points, sub_normals = points[step], normals[step]
    return np.array(
        [
            float((soft_bits(grid, f.to_local(sub_points), f.rotate(sub_normals)) ** 2).sum())
            for f in frames
        ]
    )


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

    The best ``DECODE_CANDIDATES`` frames are read twice (``soft_reads``);
    every read decoded counts in the p-value.
    """
    surface = Surface.of(mesh)
    points, normals = surface.points, surface.point_normals
    grid = Grid.from_key(key)
    frames = _ranked_frames(grid, surface.frames(strict=False), points, normals)
    frames = frames[:DECODE_CANDIDATES]
    tried = READS * len(frames)
    outcomes = []
    for frame in frames:
        for soft in soft_reads(grid, frame.to_local(points), frame.rotate(normals)):
            result = _decision(soft, key, tried)
            if result.found:
                return result, soft
            outcomes.append((result, soft))
    return min(outcomes, key=lambda pair: pair[0].bit_errors)


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
