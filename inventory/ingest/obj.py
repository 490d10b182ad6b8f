"""Wavefront OBJ: vertices and faces only, polygons fan-triangulated.

Parsed here, line by line, rather than by trimesh's loader: that loader follows
`mtllib` references to files beside the upload and silently skips lines it
does not understand, where partvault wants a precise refusal. Texture
coordinates, normals, groups and materials are ignored; the geometry is what
is stored and measured.
"""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import NoReturn

import numpy as np
import trimesh

from ._refuse import refuse
from .limits import IngestLimits
from .meshbuild import build_mesh, check_coordinates, check_triangle_count, refuse_triangle_limit

_IGNORED_WORDS = (
    "vt vn vp l p o g s usemtl mtllib cstype deg bmat step curv curv2 surf parm trim hole "
    "scrv sp end con mg bevel c_interp d_interp lod shadow_obj trace_obj ctech stech"
)
_IGNORED = frozenset(_IGNORED_WORDS.split())


def _syntax(line: int, detail: str) -> NoReturn:
    refuse("obj-syntax", f"OBJ line {line}: {detail}")


class _ObjReader:
    def __init__(self, limits: IngestLimits) -> None:
        self.limits = limits
        self.vertices: array[float] = array("d")
        self.faces: array[int] = array("q")

    def vertex(self, line: int, words: list[str]) -> None:
        if len(words) < 3:
            _syntax(line, "a vertex needs x, y and z")
        try:
            self.vertices.extend((float(words[0]), float(words[1]), float(words[2])))
        except ValueError:
            _syntax(line, "vertex coordinates must be numbers")

    def face(self, line: int, words: list[str]) -> None:
        if len(words) < 3:
            _syntax(line, "a face needs at least three vertices")
        count = len(self.vertices) // 3
        corners = [self._index(line, w, count) for w in words]
        for i in range(1, len(corners) - 1):
            self.faces.extend((corners[0], corners[i], corners[i + 1]))
        if len(self.faces) > 3 * self.limits.max_triangles:
            refuse_triangle_limit(self.limits)

    @staticmethod
    def _index(line: int, word: str, count: int) -> int:
        """Zero-based vertex index of one face corner (`v`, `v/vt`, `v//vn`, `v/vt/vn`)."""
        try:
            index = int(word.split("/", 1)[0])
        except ValueError:
            _syntax(line, f"face corner {word[:20]!r} is not a vertex index")
        resolved = index - 1 if index > 0 else count + index
        if index == 0 or not 0 <= resolved < count:
            refuse(
                "obj-bad-index",
                f"OBJ line {line}: face refers to vertex {index}, but only {count} "
                "vertices are defined before it",
            )
        return resolved


def load_obj(path: Path, limits: IngestLimits) -> trimesh.Trimesh:
    """Parse an OBJ file strictly and build the mesh."""
    reader = _ObjReader(limits)
    with path.open("rb") as f:
        number = 0
        while raw := f.readline(limits.max_line_bytes + 1):
            number += 1
            if len(raw) > limits.max_line_bytes:
                _syntax(number, f"line is longer than {limits.max_line_bytes} bytes")
            _dispatch(reader, number, raw)
    faces = np.frombuffer(reader.faces, dtype=np.int64).reshape((-1, 3))
    check_triangle_count(len(faces), limits, empty_code="empty-mesh")
    vertices = np.frombuffer(reader.vertices, dtype=np.float64).reshape((-1, 3))
    check_coordinates(vertices, limits)
    return build_mesh(vertices, faces)


def _dispatch(reader: _ObjReader, number: int, raw: bytes) -> None:
    text = raw.split(b"#", 1)[0].decode("utf-8", "replace")
    words = text.split()
    if not words:
        return
    keyword = words[0]
    if keyword == "v":
        reader.vertex(number, words[1:])
    elif keyword == "f":
        reader.face(number, words[1:])
    elif keyword not in _IGNORED:
        _syntax(number, f"unknown statement {keyword[:20]!r}")
