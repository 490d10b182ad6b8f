"""STL, binary and ASCII: strict structure, limits, finite coordinates.

A binary STL is loaded with trimesh's own binary reader from the open file (no
extra copy of the upload); an ASCII STL is parsed strictly by `stl_ascii`, so
that a malformed file is refused with the line that is wrong instead of being
guessed at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import trimesh
from trimesh.exchange.stl import load_stl_binary

from ._refuse import refuse
from .limits import IngestLimits
from .meshbuild import build_mesh, check_coordinates, check_triangle_count, soup_faces
from .stl_ascii import parse_ascii_stl


def load_binary_stl(path: Path, limits: IngestLimits) -> trimesh.Trimesh:
    """Load a binary STL whose length already matched 84 + 50 x count."""
    with path.open("rb") as f:
        f.seek(80)
        count = int.from_bytes(f.read(4), "little")
        check_triangle_count(count, limits, empty_code="stl-empty")
        f.seek(0)
        loaded = load_stl_binary(f)
    vertices = loaded["vertices"]
    check_coordinates(vertices, limits)
    check_normals_present(loaded["face_normals"])
    return build_mesh(vertices, loaded["faces"])


def check_normals_present(normals: npt.NDArray[np.floating]) -> None:
    """Refuse an STL whose every facet normal is the zero vector.

    The STL format requires a unit outward normal per facet. A file in which
    not one facet carries a normal comes from a broken exporter; it gives
    software that orients by facet normals nothing to go on, so the brand is
    asked to re-export. Zero normals on some facets (degenerate ones) are fine.
    """
    if not np.any(normals):
        refuse(
            "stl-normals-missing",
            "every facet normal in this STL is (0, 0, 0); the exporter wrote no "
            "orientation data. Re-export the part from CAD with normals",
        )


def load_ascii_stl(path: Path, limits: IngestLimits) -> trimesh.Trimesh:
    """Parse an ASCII STL strictly and build the mesh."""
    vertices, normals = parse_ascii_stl(path, limits)
    triangles = len(normals)
    check_triangle_count(triangles, limits, empty_code="stl-empty")
    check_coordinates(vertices, limits)
    check_normals_present(normals)
    return build_mesh(vertices, soup_faces(triangles))
