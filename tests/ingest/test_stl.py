"""STL and format detection: crafted broken files are refused with precise codes."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import trimesh

from inventory.errors import Invalid, PayloadTooLarge, UnsupportedMediaType
from inventory.ingest import IngestLimits, inspect_design


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def refused(path: Path, code: str, **kwargs: Any) -> Invalid:
    kwargs.setdefault("filename", path.name)
    with pytest.raises(Invalid) as info:
        inspect_design(path, **kwargs)
    assert info.value.code == code, info.value.detail
    return info.value


def test_valid_binary_stl(tmp_path: Path, craft: SimpleNamespace) -> None:
    report = inspect_design(
        write(tmp_path, "t.stl", craft.binary_stl(craft.tetra)), filename="t.stl"
    )
    assert report.stats.triangles == 4 and report.stats.vertices == 4
    assert report.stats.watertight
    assert report.stats.volume == pytest.approx(1000 / 6, rel=1e-6)


@pytest.mark.parametrize("delta", [-1, +1])
def test_binary_length_mismatch(tmp_path: Path, craft: SimpleNamespace, delta: int) -> None:
    data = craft.binary_stl(craft.tetra)
    data = data[:-1] if delta < 0 else data + b"\x00"
    error = refused(write(tmp_path, "t.stl", data), "stl-length-mismatch")
    assert str(len(data)) in error.detail and str(84 + 50 * 4) in error.detail


def test_binary_with_solid_header_length_mismatch(tmp_path: Path, craft: SimpleNamespace) -> None:
    data = craft.binary_stl(craft.tetra, header=b"solid exported by CAD")[:-1]
    refused(write(tmp_path, "t.stl", data), "stl-length-mismatch")
    refused(write(tmp_path, "noext", data), "stl-length-mismatch", filename=None)


def test_header_shorter_than_84_bytes(tmp_path: Path) -> None:
    refused(write(tmp_path, "t.stl", b"\x00" * 50), "stl-length-mismatch")


def test_zero_triangles(tmp_path: Path) -> None:
    refused(write(tmp_path, "t.stl", b"\x00" * 80 + struct.pack("<I", 0)), "stl-empty")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_binary(tmp_path: Path, craft: SimpleNamespace, value: float) -> None:
    tri = craft.tetra.copy()
    tri[2, 1, 0] = value
    refused(write(tmp_path, "t.stl", craft.binary_stl(tri)), "non-finite-coordinates")


def test_non_finite_ascii(tmp_path: Path, craft: SimpleNamespace) -> None:
    tri = craft.tetra.copy()
    tri[0, 0, 2] = np.nan
    refused(write(tmp_path, "t.stl", craft.ascii_stl(tri)), "non-finite-coordinates")


def test_absurd_coordinates(tmp_path: Path, craft: SimpleNamespace) -> None:
    tri = craft.tetra.copy()
    tri[1, 1, 1] = 3e38  # finite in float32, but no real part
    refused(write(tmp_path, "t.stl", craft.binary_stl(tri)), "coordinates-out-of-range")


def test_triangle_limit(tmp_path: Path, craft: SimpleNamespace) -> None:
    limits = IngestLimits(max_triangles=3)
    for data in (craft.binary_stl(craft.tetra), craft.ascii_stl(craft.tetra)):
        refused(write(tmp_path, "t.stl", data), "too-many-triangles", limits=limits)


def test_size_limit_is_413(tmp_path: Path, craft: SimpleNamespace) -> None:
    path = write(tmp_path, "t.stl", craft.binary_stl(craft.tetra))
    with pytest.raises(PayloadTooLarge) as info:
        inspect_design(path, filename="t.stl", limits=IngestLimits(max_bytes=100))
    assert info.value.code == "design-too-large" and info.value.status == 413


def test_all_zero_normals_refused(tmp_path: Path, craft: SimpleNamespace) -> None:
    data = craft.binary_stl(craft.tetra, normals=np.zeros((4, 3)))
    refused(write(tmp_path, "t.stl", data), "stl-normals-missing")


def test_valid_ascii_stl(tmp_path: Path, craft: SimpleNamespace) -> None:
    text = craft.ascii_stl(craft.tetra).replace("facet normal", "  FACET Normal")
    text = text.replace("vertex", "\tvertex")
    report = inspect_design(write(tmp_path, "t.stl", "\ufeff" + text), filename="t.stl")
    assert report.stl_variant == "ascii" and report.stats.triangles == 4
    assert report.stats.watertight


def test_ascii_crlf_and_exponents(tmp_path: Path, craft: SimpleNamespace) -> None:
    text = craft.ascii_stl(craft.tetra).replace("10.0", "1.0E+001").replace("\n", "\r\n")
    report = inspect_design(write(tmp_path, "t.stl", text), filename="t.stl")
    assert report.stats.volume == pytest.approx(1000 / 6)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace("vertex 10.0", "vertex ten", 1),
        lambda t: t.replace("endloop", "", 1),
        lambda t: t.replace("outer loop", "outer", 1),
        lambda t: t.rsplit("endsolid", 1)[0],
        lambda t: t[: len(t) // 2],
        lambda t: t.replace("vertex 0.0 0.0 0.0", "vertex 0 0", 1),
        lambda t: t.replace("facet normal", "hello world", 1),
        lambda t: t + "garbage after the solid\n",
        lambda t: t.replace("endfacet", "endfacet extra", 1),
    ],
)
def test_ascii_garbage(
    tmp_path: Path, craft: SimpleNamespace, mangle: Callable[[str], str]
) -> None:
    text = mangle(craft.ascii_stl(craft.tetra))
    refused(write(tmp_path, "t.stl", text), "stl-ascii-syntax")


def test_ascii_error_names_the_line(tmp_path: Path, craft: SimpleNamespace) -> None:
    text = craft.ascii_stl(craft.tetra).replace("vertex 0.0 10.0 0.0", "vertex 0.0 1O.0 0.0", 1)
    bad_line = next(i for i, line in enumerate(text.splitlines(), 1) if "1O.0" in line)
    error = refused(write(tmp_path, "t.stl", text), "stl-ascii-syntax")
    facet_start = bad_line - 3  # the facet containing the bad vertex starts here
    assert f"line {facet_start}" in error.detail


def test_text_named_stl_that_is_not_stl(tmp_path: Path) -> None:
    refused(write(tmp_path, "t.stl", "hello, this is not a mesh\n"), "stl-ascii-syntax")


def test_ascii_empty_solid(tmp_path: Path) -> None:
    refused(write(tmp_path, "t.stl", "solid empty\nendsolid empty\n"), "stl-empty")


def test_empty_file(tmp_path: Path) -> None:
    refused(write(tmp_path, "t.stl", b""), "empty-file")


@pytest.mark.parametrize("name", ["part.bin", None, "part.stl.txt"])
def test_unknown_format_is_415(tmp_path: Path, name: str | None) -> None:
    path = write(tmp_path, "blob", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(UnsupportedMediaType) as info:
        inspect_design(path, filename=name)
    assert info.value.code == "unknown-format" and info.value.status == 415


def test_extension_mismatch_is_415(tmp_path: Path, craft: SimpleNamespace) -> None:
    path = write(tmp_path, "t.obj", craft.binary_stl(craft.tetra))
    with pytest.raises(UnsupportedMediaType) as info:
        inspect_design(path, filename="part.3mf")
    assert info.value.code == "format-mismatch"


def test_content_decides_without_extension(tmp_path: Path, craft: SimpleNamespace) -> None:
    path = write(tmp_path, "upload", craft.binary_stl(craft.tetra))
    assert inspect_design(path, filename=None).format == "stl"


def test_unit_hint(tmp_path: Path, craft: SimpleNamespace) -> None:
    path = write(tmp_path, "t.stl", craft.binary_stl(craft.tetra))
    report = inspect_design(path, filename="t.stl", unit_hint="cm")
    assert report.unit == "centimeter" and report.stats.size_mm == pytest.approx((100, 100, 100))
    assert report.stats.volume_mm3 == pytest.approx(1000 / 6 * 1000)
    refused(path, "bad-unit-hint", unit_hint="furlong")


def test_open_mesh_policy(tmp_path: Path, craft: SimpleNamespace) -> None:
    path = write(tmp_path, "t.stl", craft.binary_stl(craft.tetra[:3]))
    error = refused(path, "not-watertight")
    assert "allow_open" in error.detail
    report = inspect_design(path, filename="t.stl", allow_open=True)
    assert not report.stats.watertight and report.stats.open_edges == 3


def test_flat_geometry(tmp_path: Path, craft: SimpleNamespace) -> None:
    tri = np.array([[[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 0, 0], [0, 1, 0], [1, 0, 0]]], float)
    refused(write(tmp_path, "t.stl", craft.binary_stl(tri)), "flat-geometry")


def test_ascii_spanning_blocks_matches_binary(tmp_path: Path, craft: SimpleNamespace) -> None:
    """A multi-solid ASCII STL larger than the 4 MiB read block parses exactly."""
    torus = trimesh.creation.torus(10, 3, major_sections=120, minor_sections=90)
    solid = trimesh.exchange.stl.export_stl_ascii(torus)
    text = solid + "\n" + solid.replace("solid", "solid second", 1)
    assert len(text) > 4 * 1024 * 1024
    ascii_report = inspect_design(write(tmp_path, "a.stl", text), filename="a.stl")
    binary = craft.binary_stl(torus.triangles, normals=torus.face_normals)
    binary_report = inspect_design(write(tmp_path, "b.stl", binary), filename="b.stl")
    assert ascii_report.stats.triangles == 2 * binary_report.stats.triangles
    assert ascii_report.stats.volume == pytest.approx(2 * binary_report.stats.volume, rel=1e-5)
    assert ascii_report.stats.open_edges == 0
