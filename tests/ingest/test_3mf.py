"""3MF as a hostile ZIP/OPC/XML package: every crafted attack gets its own code."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from inventory.errors import Invalid, UnsupportedMediaType
from inventory.ingest import IngestLimits, inspect_design, load_mesh

Make = Callable[..., Path]
TETRA_VOLUME = 1000 / 6


def refused(path: Path, code: str, limits: IngestLimits | None = None) -> Invalid:
    with pytest.raises(Invalid) as info:
        if limits is None:
            inspect_design(path, filename=path.name)
        else:
            inspect_design(path, filename=path.name, limits=limits)
    assert info.value.code == code, info.value.detail
    assert info.value.status == 422
    return info.value


def test_valid_package(make_3mf: Make) -> None:
    report = inspect_design(make_3mf(), filename="part.3mf")
    assert report.format == "3mf" and report.unit == "millimeter"
    assert report.stats.triangles == 4 and report.stats.watertight
    assert report.stats.volume_mm3 == pytest.approx(TETRA_VOLUME)


def test_zip_bomb_ratio(make_3mf: Make) -> None:
    path = make_3mf(**{"Metadata/padding.xml": b"\x00" * (4 * 1024 * 1024)})
    error = refused(path, "zip-ratio-exceeded")
    assert "padding.xml" in error.detail


def test_total_uncompressed_limit(make_3mf: Make) -> None:
    path = make_3mf(**{"Metadata/a.bin": np.random.default_rng(1).bytes(300_000)})
    refused(path, "zip-too-large-uncompressed", IngestLimits(max_uncompressed_bytes=200_000))


def test_lying_size_header(make_3mf: Make) -> None:
    """Headers that understate an entry's size do not get it past the checks."""
    name = b"Metadata/padding.xml"
    path = make_3mf(**{name.decode(): b"\x00" * (4 * 1024 * 1024)})
    data = bytearray(path.read_bytes())
    local = data.find(name)
    central = data.find(name, local + 1)
    for size_field in (local - 30 + 22, central - 46 + 24):  # uncompressed size fields
        data[size_field : size_field + 4] = (100).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    refused(path, "zip-invalid")  # the stream stops at the declared size; the CRC fails


def test_too_many_entries(make_3mf: Make) -> None:
    extra = {f"Metadata/m{i}.txt": "x" for i in range(20)}
    refused(make_3mf(**extra), "zip-too-many-entries", IngestLimits(max_zip_entries=10))


def test_too_many_entries_counted_before_indexing(tmp_path: Path) -> None:
    """70,000 entries need the ZIP64 directory; the count is read from it, not from zipfile."""
    path = tmp_path / "many.3mf"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(70_000):
            zf.writestr(f"m/{i}", b"")
    error = refused(path, "zip-too-many-entries")
    assert "70000" in error.detail


def test_nested_archive(make_3mf: Make) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("a.txt", "hello")
    refused(make_3mf(**{"Metadata/inner.bin": inner.getvalue()}), "zip-nested-archive")


@pytest.mark.parametrize(
    "name",
    [
        "../evil.model",
        "3D/../../evil.txt",
        "3D\\evil.txt",
        "C:/evil.txt",
        "3D/./x",
        "3D//x",
        "3D/x.",
        "3D/%2e%2e/x",
    ],
)
def test_bad_part_names(make_3mf: Make, name: str) -> None:
    refused(make_3mf(**{name: "x"}), "opc-bad-part-name")


def test_absolute_part_name(tmp_path: Path) -> None:
    path = tmp_path / "abs.3mf"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zipfile.ZipInfo("/etc/passwd"), "x")
    refused(path, "opc-bad-part-name")


def test_duplicate_part_names(make_3mf: Make, craft: SimpleNamespace) -> None:
    refused(make_3mf(**{"3d/3DModel.model": craft.model_xml()}), "opc-duplicate-part-name")


def test_billion_laughs(make_3mf: Make, craft: SimpleNamespace) -> None:
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
        for i in range(1, 10)
    )
    prolog = f'<?xml version="1.0" encoding="UTF-8"?><!DOCTYPE model [{entities}]>'
    model = craft.model_xml(prolog=prolog).replace("<resources>", "<resources>&lol9;")
    refused(make_3mf(**{"3D/3dmodel.model": model}), "xml-dtd-forbidden")


def test_external_entity(make_3mf: Make, craft: SimpleNamespace) -> None:
    prolog = '<?xml version="1.0"?><!DOCTYPE model SYSTEM "http://example.invalid/x.dtd">'
    refused(make_3mf(**{"3D/3dmodel.model": craft.model_xml(prolog=prolog)}), "xml-dtd-forbidden")


