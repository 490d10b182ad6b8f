"""Facility key generation and RFC 7638 thumbprints."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from licensing.delivery import errors as e
from licensing.delivery import generate_facility_keys, key_thumbprint, load_rsa_private_key

# RFC 7638 section 3.1 example key and thumbprint
RFC_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
    "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
    "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
    "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_rfc7638_example_thumbprint() -> None:
    n = int.from_bytes(base64.urlsafe_b64decode(RFC_N + "=" * (-len(RFC_N) % 4)), "big")
    key = rsa.RSAPublicNumbers(65537, n).public_key()
    assert key_thumbprint(key) == RFC_THUMBPRINT


def test_generate_facility_keys(tmp_path: Path) -> None:
    paths = generate_facility_keys(tmp_path / "bureau")
    for private in (paths.ed25519_private, paths.rsa_private):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    ed = serialization.load_pem_private_key(paths.ed25519_private.read_bytes(), None)
    assert isinstance(ed, ed25519.Ed25519PrivateKey)
    ed_pub = serialization.load_pem_public_key(paths.ed25519_public.read_bytes())
    assert isinstance(ed_pub, ed25519.Ed25519PublicKey)
    rs = load_rsa_private_key(paths.rsa_private)
    assert rs.key_size == 3072
    rs_pub = serialization.load_pem_public_key(paths.rsa_public.read_bytes())
    assert isinstance(rs_pub, rsa.RSAPublicKey)
    assert rs_pub.public_numbers() == rs.public_key().public_numbers()
    assert paths.rsa_thumbprint == key_thumbprint(rs_pub)


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "facility-rsa.pem").write_text("keep me")
    with pytest.raises(e.KeyFileExists) as info:
        generate_facility_keys(tmp_path)
    assert info.value.code == "bureau-key-exists" and info.value.status == 409
    assert (tmp_path / "facility-rsa.pem").read_text() == "keep me"


def test_load_rejects_non_rsa_key(tmp_path: Path) -> None:
    path = tmp_path / "ed.pem"
    path.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(e.BadKeyFile):
        load_rsa_private_key(path)
    with pytest.raises(e.BadKeyFile):
        load_rsa_private_key(tmp_path / "missing.pem")
