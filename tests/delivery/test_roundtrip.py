"""Fixture meshes survive packaging, opening and re-export unchanged."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trimesh
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from licensing.delivery import errors as e
from licensing.delivery import (
    extract_mesh,
    extract_metadata,
    key_thumbprint,
    mesh_to_model_xml,
    open_delivery,
    open_secure_3mf,
    write_secure_3mf,
)

FIXTURES = [
    "20mm-xyz-cube.stl",
    "3mfc_box.3mf",
    "octagonal_pocket.stl",
    "pyramids.3mf",
    "1002_tray_bottom.STL",
    "3mfc_cylinder.3mf",
]
METADATA = {"partvault:jti": "lic-7", "partvault:profile.material": "PA12 <grey> & co"}
ATTACHMENTS = {
    "/Metadata/print_profile.json": b'{"material":"PA12"}',
    "/Metadata/print_profile.json.sig": b"\x00sig\xff",
}


def _load(meshes_dir: Path, name: str) -> trimesh.Trimesh:
    mesh = trimesh.load(meshes_dir / name, force="mesh", process=False)
    assert isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) > 0
    return mesh


def _package(mesh: trimesh.Trimesh, key: rsa.RSAPrivateKey) -> bytes:
    buf = io.BytesIO()
    write_secure_3mf(
        buf,
        mesh_to_model_xml(mesh.vertices, mesh.faces, metadata=METADATA),
        consumer_id="fac-1",
        key_id=key_thumbprint(key.public_key()),
        rsa_public_key=key.public_key(),
        attachments=ATTACHMENTS,
        package_uuid="0b7c4f0e-5d3a-4e47-9a51-3f1f5b1f2a10",
    )
    return buf.getvalue()


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_round_trip(
    meshes_dir: Path, facility_key: rsa.RSAPrivateKey, name: str, lib3mf_driver: Any, tmp_path: Path
) -> None:
    mesh = _load(meshes_dir, name)
    data = _package(mesh, facility_key)
    opened = open_secure_3mf(io.BytesIO(data), facility_key, consumer_id="fac-1")
    v, f, unit = extract_mesh(opened.model_xml)
    np.testing.assert_array_equal(f, mesh.faces)
    np.testing.assert_allclose(v, mesh.vertices, rtol=1e-8, atol=1e-9)
    assert unit == "millimeter"
    assert extract_metadata(opened.model_xml) == METADATA
    assert opened.attachments == ATTACHMENTS
    assert opened.package_uuid == "0b7c4f0e-5d3a-4e47-9a51-3f1f5b1f2a10"
    (tmp_path / "copy.3mf").write_bytes(data)
    lv, lf, _ = lib3mf_driver.read_secure(tmp_path / "copy.3mf", "fac-1", facility_key)
    np.testing.assert_array_equal(lf, mesh.faces)
    np.testing.assert_allclose(lv, mesh.vertices.astype(np.float32), rtol=1e-6, atol=1e-5)


def test_package_layout(facility_key: rsa.RSAPrivateKey, sphere: trimesh.Trimesh) -> None:
    zf = zipfile.ZipFile(io.BytesIO(_package(sphere, facility_key)))
    assert set(zf.namelist()) == {
        "[Content_Types].xml",
        "_rels/.rels",
        "3D/3dmodel.model",
        "3D/_rels/3dmodel.model.rels",
        "3D/design.model",
        "Secure/keystore.xml",
        "Metadata/print_profile.json",
        "Metadata/print_profile.json.sig",
    }
    rels = zf.read("_rels/.rels").decode()
    assert "http://schemas.microsoft.com/3dmanufacturing/2019/04/keystore" in rels
    assert "relationships/mustpreserve" in rels
    assert "relationships/encryptedfile" in zf.read("3D/_rels/3dmodel.model.rels").decode()
    assert "3dmanufacturing-keystore+xml" in zf.read("[Content_Types].xml").decode()
    design = zf.read("3D/design.model")
    assert design[:12] == b"%3McF\x00\x00\x00\x0c\x00\x00\x00"
    assert b"<vertex" not in design and b"PA12" not in design
    assert zf.getinfo("3D/design.model").compress_type == zipfile.ZIP_STORED
    ks = zf.read("Secure/keystore.xml").decode()
    for needle in (
        'compression="none"',
        "xmlenc11#rsa-oaep",
        "mgf1sha256",
        "xmlenc#sha256",
        "aes256-gcm",
        'consumerid="fac-1"',
        f'keyid="{key_thumbprint(facility_key.public_key())}"',
        "BEGIN PUBLIC KEY",
    ):
        assert needle in ks


def test_two_copies_use_fresh_keys_and_ivs(
    facility_key: rsa.RSAPrivateKey, sphere: trimesh.Trimesh
) -> None:
    a = zipfile.ZipFile(io.BytesIO(_package(sphere, facility_key)))
    b = zipfile.ZipFile(io.BytesIO(_package(sphere, facility_key)))
    assert a.read("3D/design.model") != b.read("3D/design.model")
    assert a.read("Secure/keystore.xml") != b.read("Secure/keystore.xml")


@pytest.mark.parametrize("suffix", [".stl", ".3mf"])
def test_open_delivery_writes_plain_file(
    tmp_path: Path,
    facility_key: rsa.RSAPrivateKey,
    meshes_dir: Path,
    suffix: str,
    lib3mf_driver: Any,
) -> None:
    mesh = _load(meshes_dir, "3mfc_box.3mf")
    src = tmp_path / "copy.3mf"
    src.write_bytes(_package(mesh, facility_key))
    key_path = tmp_path / "facility-rsa.pem"
    key_path.write_bytes(
        facility_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    result = open_delivery(src, key_path, tmp_path / f"design{suffix}")
    assert result.triangles == len(mesh.faces) and result.consumer_id == "fac-1"
    back = trimesh.load(result.out_path, force="mesh", process=False)
    assert len(back.faces) == len(mesh.faces)
    np.testing.assert_allclose(back.bounds, mesh.bounds, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["copy.3mf", "facility-rsa.pem", f"design{suffix}"]
    )


def test_invalid_meshes_are_refused() -> None:
    good_v, good_f = np.zeros((3, 3)), np.array([[0, 1, 2]])
    for v, f, unit in [
        (np.zeros((3, 2)), good_f, "millimeter"),
        (good_v, np.array([[0, 1, 3]]), "millimeter"),
        (np.full((3, 3), np.nan), good_f, "millimeter"),
        (good_v, good_f.astype(float), "millimeter"),
        (good_v, good_f, "furlong"),
    ]:
        with pytest.raises(e.InvalidMesh):
            mesh_to_model_xml(v, f, unit=unit)


def test_model_xml_rejects_entities() -> None:
    evil = (
        b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<model xmlns="http://schemas.microsoft.com/3dmanufacturing/core/2015/02">'
        b'<metadata name="a">&x;</metadata></model>'
    )
    assert extract_metadata(evil) == {"a": ""}
    with pytest.raises(e.MalformedModel):
        extract_mesh(evil)


class _UnseekableSink:
    """A write-only stream, like an HTTP response body."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)

    def flush(self) -> None:
        """Nothing buffered."""


