"""Geometry measurements of a loaded design, and the closed-solid policy."""

from __future__ import annotations

import msgspec
import numpy as np
import numpy.typing as npt
import trimesh

from ._refuse import refuse
from .limits import IngestLimits

Vec3 = tuple[float, float, float]
SMALL_PART_MM = 5.0
"""Parts smaller than this in every direction get a unit warning."""
LARGE_PART_MM = 2000.0


class GeometryStats(msgspec.Struct, frozen=True, kw_only=True):
    """What partvault knows about a design's geometry.

    Lengths are given in the design's own `unit` and again in millimetres
    (`*_mm`, `*_mm2`, `*_mm3`). `volume` is only meaningful when `watertight`.
    """

    triangles: int
    vertices: int
    bodies: int
    """Connected pieces (vertices joined by edges)."""
    watertight: bool
    """Every edge is shared by exactly two triangles."""
    winding_consistent: bool
    edges: int
    """Unique edges."""
    open_edges: int
    """Edges used by an odd number of triangles (borders of holes and gaps)."""
    unit: str
    unit_to_mm: float
    volume: float
    area: float
    bbox_min: Vec3
    bbox_max: Vec3
    size: Vec3
    volume_mm3: float
    area_mm2: float
    bbox_min_mm: Vec3
    bbox_max_mm: Vec3
    size_mm: Vec3


def _vec(values: npt.NDArray[np.float64]) -> Vec3:
    x, y, z = (float(v) for v in values)
    return (x, y, z)


def count_open_edges(mesh: trimesh.Trimesh) -> int:
    """Unique edges used by an odd number of faces (0 for a closed surface)."""
    uses = np.bincount(mesh.edges_unique_inverse)
    return int(np.count_nonzero(uses % 2))


def measure(mesh: trimesh.Trimesh, unit: str, unit_to_mm: float) -> GeometryStats:
    """Measure a processed mesh; lengths in `unit`, plus millimetre copies."""
    bounds = np.asarray(mesh.bounds, dtype=np.float64)
    size = bounds[1] - bounds[0]
    with np.errstate(invalid="ignore", divide="ignore"):  # zero volume: centre of mass is NaN
        volume, area = float(mesh.volume), float(mesh.area)
    return GeometryStats(
        triangles=len(mesh.faces),
        vertices=len(mesh.vertices),
        bodies=int(mesh.body_count),
        watertight=bool(mesh.is_watertight),
        winding_consistent=bool(mesh.is_winding_consistent),
        edges=len(mesh.edges_unique),
        open_edges=count_open_edges(mesh),
        unit=unit,
        unit_to_mm=unit_to_mm,
        volume=volume,
        area=area,
        bbox_min=_vec(bounds[0]),
        bbox_max=_vec(bounds[1]),
        size=_vec(size),
        volume_mm3=volume * unit_to_mm**3,
        area_mm2=area * unit_to_mm**2,
        bbox_min_mm=_vec(bounds[0] * unit_to_mm),
        bbox_max_mm=_vec(bounds[1] * unit_to_mm),
        size_mm=_vec(size * unit_to_mm),
    )


def apply_solid_policy(
    stats: GeometryStats, *, allow_open: bool, limits: IngestLimits
) -> list[str]:
    """Refuse what is not a printable solid; return warnings for what is tolerated.

    A design is refused (`not-watertight`) when more than
    `limits.max_open_edge_ratio` of its edges border a single triangle: that is
    triangle soup or a bare surface, with no inside and no meaningful volume.
    A few open edges (cracks a slicer closes) are accepted with a warning, as
    are bodies that touch along an edge (even use counts). `allow_open=True`
    stores an open design anyway, recorded as not watertight.
    """
    if min(stats.size) <= 0:
        refuse("flat-geometry", "the design has no thickness along at least one axis")
    warnings = []
    ratio = stats.open_edges / max(stats.edges, 1)
    if ratio > limits.max_open_edge_ratio and not allow_open:
        refuse(
            "not-watertight",
            f"{stats.open_edges} of {stats.edges} edges ({ratio:.0%}) border a single triangle: "
            "the design is not a closed solid. Repair it, or upload it with allow_open "
            "to store it as an open mesh",
        )
    if stats.open_edges:
        warnings.append(
            f"{stats.open_edges} open edge(s) ({ratio:.1%} of edges): the surface is not "
            "closed; volume is approximate"
        )
    if stats.watertight and stats.volume < 0:
        warnings.append("the surface is inside out (normals point inwards)")
    warnings.extend(_unit_warnings(stats))
    return warnings


def _unit_warnings(stats: GeometryStats) -> list[str]:
    largest = max(stats.size_mm)
    if largest < SMALL_PART_MM:
        return [
            f"the part is only {largest:.3g} mm across: if the file is in inches, give the "
            "unit (unit_hint='inch')"
        ]
    if largest > LARGE_PART_MM:
        return [f"the part is {largest:.4g} mm across: check the unit"]
    return []
