"""Turn parsed vertex and face arrays into a trimesh after the shared checks."""

from __future__ import annotations

from typing import NoReturn

import numpy as np
import numpy.typing as npt
import trimesh

from ._refuse import refuse
from .limits import IngestLimits


def refuse_triangle_limit(limits: IngestLimits, count: int | None = None) -> NoReturn:
    """Refuse a design over the triangle limit (`count` when known, else "more than")."""
    has = f"{count}" if count is not None else f"more than {limits.max_triangles}"
    refuse(
        "too-many-triangles",
        f"the design has {has} triangles (every placed copy counts); the limit is "
        f"{limits.max_triangles}",
    )


def check_triangle_count(count: int, limits: IngestLimits, *, empty_code: str) -> None:
    """Refuse a design without triangles (`empty_code`) or with too many."""
    if count == 0:
        refuse(empty_code, "the design contains no triangles")
    if count > limits.max_triangles:
        refuse_triangle_limit(limits, count)


def check_coordinates(vertices: npt.NDArray[np.floating], limits: IngestLimits) -> None:
    """Refuse NaN or infinite coordinates (trimesh would silently drop those faces)
    and absurdly large ones (they overflow vertex merging and every measurement)."""
    finite = np.isfinite(vertices).all(axis=-1)
    if not finite.all():
        bad = int(np.count_nonzero(~finite))
        refuse(
            "non-finite-coordinates",
            f"{bad} vertices have a NaN or infinite coordinate; every coordinate must be a "
            "finite number",
        )
    if vertices.size and float(np.abs(vertices).max()) > limits.max_abs_coordinate:
        refuse(
            "coordinates-out-of-range",
            f"a coordinate exceeds {limits.max_abs_coordinate:g} design units in magnitude",
        )


def build_mesh(
    vertices: npt.NDArray[np.floating], faces: npt.NDArray[np.integer]
) -> trimesh.Trimesh:
    """A processed trimesh (duplicate vertices merged) from checked arrays."""
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=True)


def soup_faces(triangles: int) -> npt.NDArray[np.int64]:
    """Faces for vertices stored three per triangle, in order (STL layout)."""
    return np.arange(triangles * 3, dtype=np.int64).reshape((-1, 3))
