"""Proof of possession (RFC 9449 style) for facility requests.

A proof is a JWS with header ``{"alg": "EdDSA", "typ": "dpop+jwt", "jwk": <the
facility's public Ed25519 JWK>}`` and claims ``jti htm htu iat ath``. It proves
that the caller holds the private key whose thumbprint the licence binds
(``cnf.jkt``) and that the facility registered. Every failure is `Unauthorized`
(401) with a ``dpop-…`` code.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Annotated
from urllib.parse import SplitResult, urlsplit

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from inventory.errors import Unauthorized
from licensing.tokens._jose import (
    ALG,
    Kind,
    b64url,
    canonical_json,
    decode_claims,
    encode_compact,
    from_timestamp,
    header_segment,
    timestamp,
    verify_signature,
    vet_header,
)
from licensing.tokens.replay import ReplayGuard
from licensing.tokens.thumbprint import ed25519_from_jwk, jwk_thumbprint, public_jwk

DPOP = Kind(typ="dpop+jwt", prefix="dpop", label="proof of possession")
DEFAULT_MAX_AGE = 60
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT = re.compile(r"%[0-9a-fA-F]{2}")


class _ProofPayload(msgspec.Struct, frozen=True):
    jti: Annotated[str, msgspec.Meta(min_length=16, max_length=256)]
    htm: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
    htu: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    iat: int
    ath: Annotated[str, msgspec.Meta(min_length=43, max_length=43)]


def access_token_hash(access_token: str) -> str:
    """``ath``: base64url SHA-256 of the access token (ASCII) (the licence)."""
    return b64url(hashlib.sha256(access_token.encode("utf-8")).digest())


def make_proof(
    private_key: Ed25519PrivateKey,
    *,
    htm: str,
    htu: str,
    access_token: str,
    now: datetime,
    jti: str | None = None,
) -> str:
    """A proof for one request (query and fragment of `htu` are dropped)."""
    header = {"alg": ALG, "typ": DPOP.typ, "jwk": public_jwk(private_key.public_key())}
    claims = {
        "jti": jti or secrets.token_urlsafe(24),
        "htm": htm,
        "htu": urlsplit(htu)._replace(query="", fragment="").geturl(),
        "iat": timestamp(now),
        "ath": access_token_hash(access_token),
    }
    return encode_compact(header, canonical_json(claims), private_key.sign)


@dataclass(frozen=True)
class CheckedProof:
    """A proof checked as far as it can be on its own: header, key, signature,
    request binding and age. What is left needs the database: the facility's
    registered key and the replay cache (`finish_proof`).

    The refusals found before the key comparison (`early`) and after it
    (`late`) are kept apart, so that a proof checked ahead is refused exactly
    as `verify_proof` refuses it.
    """

    proof: str
    jkt: str  # the thumbprint of the header's key ("" when `early` is set)
    jti: str
    expires: datetime
    early: Unauthorized | None = None
    late: Unauthorized | None = None


def verify_proof(
    proof: str,
    *,
    htm: str,
    htu: str,
    access_token: str,
    expected_jkt: str,
    replay_guard: ReplayGuard,
    now: datetime,
    max_age: int = DEFAULT_MAX_AGE,
) -> None:
    """Verify a proof for this request and this licence, then remember its ``jti``.

    `expected_jkt` is the thumbprint both the licence's ``cnf.jkt`` and the
    facility's registered key must have (the caller checks they agree). The
    replay guard is consulted last, so refused proofs never fill the cache.
    """
    checked = check_proof(
        proof, htm=htm, htu=htu, access_token=access_token, now=now, max_age=max_age
    )
    finish_proof(checked, expected_jkt=expected_jkt, replay_guard=replay_guard)


def check_proof(
    proof: str,
    *,
    htm: str,
    htu: str,
    access_token: str,
    now: datetime,
    max_age: int = DEFAULT_MAX_AGE,
) -> CheckedProof:
    """Every check of `verify_proof` that needs no database, refusals recorded, not raised.

    Pure CPU (the signature check runs without the GIL), so a server can run it
    on arrival, before the request waits for its transaction.
    """
    try:
        key, jkt = _header_key(header_segment(proof, DPOP))
    except Unauthorized as exc:
        return CheckedProof(proof, jkt="", jti="", expires=now, early=exc)
    try:
        claims = decode_claims(verify_signature(proof, key, DPOP), _ProofPayload, DPOP)
        _check_request(claims, htm=htm, htu=htu, access_token=access_token)
        _check_fresh(claims.iat, now, max_age)
    except Unauthorized as exc:
        return CheckedProof(proof, jkt=jkt, jti="", expires=now, late=exc)
    expires = from_timestamp(claims.iat) + timedelta(seconds=max_age)
    return CheckedProof(proof, jkt=jkt, jti=claims.jti, expires=expires)


def finish_proof(checked: CheckedProof, *, expected_jkt: str, replay_guard: ReplayGuard) -> None:
    """Refuse a checked proof as `verify_proof` would, or remember its ``jti``."""
    if checked.early is not None:
        raise checked.early
    if not hmac.compare_digest(checked.jkt.encode(), expected_jkt.encode()):
        raise DPOP.fail("key-mismatch", "signed by a key other than the licensed facility's")
    if checked.late is not None:
        raise checked.late
    replay_guard.remember(f"{expected_jkt}\x00{checked.jti}", checked.expires)


@lru_cache(maxsize=256)
def _header_key(segment: str) -> tuple[Ed25519PublicKey, str]:
    """The public key in a proof's header segment, and its thumbprint.

    Remembered by the segment's text (a refusal is not): a bureau signs every
    proof with the same header, and parsing it and loading its key took as much
    of the GIL as the rest of the proof's check.
    """
    jwk = vet_header(segment, DPOP).get("jwk")
    if not isinstance(jwk, dict):
        raise DPOP.fail("jwk-invalid", "header must carry the public jwk")
    try:
        return ed25519_from_jwk(jwk), jwk_thumbprint(jwk)
    except ValueError as exc:
        raise DPOP.fail("jwk-invalid", "header jwk is not a public Ed25519 key") from exc


def _check_request(claims: _ProofPayload, *, htm: str, htu: str, access_token: str) -> None:
    """Method, URI and access-token hash must match the request being made."""
    if claims.htm != htm:
        raise DPOP.fail("htm-mismatch", "made for another HTTP method")
    if _normal_uri(claims.htu) != _normal_uri(htu):
        raise DPOP.fail("htu-mismatch", "made for another URI")
    if not hmac.compare_digest(claims.ath.encode(), access_token_hash(access_token).encode()):
        raise DPOP.fail("ath-mismatch", "made for another licence")


def _check_fresh(iat: int, now: datetime, max_age: int) -> None:
    """``iat`` within ± `max_age` seconds of `now`."""
    age = now.timestamp() - iat
    if age > max_age:
        raise DPOP.fail("stale", "too old")
    if age < -max_age:
        raise DPOP.fail("issued-in-future", "issued in the future")


@lru_cache(maxsize=1024)
def _normal_uri(uri: str) -> tuple[str, str, int | None, str] | None:
    """Scheme, host, port and path after RFC 3986 §6.2.2/6.2.3 normalisation.

    Query and fragment are ignored; a URI with userinfo or a non-HTTP scheme
    normalises to None (never equal to a request URI). Remembered: a bureau
    redeems print by print on the same few URIs.
    """
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or "@" in parts.netloc or not parts.hostname:
        return None
    port = None if port == _DEFAULT_PORTS[scheme] else port
    return scheme, parts.hostname.lower(), port, _normal_path(parts)


def _normal_path(parts: SplitResult) -> str:
    """The path with upper-case percent escapes and "/" for an empty path."""
    path = _PERCENT.sub(lambda match: match.group(0).upper(), parts.path)
    return path or "/"
