"""The signed revocation list (CRL) of licences, for bureaus verifying offline.

A JWS with header ``{"alg": "EdDSA", "kid": …, "typ": "pv-crl+jwt"}`` and claims
``iss iat exp`` plus ``revoked``: a list of ``{"jti", "revoked_at", "reason"}``
sorted by ``jti``. ``exp`` is the next update: a stale list is refused (403
``crl-expired``) so that a bureau cannot keep trusting an old one. It is
signed by the current licence signing key and verified against the JWKS.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

import msgspec

from licensing.tokens._jose import (
    ALG,
    Kind,
    canonical_json,
    check_lifetime,
    decode_claims,
    encode_compact,
    from_timestamp,
    read_header,
    timestamp,
    verify_signature,
)
from licensing.tokens.licence import DEFAULT_LEEWAY, KeyLookup
from licensing.tokens.signer import Signer

CRL = Kind(typ="pv-crl+jwt", prefix="crl", label="revocation list")
DEFAULT_TTL = timedelta(hours=1)
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


@dataclass(frozen=True)
class Revocation:
    """One revoked licence."""

    jti: str
    revoked_at: datetime
    reason: str


@dataclass(frozen=True)
class RevocationList:
    """A verified revocation list."""

    issuer: str
    issued_at: datetime
    next_update: datetime
    entries: tuple[Revocation, ...]

    def is_revoked(self, jti: str) -> bool:
        """True when the licence `jti` is on the list."""
        return any(entry.jti == jti for entry in self.entries)


class _Entry(msgspec.Struct, frozen=True):
    jti: Text
    revoked_at: int
    reason: Annotated[str, msgspec.Meta(max_length=256)]


class _CrlPayload(msgspec.Struct, frozen=True):
    iss: Text
    iat: int
    exp: int
    revoked: list[_Entry]


def sign_revocation_list(
    signer: Signer,
    revoked: Iterable[Revocation | tuple[str, datetime, str]],
    *,
    issuer: str,
    now: datetime,
    ttl: timedelta = DEFAULT_TTL,
) -> str:
    """Sign the list of revoked licences, valid until ``now + ttl`` (the next update)."""
    entries = sorted((_as_revocation(item) for item in revoked), key=lambda e: e.jti)
    next_update = now + ttl
    payload = {
        "iss": issuer,
        "iat": timestamp(now),
        "exp": timestamp(next_update),
        "revoked": [
            {"jti": e.jti, "revoked_at": timestamp(e.revoked_at), "reason": e.reason}
            for e in entries
        ],
    }
    header = {"alg": ALG, "kid": signer.kid, "typ": CRL.typ}
    return encode_compact(
        header, canonical_json(payload), lambda data: signer.sign(data, valid_until=next_update)
    )


def _as_revocation(item: Revocation | tuple[str, datetime, str]) -> Revocation:
    """A `Revocation` from itself or a ``(jti, revoked_at, reason)`` tuple."""
    return item if isinstance(item, Revocation) else Revocation(*item)


def verify_revocation_list(
    token: str,
    *,
    key_lookup: KeyLookup,
    issuer: str | None,
    now: datetime,
    leeway: timedelta = DEFAULT_LEEWAY,
) -> RevocationList:
    """Verify a revocation list (same header rules as licences) and return it."""
    header = read_header(token, CRL)
    kid = header.get("kid")
    if not isinstance(kid, str) or (key := key_lookup(kid)) is None:
        raise CRL.fail("kid-unknown", "not signed by a known partvault key")
    claims = decode_claims(verify_signature(token, key, CRL), _CrlPayload, CRL)
    if issuer is not None and claims.iss != issuer:
        raise CRL.refuse("issuer-mismatch", "issued by someone else")
    check_lifetime(iat=claims.iat, nbf=None, exp=claims.exp, now=now, leeway=leeway, kind=CRL)
    return RevocationList(
        issuer=claims.iss,
        issued_at=from_timestamp(claims.iat),
        next_update=from_timestamp(claims.exp),
        entries=tuple(
            Revocation(e.jti, from_timestamp(e.revoked_at), e.reason) for e in claims.revoked
        ),
    )
