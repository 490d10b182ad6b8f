"""Shared fixtures for token tests: keys, a fixed clock, a forger, a test key ring."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from inventory.errors import PartvaultError
from licensing.tokens.licence import issue_licence
from licensing.tokens.signer import Ed25519Signer
from licensing.tokens.thumbprint import key_thumbprint

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
ISSUER = "https://partvault.example"
AUDIENCE = "partvault-redeem"
DESIGN_SHA = "ab" * 32
PROFILE_HASH = "cd" * 32


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TestKeyRing:
    """A minimal KeyRing: AES-256-GCM under a fixed key, context as AAD."""

    __test__ = False

    def __init__(self) -> None:
        self._aead = AESGCM(bytes(range(32)))
        self.contexts: list[bytes] = []

    def wrap(self, secret: bytes, context: bytes) -> bytes:
        self.contexts.append(context)
        nonce = os.urandom(12)
        return b"v1" + nonce + self._aead.encrypt(nonce, secret, context)

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        return self._aead.decrypt(blob[2:14], blob[14:], context)

    def rotate(self) -> str:
        return "v1"

    def current_version(self) -> str:
        return "v1"

    def version_of(self, blob: bytes) -> str:
        return blob[:2].decode()


@pytest.fixture
def keyring() -> TestKeyRing:
    return TestKeyRing()


@pytest.fixture(scope="session")
def issuer_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def signer(issuer_key: Ed25519PrivateKey) -> Ed25519Signer:
    return Ed25519Signer(issuer_key)


@pytest.fixture(scope="session")
def facility_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def attacker_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def licence_params(facility_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Keyword arguments of a valid licence (everything but the signer)."""
    return {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "subject": "fac_0123",
        "jti": "lic_0123456789",
        "brand_id": "brand_1",
        "part_id": "part_1",
        "revision_id": "rev_1",
        "design_sha256": DESIGN_SHA,
        "prints": 3,
        "print_profile_hash": PROFILE_HASH,
        "facility_jkt": key_thumbprint(facility_key.public_key()),
        "not_before": NOW - timedelta(minutes=1),
        "expires_at": NOW + timedelta(hours=2),
        "now": NOW,
    }


@pytest.fixture
def licence(signer: Ed25519Signer, licence_params: dict[str, Any]) -> str:
    return issue_licence(signer, **licence_params)


def forge(
    header: dict[str, Any], payload: dict[str, Any] | bytes, sign: Callable[[bytes], bytes]
) -> str:
    """A compact JWS with arbitrary header and payload, signed by `sign`."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(body)}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def split(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload of a compact JWS, unverified."""
    head, body, _ = token.split(".")
    return json.loads(unb64(head)), json.loads(unb64(body))


def expect(call: Callable[[], object], status: int, code: str) -> PartvaultError:
    """Run `call`, assert it raised a PartvaultError with `status` and `code`."""
    with pytest.raises(PartvaultError) as info:
        call()
    assert (info.value.status, info.value.code) == (status, code), info.value.detail
    return info.value


@pytest.fixture
def tools() -> SimpleNamespace:
    """The helpers above, reachable from test modules (importlib mode)."""
    return SimpleNamespace(
        NOW=NOW,
        ISSUER=ISSUER,
        AUDIENCE=AUDIENCE,
        b64=b64,
        unb64=unb64,
        forge=forge,
        split=split,
        expect=expect,
    )
