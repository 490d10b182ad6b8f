"""Signers: the one thing that holds a private key (sigstore/tuf style).

Token code never sees a private key; it hands the canonical signing input to a
`Signer` together with the instant until which the signature must stay
verifiable, and gets the raw Ed25519 signature back. `Ed25519Signer` keeps a
key in memory (tests, CLI, bureaus signing proofs); the database-backed signer
in `licensing.tokens.signing` also records how long its key must stay published.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from licensing.tokens.thumbprint import key_thumbprint


class Signer(Protocol):
    """Signs bytes with an Ed25519 key known to verifiers by `kid`."""

    @property
    def kid(self) -> str:
        """The key id: the RFC 7638 thumbprint of the public key."""
        ...

    def sign(self, message: bytes, *, valid_until: datetime) -> bytes:
        """The Ed25519 signature of `message`, which verifiers accept until `valid_until`."""
        ...


class Ed25519Signer:
    """An in-memory Ed25519 signer; its kid is the public key's thumbprint."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self._kid = key_thumbprint(private_key.public_key())

    @property
    def kid(self) -> str:
        """The RFC 7638 thumbprint of the public key."""
        return self._kid

    def sign(self, message: bytes, *, valid_until: datetime) -> bytes:
        """Sign `message`; an in-memory key has nothing to record about `valid_until`."""
        return self._key.sign(message)


def new_ed25519_key() -> tuple[Ed25519PrivateKey, bytes]:
    """A fresh Ed25519 private key and its raw 32-byte seed (the form the key ring wraps)."""
    private_key = Ed25519PrivateKey.generate()
    seed = private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return private_key, seed
