"""The keyed spread-spectrum pattern and its blind estimator.

In the canonical frame a keyed rotation and offset place a grid of cubic cells
(edge ``CELL`` times the RMS radius).  A keyed hash maps every cell to one coded
bit and a sign; inside the cell the displacement follows a 2x2x2 checkerboard
``chi`` so that it has zero mean over the cell.  The mark displaces the surface
along its normal by ``alpha * sign * chi * symbol``.

The detector needs no original: it groups surface samples by cell and by
normal direction (so one group is one piece of surface), fits the group's
height over its tangent plane with the model ``[1, a, b, chi]`` (plane host)
and ``[1, a, b, aa, chi]`` (bent host, ``a`` along the direction of strongest
curvature) and reads the ``chi`` coefficient.  Flat host surface contributes
nothing, curvature is absorbed by the bend, and the clipped t-statistics of
one bit's cells are summed with their keyed signs.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from watermark.ecc import CODED_BITS

CELL = 0.1
MIN_DOF = 4  # residual degrees of freedom a group must keep (8 samples for the plane model)
MAX_INFLATION = 20.0
T_CLIP = 4.0  # a single cell cannot outvote many
PLANE_COLUMNS = 4  # design [1, a, b, chi]; the bent host adds aa before chi
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
_PRIMES = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xC2B2AE3D27D4EB4F),
    np.uint64(0x165667B19E3779F9),
)
_DIRECTIONS = np.array(
    [
        (x, y, z)
        for x in (-1, 0, 1)
        for y in (-1, 0, 1)
        for z in (-1, 0, 1)
        if (x, y, z) != (0, 0, 0)
    ],
    dtype=np.float64,
)
_DIRECTIONS /= np.linalg.norm(_DIRECTIONS, axis=1, keepdims=True)


@dataclass(frozen=True)
class Grid:
    """Key-derived placement of the cell grid and the cell hash seed."""

    rotation: FloatArray
    offset: FloatArray
    seed: np.uint64

    @classmethod
    def from_key(cls, key: bytes) -> Grid:
        digest = hmac.new(key, b"partvault-watermark-grid", hashlib.sha256).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:16], "big"))
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        if np.linalg.det(q) < 0:
            q[:, 0] = -q[:, 0]
        return cls(q, rng.random(3), np.uint64(int.from_bytes(digest[16:24], "big")))

    def coords(self, local: FloatArray) -> FloatArray:
        """Canonical coordinates -> grid coordinates (unit = one cell)."""
        return np.asarray(local @ self.rotation.T / CELL + self.offset)


def _mix(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64 finaliser."""
    x = (x ^ (x >> np.uint64(30))) * _MIX[0]
    x = (x ^ (x >> np.uint64(27))) * _MIX[1]
    return x ^ (x >> np.uint64(31))


def chips(grid: Grid, u: FloatArray) -> tuple[IntArray, FloatArray, FloatArray, NDArray[np.uint64]]:
    """Per grid point: coded-bit index, cell sign (+-1), checkerboard chi, cell hash."""
    cell = np.floor(u).astype(np.int64)
    with np.errstate(over="ignore"):
        spread = cell.astype(np.uint64) * np.array(_PRIMES)
        h = _mix(grid.seed ^ spread[:, 0] ^ spread[:, 1] ^ spread[:, 2])
    half = np.floor(2.0 * u).astype(np.int64)
    parity = (half[:, 0] + half[:, 1] + half[:, 2]) & 1
    bit = (h % np.uint64(CODED_BITS)).astype(np.int64)
    sign = ((h >> np.uint64(40)) & np.uint64(1)).astype(np.float64) * 2.0 - 1.0
    return bit, sign, (1.0 - 2.0 * parity).astype(np.float64, copy=False), h


def _groups(h: NDArray[np.uint64], normals: FloatArray) -> IntArray:
    bucket = np.argmax(normals @ _DIRECTIONS.T, axis=1).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = h ^ (bucket * _PRIMES[0])
    _, inverse = np.unique(key, return_inverse=True)
    return np.asarray(inverse.reshape(-1), dtype=np.int64)


def _tangents(normal: FloatArray) -> tuple[FloatArray, FloatArray]:
    helper = np.eye(3)[np.argmin(np.abs(normal), axis=1)]
    t1 = np.cross(normal, helper)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    return t1, np.cross(normal, t1)


def _fit(group: IntArray, design: FloatArray, y: FloatArray) -> list[tuple[FloatArray, FloatArray]]:
    """Per-group least squares of ``y`` on ``[1, a, b, aa, chi]`` or ``[1, a, b, chi]``.

    Returns two estimates of the chi coefficient with their variances (nan if
    unfit), both from one set of sums: per group the better (smaller variance)
    of the plane host ``[1, a, b]`` and the bent host ``[1, a, b, aa]``, and
    the plane host alone.  The bend removes the curvature of small, strongly
    curved parts; on flat pieces it only costs precision, and after smoothing
    it can absorb part of the mark, hence the second estimate.  The choice
    never depends on the sign of chi, so an unmarked surface still gives fair
    coin bits.  A plane-only design gives the plane estimate alone.
    """
    sums = _sums(group, design, y)
    k = design.shape[1]
    beta, var = _solve(sums, [0, 1, 2, k - 1])
    if k == PLANE_COLUMNS:
        return [(beta, var)]
    bent_beta, bent_var = _solve(sums, list(range(k)))
    better = np.isfinite(bent_var) & ~(var <= bent_var)
    return [(np.where(better, bent_beta, beta), np.where(better, bent_var, var)), (beta, var)]