def test_streams_to_unseekable_sink(
    tmp_path: Path, facility_key: rsa.RSAPrivateKey, sphere: trimesh.Trimesh, lib3mf_driver: Any
) -> None:
    sink = _UnseekableSink()
    write_secure_3mf(
        sink,
        mesh_to_model_xml(sphere.vertices, sphere.faces),
        consumer_id="fac-1",  # type: ignore[arg-type]
        key_id=key_thumbprint(facility_key.public_key()),
        rsa_public_key=facility_key.public_key(),
    )
    path = tmp_path / "streamed.3mf"
    path.write_bytes(bytes(sink.data))
    _, f, _ = extract_mesh(open_secure_3mf(path, facility_key).model_xml)
    np.testing.assert_array_equal(f, sphere.faces)
    _, lf, _ = lib3mf_driver.read_secure(path, "fac-1", facility_key)  # data descriptors
    np.testing.assert_array_equal(lf, sphere.faces)


def test_stl_output_is_in_millimetres(
    tmp_path: Path, facility_key: rsa.RSAPrivateKey, sphere: trimesh.Trimesh
) -> None:
    src = tmp_path / "copy.3mf"
    with src.open("wb") as fh:
        write_secure_3mf(
            fh,
            mesh_to_model_xml(sphere.vertices * 0.01, sphere.faces, unit="meter"),
            consumer_id="fac-1",
            key_id=key_thumbprint(facility_key.public_key()),
            rsa_public_key=facility_key.public_key(),
        )
    key_path = tmp_path / "facility-rsa.pem"
    key_path.write_bytes(
        facility_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    result = open_delivery(src, key_path, tmp_path / "design.stl")
    back = trimesh.load(result.out_path, force="mesh", process=False)
    np.testing.assert_allclose(back.bounds, sphere.bounds * 10.0, atol=1e-4)