def test_dtd_in_relationships(make_3mf: Make, craft: SimpleNamespace) -> None:
    rels = craft.rels(craft.rel("/3D/3dmodel.model"))
    rels = rels.replace("?>", '?><!DOCTYPE r [<!ENTITY x "y">]>', 1)
    refused(make_3mf(**{"_rels/.rels": rels}), "xml-dtd-forbidden")


def test_external_relationship_mode(make_3mf: Make, craft: SimpleNamespace) -> None:
    rels = craft.rels(
        craft.rel("/3D/3dmodel.model"),
        craft.rel("https://example.invalid/x.png", "thumbnail", "rel1", mode="External"),
    )
    refused(make_3mf(**{"_rels/.rels": rels}), "3mf-external-relationship")


@pytest.mark.parametrize("target", ["file:///etc/passwd", "//host/share/x", "../../x.png"])
def test_external_relationship_targets(make_3mf: Make, craft: SimpleNamespace, target: str) -> None:
    rels = craft.rels(craft.rel("/3D/3dmodel.model"), craft.rel(target, "thumbnail", "rel1"))
    refused(make_3mf(**{"_rels/.rels": rels}), "3mf-external-relationship")


def test_relationship_target_missing(make_3mf: Make, craft: SimpleNamespace) -> None:
    rels = craft.rels(craft.rel("/3D/3dmodel.model"), craft.rel("/Metadata/gone.png", "t", "r1"))
    refused(make_3mf(**{"_rels/.rels": rels}), "3mf-relationship-target-missing")
    rels = craft.rels(craft.rel("/3D/other.model"))
    refused(make_3mf(**{"_rels/.rels": rels}), "3mf-relationship-target-missing")


def test_model_found_through_relationship(make_3mf: Make, craft: SimpleNamespace) -> None:
    entries = craft.default_entries()
    entries["3D/renamed.model"] = entries.pop("3D/3dmodel.model")
    entries["_rels/.rels"] = craft.rels(craft.rel("3D/renamed.model"))
    assert inspect_design(make_3mf(entries), filename="p.3mf").stats.triangles == 4


def test_missing_package_parts(make_3mf: Make, craft: SimpleNamespace) -> None:
    entries = craft.default_entries()
    del entries["[Content_Types].xml"]
    refused(make_3mf(entries), "opc-missing-content-types")
    entries = craft.default_entries()
    del entries["_rels/.rels"]
    refused(make_3mf(entries), "opc-missing-root-rels")


def test_multiple_model_parts(make_3mf: Make, craft: SimpleNamespace) -> None:
    refused(make_3mf(**{"3D/second.model": craft.model_xml()}), "3mf-multiple-model-parts")


def test_model_content_type(make_3mf: Make, craft: SimpleNamespace) -> None:
    types = craft.CONTENT_TYPES.replace('Extension="model"', 'Extension="xml"')
    refused(make_3mf(**{"[Content_Types].xml": types}), "3mf-model-content-type")


def test_utf16_model_accepted(make_3mf: Make, craft: SimpleNamespace) -> None:
    model = craft.model_xml(prolog='<?xml version="1.0" encoding="UTF-16"?>').encode("utf-16")
    report = inspect_design(make_3mf(**{"3D/3dmodel.model": model}), filename="p.3mf")
    assert report.stats.triangles == 4


@pytest.mark.parametrize(
    ("encoding", "codec"), [("ISO-8859-1", "latin-1"), ("UTF-32", "utf-32"), ("UTF-16", "utf-8")]
)
def test_model_encoding(make_3mf: Make, craft: SimpleNamespace, encoding: str, codec: str) -> None:
    model = craft.model_xml(prolog=f'<?xml version="1.0" encoding="{encoding}"?>').encode(codec)
    refused(make_3mf(**{"3D/3dmodel.model": model}), "3mf-encoding")


def test_malformed_xml(make_3mf: Make, craft: SimpleNamespace) -> None:
    refused(make_3mf(**{"3D/3dmodel.model": craft.model_xml()[:-20]}), "xml-malformed")


def test_missing_build_and_resources(make_3mf: Make, craft: SimpleNamespace) -> None:
    refused(make_3mf(**{"3D/3dmodel.model": craft.model_xml(build="")}), "3mf-missing-build")
    no_resources = craft.model_xml().replace("<resources>", "<x>").replace("</resources>", "</x>")
    refused(make_3mf(**{"3D/3dmodel.model": no_resources}), "3mf-missing-resources")
    empty = craft.model_xml(build="<build/>")
    refused(make_3mf(**{"3D/3dmodel.model": empty}), "3mf-empty-build")


