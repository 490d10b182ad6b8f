"""RFC 7638 JWK thumbprints and JWK export of public keys.

A thumbprint is the unpadded base64url SHA-256 of the JSON object made of the
key type's *required* public members only, in lexicographic order and without
whitespace: ``crv kty x`` for OKP (RFC 8037 §2), ``e kty n`` for RSA.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers

from licensing.tokens._jose import b64url, b64url_decode

PublicKey = Ed25519PublicKey | RSAPublicKey

_REQUIRED: dict[str, tuple[str, ...]] = {"OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of an OKP or RSA JWK (extra members ignored)."""
    members = _REQUIRED.get(str(jwk.get("kty")))
    if members is None:
        raise ValueError("unsupported JWK key type")
    canonical = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"JWK member {name} missing")
        canonical[name] = value
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b64url(hashlib.sha256(text.encode("utf-8")).digest())


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The public JWK of an Ed25519 or RSA public key (no ``kid``, no private part)."""
    if isinstance(key, Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    if isinstance(key, RSAPublicKey):
        numbers = key.public_numbers()
        return {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}
    raise TypeError("only Ed25519 and RSA public keys are supported")


def key_thumbprint(key: PublicKey) -> str:
    """The RFC 7638 thumbprint of a public key."""
    return jwk_thumbprint(public_jwk(key))


def ed25519_from_jwk(jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    """The Ed25519 public key of a JWK; refuses other curves and private JWKs."""
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError("not an Ed25519 JWK")
    if "d" in jwk:
        raise ValueError("JWK carries private key material")
    x = jwk.get("x")
    if not isinstance(x, str):
        raise ValueError("JWK member x missing")
    raw = b64url_decode(x)
    if len(raw) != 32:
        raise ValueError("Ed25519 public key must be 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def rsa_from_jwk(jwk: Mapping[str, Any]) -> RSAPublicKey:
    """The RSA public key of a JWK; refuses private JWKs."""
    if jwk.get("kty") != "RSA":
        raise ValueError("not an RSA JWK")
    if "d" in jwk:
        raise ValueError("JWK carries private key material")
    n, e = jwk.get("n"), jwk.get("e")
    if not isinstance(n, str) or not isinstance(e, str):
        raise ValueError("JWK members n and e required")
    numbers = RSAPublicNumbers(_int(e), _int(n))
    return numbers.public_key()


def _uint(value: int) -> str:
    """base64url of the minimal big-endian encoding of a positive integer."""
    return b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def _int(text: str) -> int:
    """A positive integer from its base64url big-endian encoding."""
    return int.from_bytes(b64url_decode(text), "big")
