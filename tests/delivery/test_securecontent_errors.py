"""Every way a delivery can be wrong gives one typed error and leaves no output file."""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import trimesh
from cryptography.hazmat.primitives.asymmetric import rsa
from tests_support import write_private_pem

from inventory.errors import PartvaultError
from licensing.delivery import errors as e
from licensing.delivery import (
    key_thumbprint,
    mesh_to_model_xml,
    open_delivery,
    open_secure_3mf,
    write_secure_3mf,
)

Rezip = Callable[[bytes, Callable[[str, bytes], bytes]], bytes]
PROFILE = "/Metadata/print_profile.json"


def _package(mesh: trimesh.Trimesh, key: rsa.RSAPrivateKey, consumer: str = "fac-1") -> bytes:
    buf = io.BytesIO()
    write_secure_3mf(
        buf,
        mesh_to_model_xml(mesh.vertices, mesh.faces),
        consumer_id=consumer,
        key_id=key_thumbprint(key.public_key()),
        rsa_public_key=key.public_key(),
        attachments={PROFILE: b'{"material":"PA12"}'},
    )
    return buf.getvalue()


def _key_file(tmp_path: Path, key: rsa.RSAPrivateKey) -> Path:
    return write_private_pem(key, tmp_path / "keys" / "facility-rsa.pem")


def _assert_fails_cleanly(
    tmp_path: Path,
    data: bytes,
    key: rsa.RSAPrivateKey,
    error: type[PartvaultError],
    code: str,
    consumer_id: str | None = "fac-1",
) -> None:
    """open_delivery raises `error` with `code`, and the output folder stays empty."""
    src = tmp_path / "in.3mf"
    src.write_bytes(data)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for out in ("design.3mf", "design.stl"):
        with pytest.raises(error) as info:
            open_delivery(src, _key_file(tmp_path, key), out_dir / out, consumer_id=consumer_id)
        assert info.value.code == code
        assert list(out_dir.iterdir()) == []


def test_wrong_rsa_key(
    tmp_path: Path,
    sphere: trimesh.Trimesh,
    facility_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
) -> None:
    data = _package(sphere, facility_key)
    _assert_fails_cleanly(tmp_path, data, other_key, e.WrongKey, "securecontent-wrong-key")


def test_wrong_key_without_key_id(
    sphere: trimesh.Trimesh,
    facility_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
    rezipper: Rezip,
) -> None:
    data = rezipper(
        _package(sphere, facility_key),
        lambda n, b: (
            b.replace(f' keyid="{key_thumbprint(facility_key.public_key())}"'.encode(), b"")
            if n.endswith("keystore.xml")
            else b
        ),
    )
    with pytest.raises(e.WrongKey):
        open_secure_3mf(io.BytesIO(data), other_key, consumer_id="fac-1")


def test_another_facilitys_file(
    tmp_path: Path,
    sphere: trimesh.Trimesh,
    facility_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
) -> None:
    theirs = _package(sphere, other_key, consumer="fac-2")
    _assert_fails_cleanly(
        tmp_path, theirs, facility_key, e.NotForThisConsumer, "securecontent-not-for-this-consumer"
    )
    with pytest.raises(e.NotForThisConsumer):  # matched by key thumbprint
        open_secure_3mf(io.BytesIO(theirs), facility_key)


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, 0.999])
def test_truncated_package(
    tmp_path: Path, sphere: trimesh.Trimesh, facility_key: rsa.RSAPrivateKey, keep: float
) -> None:
    data = _package(sphere, facility_key)
    _assert_fails_cleanly(
        tmp_path,
        data[: int(len(data) * keep)],
        facility_key,
        e.Truncated,
        "securecontent-truncated",
    )


def test_flipped_byte_in_encrypted_part(
    tmp_path: Path, sphere: trimesh.Trimesh, facility_key: rsa.RSAPrivateKey, rezipper: Rezip
) -> None:
    def flip(name: str, body: bytes) -> bytes:
        if name != "3D/design.model":
            return body
        return body[:500] + bytes([body[500] ^ 0x01]) + body[501:]

    data = rezipper(_package(sphere, facility_key), flip)
    _assert_fails_cleanly(tmp_path, data, facility_key, e.TagMismatch, "securecontent-tag-mismatch")