def test_build_item_unknown_object(make_3mf: Make, craft: SimpleNamespace) -> None:
    model = craft.model_xml(build='<build><item objectid="7"/></build>')
    refused(make_3mf(**{"3D/3dmodel.model": model}), "3mf-unknown-object")


def test_components_and_transforms(make_3mf: Make, craft: SimpleNamespace) -> None:
    objects = (
        f'<object id="1" type="model">{craft.mesh_xml()}</object>'
        '<object id="2" type="model"><components>'
        '<component objectid="1"/>'
        '<component objectid="1" transform="-1 0 0 0 1 0 0 0 1 -5 0 0"/>'
        "</components></object>"
    )
    build = '<build><item objectid="2" transform="2 0 0 0 2 0 0 0 2 0 0 100"/></build>'
    model = craft.model_xml(objects=objects, build=build, unit="centimeter")
    report = inspect_design(make_3mf(**{"3D/3dmodel.model": model}), filename="p.3mf")
    stats = report.stats
    assert stats.triangles == 8 and stats.bodies == 2 and stats.watertight
    assert stats.volume == pytest.approx(2 * 8 * TETRA_VOLUME)  # mirrored copy stays outward
    assert stats.bbox_min == pytest.approx((-30.0, 0.0, 100.0))
    assert stats.bbox_max == pytest.approx((20.0, 20.0, 120.0))
    assert stats.size_mm == pytest.approx((500.0, 200.0, 200.0))


def test_component_cycle(make_3mf: Make, craft: SimpleNamespace) -> None:
    objects = (
        '<object id="1"><components><component objectid="2"/></components></object>'
        '<object id="2"><components><component objectid="1"/></components></object>'
    )
    refused(
        make_3mf(**{"3D/3dmodel.model": craft.model_xml(objects=objects)}), "3mf-component-cycle"
    )


def test_instancing_counts_against_triangle_limit(make_3mf: Make, craft: SimpleNamespace) -> None:
    build = "<build>" + '<item objectid="1"/>' * 3 + "</build>"
    path = make_3mf(**{"3D/3dmodel.model": craft.model_xml(build=build)})
    refused(path, "too-many-triangles", IngestLimits(max_triangles=10))


@pytest.mark.parametrize(
    ("fragment", "replacement", "code"),
    [
        ('<vertex x="10.0"', '<vertex x="nan"', "non-finite-coordinates"),
        ('<vertex x="10.0"', '<vertex x="ten"', "3mf-bad-number"),
        ('v3="1"', 'v3="9"', "3mf-bad-triangle"),
        ('unit="millimeter"', 'unit="parsec"', "3mf-bad-unit"),
        ('<item objectid="1"/>', '<item objectid="1" transform="1 0 0"/>', "3mf-bad-transform"),
        ('<object id="1"', '<object id=""', "3mf-bad-object"),
    ],
)
def test_model_content_errors(
    make_3mf: Make, craft: SimpleNamespace, fragment: str, replacement: str, code: str
) -> None:
    model = craft.model_xml()
    assert fragment in model
    refused(make_3mf(**{"3D/3dmodel.model": model.replace(fragment, replacement, 1)}), code)


def test_unsupported_required_extension(make_3mf: Make, craft: SimpleNamespace) -> None:
    attrs = (
        ' xmlns:s="http://schemas.microsoft.com/3dmanufacturing/slice/2015/07"'
        ' requiredextensions="s"'
    )
    model = craft.model_xml(attrs=attrs)
    refused(make_3mf(**{"3D/3dmodel.model": model}), "3mf-unsupported-extension")


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "broken.3mf"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    refused(path, "zip-invalid")


def test_encrypted_entry(tmp_path: Path, make_3mf: Make) -> None:
    path = make_3mf()
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")
    data[central + 8] |= 0x1  # general-purpose flag: encrypted
    path.write_bytes(bytes(data))
    refused(path, "zip-encrypted")


def test_load_mesh_for_delivery(meshes_dir: Path) -> None:
    mesh, to_mm = load_mesh(meshes_dir / "featuretype.3MF", "3mf")
    assert to_mm == 25.4 and len(mesh.faces) == 2208
    mesh, to_mm = load_mesh(meshes_dir / "angle_block.STL", "stl", unit_hint="inch")
    assert to_mm == 25.4 and len(mesh.faces) == 704
    mesh, to_mm = load_mesh(meshes_dir / "1002_tray_bottom.STL", "stl")
    assert to_mm == 1.0 and len(mesh.faces) == 4520
    with pytest.raises(UnsupportedMediaType):
        load_mesh(meshes_dir / "1002_tray_bottom.STL", "step")