Sums = tuple[FloatArray, FloatArray, FloatArray, IntArray]


def _sums(group: IntArray, design: FloatArray, y: FloatArray) -> Sums:
    """Per-group X'X, X'y, y'y and sample count."""
    n_groups, k = int(group.max()) + 1, design.shape[1]
    xtx = np.empty((n_groups, k, k))
    for i in range(k):
        for j in range(i, k):
            xtx[:, i, j] = xtx[:, j, i] = np.bincount(group, design[:, i] * design[:, j], n_groups)
    xty = np.stack([np.bincount(group, design[:, i] * y, n_groups) for i in range(k)], 1)
    yty = np.bincount(group, y * y, n_groups)
    count = np.bincount(group, minlength=n_groups).astype(np.int64)
    return xtx, xty.astype(np.float64), yty.astype(np.float64), count


def _solve(sums: Sums, columns: list[int]) -> tuple[FloatArray, FloatArray]:
    """Least squares on a subset of the design's columns (chi last)."""
    index = np.array(columns)
    xtx, xty = sums[0][:, index[:, None], index], sums[1][:, index]
    yty, count, k = sums[2], sums[3], len(columns)
    ridge = 1e-9 * np.trace(xtx, axis1=1, axis2=2)[:, None, None] * np.eye(k)
    inv = np.linalg.inv(xtx + ridge + 1e-300 * np.eye(k))
    # variance inflation of the chi coefficient: chi must not be explained by the host
    ok = (count >= k + MIN_DOF) & (inv[:, -1, -1] * xtx[:, -1, -1] < MAX_INFLATION)
    beta = np.full(len(count), np.nan)
    var = np.full(len(count), np.nan)
    inv = inv[ok]
    sol = np.einsum("gij,gj->gi", inv, xty[ok])
    rss = np.maximum(yty[ok] - np.einsum("gi,gi->g", sol, xty[ok]), 0.0)
    beta[ok] = sol[:, -1]
    var[ok] = rss / (count[ok] - k) * inv[:, -1, -1]
    return beta, var


def _dot(a: FloatArray, b: FloatArray) -> FloatArray:
    """Row-wise dot product of two (n, 3) arrays."""
    return np.asarray(a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2])


def _bend(
    group: IntArray, normals: FloatArray, t1: FloatArray, t2: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Per group: cos and sin of the tangent direction in which the normals turn most.

    That is the direction of strongest curvature, along which the height of a
    tube or a rounded edge grows as ``a^2``.
    """
    n_groups = len(t1)
    count = np.maximum(np.bincount(group, minlength=n_groups), 1)
    p, q = _dot(normals, t1[group]), _dot(normals, t2[group])
    p -= (np.bincount(group, p, n_groups) / count)[group]
    q -= (np.bincount(group, q, n_groups) / count)[group]
    pp, qq, pq = (np.bincount(group, x * y, n_groups) for x, y in ((p, p), (q, q), (p, q)))
    angle = 0.5 * np.arctan2(2.0 * pq, pp - qq)
    return np.cos(angle), np.sin(angle)


def soft_bits(grid: Grid, local: FloatArray, normals: FloatArray) -> FloatArray:
    """The plane-host read alone: faster, for screening candidate frames."""
    return soft_reads(grid, local, normals, bent=False)[0]


def soft_reads(
    grid: Grid, local: FloatArray, normals: FloatArray, bent: bool = True
) -> list[FloatArray]:
    """Two blind estimates of the coded symbols (z-scores, > 0 favours bit 0).

    The first keeps per group the better of the plane and the bent host, the
    second uses the plane only (see ``_fit``); ``bent=False`` gives the second only.
    """
    u = grid.coords(local)
    n = normals @ grid.rotation.T
    bit, sign, chi, h = chips(grid, u)
    group = _groups(h, n)
    n_groups = int(group.max()) + 1
    gn = np.stack([np.bincount(group, n[:, i], n_groups) for i in range(3)], 1).astype(np.float64)
    gn /= np.maximum(np.linalg.norm(gn, axis=1, keepdims=True), 1e-12)
    w = u - np.floor(u) - 0.5
    t1, t2 = _tangents(gn)
    if bent:
        cos, sin = _bend(group, n, t1, t2)
        t1, t2 = cos[:, None] * t1 + sin[:, None] * t2, cos[:, None] * t2 - sin[:, None] * t1
    a, b = _dot(w, t1[group]), _dot(w, t2[group])
    host = [np.ones(len(w)), a, b, a * a] if bent else [np.ones(len(w)), a, b]
    design = np.stack([*host, chi], axis=1)
    first = np.zeros(n_groups, dtype=np.int64)
    first[group] = np.arange(len(group))
    g_bit, g_sign = bit[first], sign[first]
    return [
        _combine(beta, var, g_bit, g_sign) for beta, var in _fit(group, design, _dot(w, gn[group]))
    ]


def _combine(beta: FloatArray, var: FloatArray, bit: IntArray, sign: FloatArray) -> FloatArray:
    """Per coded bit: sum of the groups' clipped t-statistics with their keyed sign."""
    good = np.isfinite(beta)
    t_stat = np.clip(beta[good] / np.sqrt(np.maximum(var[good], 1e-30)), -T_CLIP, T_CLIP)
    num = np.bincount(bit[good], sign[good] * t_stat, CODED_BITS)
    den = np.bincount(bit[good], minlength=CODED_BITS)
    return np.asarray(num / np.sqrt(np.maximum(den, 1)))
