"""The print bureau's side: its key pairs and opening a downloaded design copy.

`partvault bureau open FILE --key facility-rsa.pem -o out.3mf|out.stl` calls
`open_delivery`; key material is never logged nor echoed in errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from licensing.delivery import errors
from licensing.delivery.model3mf import (
    MILLIMETRES_PER_UNIT,
    extract_mesh,
    extract_metadata,
    mesh_to_model_xml,
    write_atomically,
    write_binary_stl,
    write_plain_3mf,
)
from licensing.delivery.securecontent import OpenedDesign, open_secure_3mf
from licensing.tokens.thumbprint import key_thumbprint

__all__ = [
    "FacilityKeyPaths",
    "OpenResult",
    "generate_facility_keys",
    "key_thumbprint",
    "load_rsa_private_key",
    "open_delivery",
]

RSA_BITS = 3072


@dataclass(frozen=True)
class FacilityKeyPaths:
    """Where `generate_facility_keys` wrote each PEM file."""

    ed25519_private: Path
    ed25519_public: Path
    rsa_private: Path
    rsa_public: Path
    rsa_thumbprint: str


@dataclass(frozen=True)
class OpenResult:
    """What `open_delivery` produced."""

    out_path: Path
    vertices: int
    triangles: int
    consumer_id: str
    package_uuid: str


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` exclusively with `mode` (0600 for private keys) and write `data`."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise errors.KeyFileExists(f"{path} already exists; refusing to overwrite") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _private_pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: ed25519.Ed25519PublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_facility_keys(directory: str | os.PathLike[str]) -> FacilityKeyPaths:
    """Create the facility's Ed25519 (proof of possession) and RSA-3072 (wrapping) keys.

    Private keys are written with mode 0600 via O_EXCL (never overwriting),
    public keys alongside with 0644.
    """
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    paths = FacilityKeyPaths(
        base / "facility-ed25519.pem",
        base / "facility-ed25519.pub.pem",
        base / "facility-rsa.pem",
        base / "facility-rsa.pub.pem",
        "",
    )
    for p in (paths.ed25519_private, paths.ed25519_public, paths.rsa_private, paths.rsa_public):
        if p.exists():
            raise errors.KeyFileExists(f"{p} already exists; refusing to overwrite")
    ed = ed25519.Ed25519PrivateKey.generate()
    rs = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    _write_new(paths.ed25519_private, _private_pem(ed), 0o600)
    _write_new(paths.ed25519_public, _public_pem(ed.public_key()), 0o644)
    _write_new(paths.rsa_private, _private_pem(rs), 0o600)
    _write_new(paths.rsa_public, _public_pem(rs.public_key()), 0o644)
    return FacilityKeyPaths(
        paths.ed25519_private,
        paths.ed25519_public,
        paths.rsa_private,
        paths.rsa_public,
        key_thumbprint(rs.public_key()),
    )


def load_rsa_private_key(path: str | os.PathLike[str]) -> rsa.RSAPrivateKey:
    """Load an unencrypted PEM RSA private key, or raise `BadKeyFile`."""
    key = _read_private_key(path, "an RSA")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _wrong_kind(path, key, "an RSA")
    return key


def load_ed25519_private_key(path: str | os.PathLike[str]) -> ed25519.Ed25519PrivateKey:
    """Load the facility's unencrypted PEM Ed25519 (proof) key, or raise `BadKeyFile`."""
    key = _read_private_key(path, "an Ed25519")
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise _wrong_kind(path, key, "an Ed25519")
    return key


def _read_private_key(path: str | os.PathLike[str], label: str) -> object:
    try:
        return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise errors.BadKeyFile(f"cannot read {label} private key from {path}") from exc


def _wrong_kind(path: str | os.PathLike[str], key: object, label: str) -> errors.BadKeyFile:
    return errors.BadKeyFile(f"{path} holds a {type(key).__name__}, not {label} key")


Writer = Callable[[IO[bytes]], None]


def _output_writer(suffix: str, opened: OpenedDesign) -> tuple[int, int, Writer]:
    """Counts of the decrypted mesh and the function writing it as .stl or .3mf."""
    vertices, faces, unit = extract_mesh(opened.model_xml)
    if suffix == ".stl":  # STL has no unit field: write millimetres, the usual convention
        mm = vertices * MILLIMETRES_PER_UNIT.get(unit, 1.0)
        return len(vertices), len(faces), partial(write_binary_stl, vertices=mm, faces=faces)
    root_xml = mesh_to_model_xml(
        vertices, faces, unit=unit, metadata=extract_metadata(opened.model_xml), root=True
    )
    return len(vertices), len(faces), partial(write_plain_3mf, root_model_xml=root_xml)


def open_delivery(
    file: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    consumer_id: str | None = None,
) -> OpenResult:
    """Decrypt a downloaded design copy with the facility key; write plain 3MF or STL.

    The output is written to a temporary file and renamed on success, so a
    failure (wrong key, tampered file, bad suffix) never leaves a partial file.
    """
    target = Path(out_path)
    if target.suffix.lower() not in (".3mf", ".stl"):
        raise errors.UnsupportedOutput(f"output must end in .3mf or .stl: {target.name}")
    opened = open_secure_3mf(file, load_rsa_private_key(key_path), consumer_id=consumer_id)
    n_vertices, n_faces, write = _output_writer(target.suffix.lower(), opened)
    write_atomically(target, write)
    return OpenResult(target, n_vertices, n_faces, opened.consumer_id, opened.package_uuid)
