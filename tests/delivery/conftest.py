"""Fixtures for delivery tests; the lib3mf glue lives in tests/lib3mf_driver.py."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator

import pytest
import trimesh
from cryptography.hazmat.primitives.asymmetric import rsa
from lib3mf_driver import Lib3mfDriver


@pytest.fixture
def lib3mf_driver() -> Iterator[Lib3mfDriver]:
    """A lib3mf driver whose callbacks must finish without error."""
    driver = Lib3mfDriver()
    yield driver
    assert driver.log.errors == []


@pytest.fixture
def lib3mf_factory() -> type[Lib3mfDriver]:
    """The driver class, for tests that expect lib3mf itself to fail."""
    return Lib3mfDriver


@pytest.fixture(scope="session")
def facility_key() -> rsa.RSAPrivateKey:
    """The facility's RSA-3072 wrapping key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


@pytest.fixture(scope="session")
def other_key() -> rsa.RSAPrivateKey:
    """Another facility's RSA key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


@pytest.fixture(scope="session")
def sphere() -> trimesh.Trimesh:
    """A small closed mesh (1,280 faces)."""
    return trimesh.creation.icosphere(subdivisions=3)


def rezip(data: bytes, edit: Callable[[str, bytes], bytes]) -> bytes:
    """Rebuild a package with valid CRCs after editing parts (an attacker's edit)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, edit(info.filename, src.read(info)))
    return out.getvalue()


@pytest.fixture
def rezipper() -> Callable[[bytes, Callable[[str, bytes], bytes]], bytes]:
    return rezip