def test_raw_flipped_byte_is_caught_by_zip_crc(
    tmp_path: Path, sphere: trimesh.Trimesh, facility_key: rsa.RSAPrivateKey
) -> None:
    data = bytearray(_package(sphere, facility_key))
    start = data.index(b"%3McF") + 200
    data[start] ^= 0x80
    _assert_fails_cleanly(tmp_path, bytes(data), facility_key, e.Corrupt, "securecontent-corrupt")


def _edit_keystore_field(field: str, rezipper: Rezip, data: bytes) -> bytes:
    def edit(part: str, body: bytes) -> bytes:
        if not part.endswith("keystore.xml"):
            return body
        start = body.index(f"<{field}>".encode()) + len(field) + 2
        end = body.index(f"</{field}>".encode())
        raw = bytearray(base64.b64decode(body[start:end]))
        raw[0] ^= 0xFF
        return body[:start] + base64.b64encode(bytes(raw)) + body[end:]

    return rezipper(data, edit)


@pytest.mark.parametrize("field", ["iv", "tag", "aad"])
def test_edited_keystore_cekparams(
    tmp_path: Path,
    sphere: trimesh.Trimesh,
    facility_key: rsa.RSAPrivateKey,
    rezipper: Rezip,
    field: str,
) -> None:
    data = _edit_keystore_field(field, rezipper, _package(sphere, facility_key))
    _assert_fails_cleanly(tmp_path, data, facility_key, e.TagMismatch, "securecontent-tag-mismatch")


def test_edited_wrapped_key(
    sphere: trimesh.Trimesh, facility_key: rsa.RSAPrivateKey, rezipper: Rezip
) -> None:
    data = _edit_keystore_field("xenc:CipherValue", rezipper, _package(sphere, facility_key))
    with pytest.raises(e.KeyUnwrapFailed) as info:
        open_secure_3mf(io.BytesIO(data), facility_key)
    assert info.value.code == "securecontent-unwrap-failed"


def test_edited_attachment(
    tmp_path: Path, sphere: trimesh.Trimesh, facility_key: rsa.RSAPrivateKey, rezipper: Rezip
) -> None:
    data = rezipper(
        _package(sphere, facility_key),
        lambda n, b: b'{"material":"PLA"}' if n == PROFILE[1:] else b,
    )
    _assert_fails_cleanly(
        tmp_path, data, facility_key, e.AttachmentMismatch, "securecontent-attachment-mismatch"
    )


def test_not_a_cipher_file(
    sphere: trimesh.Trimesh, facility_key: rsa.RSAPrivateKey, rezipper: Rezip
) -> None:
    data = rezipper(
        _package(sphere, facility_key), lambda n, b: b"PK" + b[2:] if n == "3D/design.model" else b
    )
    with pytest.raises(e.Malformed):
        open_secure_3mf(io.BytesIO(data), facility_key)


def test_missing_keystore(sphere: trimesh.Trimesh, facility_key: rsa.RSAPrivateKey) -> None:
    src = io.BytesIO(_package(sphere, facility_key))
    out = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            if not info.filename.startswith("Secure/"):
                zout.writestr(info, zin.read(info))
    with pytest.raises(e.Malformed):
        open_secure_3mf(io.BytesIO(out.getvalue()), facility_key)


def test_size_limit(sphere: trimesh.Trimesh, facility_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(e.TooLarge):
        open_secure_3mf(
            io.BytesIO(_package(sphere, facility_key)), facility_key, max_model_bytes=1000
        )


def test_bad_output_suffix(
    tmp_path: Path, sphere: trimesh.Trimesh, facility_key: rsa.RSAPrivateKey
) -> None:
    src = tmp_path / "in.3mf"
    src.write_bytes(_package(sphere, facility_key))
    with pytest.raises(e.UnsupportedOutput):
        open_delivery(src, _key_file(tmp_path, facility_key), tmp_path / "design.obj")
    assert not (tmp_path / "design.obj").exists()


def test_bad_key_file(
    tmp_path: Path, sphere: trimesh.Trimesh, facility_key: rsa.RSAPrivateKey
) -> None:
    src = tmp_path / "in.3mf"
    src.write_bytes(_package(sphere, facility_key))
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(e.BadKeyFile) as info:
        open_delivery(src, bad, tmp_path / "design.stl")
    assert "nope" not in info.value.detail
    assert not (tmp_path / "design.stl").exists()
