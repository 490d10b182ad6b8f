"""OBJ: vertices and faces, polygons triangulated, strict refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inventory.errors import Invalid
from inventory.ingest import IngestLimits, inspect_design

CUBE = """# unit cube made of quads
o cube
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
v 0 0 1
v 1 0 1
v 1 1 1
v 0 1 1
vn 0 0 1
vt 0 0
usemtl steel
s off
f 1 4 3 2
f 5/1 6/1 7/1 8/1
f 1//1 2//1 6//1 5//1
f 2 3 7 6
f -5 -1 -2 -6
f 4 1 5 8
"""


def write(tmp_path: Path, text: str, name: str = "part.obj") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(path: Path, code: str, **kwargs: Any) -> Invalid:
    with pytest.raises(Invalid) as info:
        inspect_design(path, filename=path.name, **kwargs)
    assert info.value.code == code, info.value.detail
    return info.value


def test_quads_are_triangulated(tmp_path: Path) -> None:
    report = inspect_design(write(tmp_path, CUBE), filename="part.obj", unit_hint="inch")
    stats = report.stats
    assert report.format == "obj" and report.unit == "inch"
    assert stats.triangles == 12 and stats.vertices == 8
    assert stats.watertight and stats.winding_consistent
    assert stats.volume == pytest.approx(1.0)
    assert stats.volume_mm3 == pytest.approx(25.4**3)


def test_bad_index(tmp_path: Path) -> None:
    error = refused(write(tmp_path, CUBE + "f 1 2 99\n"), "obj-bad-index")
    assert "line" in error.detail
    refused(write(tmp_path, CUBE + "f 0 1 2\n"), "obj-bad-index")
    refused(write(tmp_path, CUBE + "f -9 1 2\n"), "obj-bad-index")


@pytest.mark.parametrize("line", ["f 1 2\n", "v 1 2\n", "v 1 x 3\n", "f a b c\n", "bogus 1\n"])
def test_syntax(tmp_path: Path, line: str) -> None:
    refused(write(tmp_path, CUBE + line), "obj-syntax")


def test_non_finite(tmp_path: Path) -> None:
    refused(write(tmp_path, CUBE.replace("v 1 1 1", "v 1 inf 1")), "non-finite-coordinates")


def test_no_faces(tmp_path: Path) -> None:
    refused(write(tmp_path, "v 0 0 0\nv 1 0 0\nv 0 1 0\n"), "empty-mesh")


def test_triangle_limit(tmp_path: Path) -> None:
    refused(write(tmp_path, CUBE), "too-many-triangles", limits=IngestLimits(max_triangles=11))
