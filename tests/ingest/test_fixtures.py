"""Every shared fixture: the good ones ingest with sane numbers, the bad ones are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests_support import MESHES as FIXTURE_MESHES

from inventory.errors import Invalid
from inventory.ingest import DesignFormat, inspect_design

MESHES = sorted(FIXTURE_MESHES.iterdir())

BAD_CODES = {
    "MUSTFAIL_Chapter2.1.1a_PartsRelationships_NonExist3DModelPart.3mf": (
        "3mf-model-relationship-missing"
    ),
    "MUSTFAIL_Chapter2.1.1b_PartsRelationships_LinkToExternal.3mf": "3mf-external-relationship",
    "MUSTFAIL_Chapter2.3.2a_NonUTF_Encoding.3mf": "3mf-encoding",
    "MUSTFAIL_Chapter3.4b_MissingBuildElement.3mf": "3mf-missing-build",
    "MUSTFAIL_Chapter3.4c_MissingResourceElement.3mf": "3mf-missing-resources",
    "busted.STL": "stl-normals-missing",
    "soup.stl": "not-watertight",
    "stl_empty_bin.stl": "stl-empty",
}


def test_every_bad_fixture_has_its_own_code(bad_dir: Path) -> None:
    assert sorted(p.name for p in bad_dir.iterdir()) == sorted(BAD_CODES)
    assert len(set(BAD_CODES.values())) == len(BAD_CODES)


@pytest.mark.parametrize("name", sorted(BAD_CODES))
def test_bad_fixture_refused(bad_dir: Path, name: str) -> None:
    with pytest.raises(Invalid) as info:
        inspect_design(bad_dir / name, filename=name)
    assert info.value.code == BAD_CODES[name]
    assert info.value.status == 422
    assert info.value.detail


@pytest.mark.parametrize("path", MESHES, ids=lambda p: p.name)
def test_good_fixture_ingests(meshes_dir: Path, path: Path) -> None:
    report = inspect_design(meshes_dir / path.name, filename=path.name)
    stats = report.stats
    assert report.format in (DesignFormat.STL, DesignFormat.THREEMF)
    assert stats.triangles > 0 and stats.vertices >= 4
    assert stats.bodies >= 1
    assert stats.area > 0 and stats.volume > 0
    assert all(s > 0 for s in stats.size)
    assert stats.size_mm == pytest.approx(tuple(s * stats.unit_to_mm for s in stats.size))
    assert stats.volume_mm3 == pytest.approx(stats.volume * stats.unit_to_mm**3)


def test_calibration_cube(meshes_dir: Path) -> None:
    report = inspect_design(meshes_dir / "20mm-xyz-cube.stl", filename="20mm-xyz-cube.stl")
    stats = report.stats
    assert (report.format, report.stl_variant, report.unit) == ("stl", "binary", "millimeter")
    assert report.unit_source == "default"
    assert stats.triangles == 260
    assert stats.size_mm == pytest.approx((20.0, 20.0, 20.0), abs=1e-4)
    assert stats.watertight and stats.winding_consistent and stats.open_edges == 0
    assert stats.bodies == 1
    assert 7000 < stats.volume_mm3 < 8000  # a cube with embossed letters


def test_3mf_box(meshes_dir: Path) -> None:
    for name in ("3mfc_box.3mf", "3mfc_box_prod.3mf"):
        report = inspect_design(meshes_dir / name, filename=name)
        stats = report.stats
        assert (report.format, report.unit, report.unit_source) == ("3mf", "millimeter", "file")
        assert stats.triangles == 12 and stats.vertices == 8
        assert stats.size_mm == pytest.approx((10.0, 20.0, 30.0))
        assert stats.volume_mm3 == pytest.approx(6000.0)
        assert stats.area_mm2 == pytest.approx(2200.0)
        assert stats.watertight


def test_3mf_unit_inch(meshes_dir: Path) -> None:
    report = inspect_design(meshes_dir / "featuretype.3MF", filename="featuretype.3MF")
    stats = report.stats
    assert report.unit == "inch" and stats.unit_to_mm == 25.4
    assert stats.size == pytest.approx((5.0, 2.5, 1.375))
    assert stats.size_mm == pytest.approx((127.0, 63.5, 34.925))
    assert not stats.watertight and 0 < stats.open_edges < 50
    assert any("open edge" in w for w in report.warnings)


def test_ascii_stl_fixture(meshes_dir: Path) -> None:
    report = inspect_design(meshes_dir / "1002_tray_bottom.STL", filename="1002_tray_bottom.STL")
    assert report.stl_variant == "ascii"
    assert report.stats.triangles == 4520 and report.stats.watertight


def test_binary_stl_with_solid_header(meshes_dir: Path) -> None:
    path = meshes_dir / "angle_block.STL"
    assert path.read_bytes()[:5] == b"solid"
    report = inspect_design(path, filename=path.name, unit_hint="inch")
    assert report.stl_variant == "binary" and report.unit_source == "hint"
    assert report.stats.size_mm == pytest.approx(
        tuple(s * 25.4 for s in report.stats.size), rel=1e-9
    )


def test_multi_object_3mf(meshes_dir: Path) -> None:
    gears = inspect_design(meshes_dir / "3mfc_cube_gears.3mf", filename="g.3mf").stats
    assert gears.triangles == 25692
    assert gears.bodies == 17
    assert not gears.watertight  # bodies touch along shared edges...
    assert gears.open_edges == 0  # ...but no edge is open
    pyramids = inspect_design(meshes_dir / "pyramids.3mf", filename="p.3mf").stats
    assert pyramids.bodies == 12 and pyramids.watertight


def test_soup_accepted_only_when_brand_allows_open(bad_dir: Path) -> None:
    report = inspect_design(bad_dir / "soup.stl", filename="soup.stl", allow_open=True)
    assert not report.stats.watertight
    assert report.stats.open_edges == 300 and report.stats.bodies == 100
    assert any("open edge" in w for w in report.warnings)


def test_small_inch_part_warns(meshes_dir: Path) -> None:
    report = inspect_design(meshes_dir / "idler_riser.STL", filename="idler_riser.STL")
    assert any("inch" in w for w in report.warnings)
