"""Offline verification for bureaus: a licence against a saved JWKS.

This is what ``partvault licence verify TOKEN --jwks FILE [--crl FILE]`` calls.
Only Ed25519 keys whose ``kid`` equals their RFC 7638 thumbprint are used; other
key types are skipped (RFC 7517 §5); a JWKS carrying private key material is
refused. Without `issuer`/`audience` the result only proves "signed by a key
in this JWKS, currently valid, bound to key ``facility_jkt``".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from inventory.errors import BadRequest
from licensing.tokens._jose import ALG
from licensing.tokens.licence import DEFAULT_LEEWAY, LICENCE, LicenceClaims, verify_licence
from licensing.tokens.revocation import verify_revocation_list
from licensing.tokens.thumbprint import ed25519_from_jwk, jwk_thumbprint

_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def keys_from_jwks(jwks_json: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """kid → Ed25519 public key for every usable signing key of a JWK Set."""
    entries = jwks_json.get("keys") if isinstance(jwks_json, Mapping) else None
    if not isinstance(entries, list):
        raise BadRequest("JWKS must be an object with a keys list", code="jwks-invalid")
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in entries:
        if not isinstance(jwk, dict):
            raise BadRequest("JWKS entries must be objects", code="jwks-invalid")
        if _PRIVATE_MEMBERS & jwk.keys():
            raise BadRequest("JWKS contains private key material", code="jwks-invalid")
        key = _usable_key(jwk)
        if key is not None:
            keys[jwk["kid"]] = key
    if not keys:
        raise BadRequest("JWKS holds no usable Ed25519 signing key", code="jwks-invalid")
    return keys


def _usable_key(jwk: dict[str, Any]) -> Ed25519PublicKey | None:
    """The key of an Ed25519 signing JWK whose kid is its own thumbprint, else None."""
    if jwk.get("alg", ALG) != ALG or jwk.get("use", "sig") != "sig":
        return None
    try:
        key = ed25519_from_jwk(jwk)
        return key if jwk.get("kid") == jwk_thumbprint(jwk) else None
    except ValueError:
        return None


def verify_offline(
    token: str,
    jwks_json: Mapping[str, Any],
    *,
    issuer: str | None = None,
    audience: str | None = None,
    now: datetime,
    leeway: timedelta = DEFAULT_LEEWAY,
    revocation_list: str | None = None,
) -> LicenceClaims:
    """Verify a licence with a saved JWKS (and, if given, a revocation list)."""
    keys = keys_from_jwks(jwks_json)
    claims = verify_licence(
        token, key_lookup=keys.get, issuer=issuer, audience=audience, now=now, leeway=leeway
    )
    if revocation_list is not None:
        crl = verify_revocation_list(
            revocation_list, key_lookup=keys.get, issuer=claims.issuer, now=now, leeway=leeway
        )
        if crl.is_revoked(claims.jti):
            raise LICENCE.refuse("revoked", "revoked")
    return claims
