"""lib3mf 2.5 (the 3MF Consortium's reference library) interoperates both ways."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import lib3mf
import numpy as np
import pytest
import trimesh
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from licensing.delivery import (
    errors,
    extract_mesh,
    key_thumbprint,
    mesh_to_model_xml,
    open_secure_3mf,
    write_secure_3mf,
)
from licensing.delivery.securecontent import attachments_aad

ATTACHMENTS = {
    "/Metadata/print_profile.json": b'{"material":"PA12","layer_um":80}',
    "/Metadata/print_profile.json.sig": b"detached-signature-bytes",
}


def _package(path: Path, mesh: trimesh.Trimesh, key: rsa.RSAPrivateKey) -> None:
    xml = mesh_to_model_xml(mesh.vertices, mesh.faces, metadata={"partvault:jti": "jti-1"})
    with path.open("wb") as fh:
        write_secure_3mf(
            fh,
            xml,
            consumer_id="fac-1",
            key_id=key_thumbprint(key.public_key()),
            rsa_public_key=key.public_key(),
            attachments=ATTACHMENTS,
        )


def _assert_same_mesh(v: np.ndarray, f: np.ndarray, mesh: trimesh.Trimesh) -> None:
    assert v.shape == mesh.vertices.shape
    np.testing.assert_array_equal(f, mesh.faces)
    np.testing.assert_allclose(v, mesh.vertices.astype(np.float32), rtol=1e-6, atol=1e-5)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize("subdivisions", [1, 3, 5])
def test_lib3mf_opens_our_package(
    tmp_path: Path,
    lib3mf_driver: Any,
    facility_key: rsa.RSAPrivateKey,
    subdivisions: int,
) -> None:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions)
    path = tmp_path / "copy.3mf"
    _package(path, mesh, facility_key)
    v, f, warnings = lib3mf_driver.read_secure(path, "fac-1", facility_key)
    _assert_same_mesh(v, f, mesh)
    assert warnings == 0
    assert set(lib3mf_driver.log.wraps) == {("MGF1_SHA256", "SHA256")}  # parsed our kekparams
    assert lib3mf_driver.log.aads == [attachments_aad(ATTACHMENTS)]  # and our AAD


def test_lib3mf_refuses_our_package_with_another_key(
    tmp_path: Path,
    facility_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
    sphere: trimesh.Trimesh,
    lib3mf_factory: Any,
) -> None:
    path = tmp_path / "copy.3mf"
    _package(path, sphere, facility_key)
    driver = lib3mf_factory()
    with pytest.raises(lib3mf.ELib3MFException):
        driver.read_secure(path, "fac-1", other_key)
    assert any("wrap" in e for e in driver.log.errors)


@pytest.mark.parametrize(
    ("sha256", "deflate", "subdivisions"),
    [(True, False, 5), (False, False, 3), (True, True, 3), (False, True, 2)],
)
def test_we_open_lib3mf_package(
    tmp_path: Path,
    lib3mf_driver: Any,
    facility_key: rsa.RSAPrivateKey,
    sha256: bool,
    deflate: bool,
    subdivisions: int,
) -> None:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions)
    path = tmp_path / "lib3mf.3mf"
    thumb = key_thumbprint(facility_key.public_key())
    lib3mf_driver.write_secure(
        path,
        mesh.vertices,
        mesh.faces,
        consumer_id="fac-1",
        key_id=thumb,
        public_key=facility_key.public_key(),
        pem=_pem(facility_key),
        sha256=sha256,
        deflate=deflate,
    )
    assert zipfile.ZipFile(path).read("3D/securemesh.model")[:5] == b"%3McF"
    opened = open_secure_3mf(path, facility_key)  # chosen by key id = thumbprint
    assert (opened.consumer_id, opened.key_id) == ("fac-1", thumb)
    v, f, unit = extract_mesh(opened.model_xml)
    assert unit == "millimeter"
    # lib3mf writes coordinates with 6 significant digits
    np.testing.assert_array_equal(f, mesh.faces)
    np.testing.assert_allclose(v, mesh.vertices, rtol=1e-5, atol=1e-6)


def test_edited_deflated_lib3mf_part_is_a_tag_mismatch(
    tmp_path: Path, lib3mf_driver: Any, facility_key: rsa.RSAPrivateKey, rezipper: Any
) -> None:
    mesh = trimesh.creation.icosphere(subdivisions=2)
    path = tmp_path / "lib3mf.3mf"
    lib3mf_driver.write_secure(
        path,
        mesh.vertices,
        mesh.faces,
        consumer_id="fac-1",
        key_id=key_thumbprint(facility_key.public_key()),
        public_key=facility_key.public_key(),
        pem=_pem(facility_key),
        sha256=True,
        deflate=True,
    )

    def flip(name: str, body: bytes) -> bytes:
        return (
            body[:40] + bytes([body[40] ^ 0x5A]) + body[41:]
            if name.endswith("securemesh.model")
            else body
        )

    with pytest.raises(errors.TagMismatch):
        open_secure_3mf(io.BytesIO(rezipper(path.read_bytes(), flip)), facility_key)
