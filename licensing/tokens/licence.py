"""Print licences: EdDSA-signed JWTs naming exactly what a facility may print.

Header ``{"alg": "EdDSA", "kid": <signing key thumbprint>, "typ": "pv-licence+jwt"}``.
Claims: ``iss aud sub jti iat nbf exp`` plus ``brand part revision
design_sha256 prints profile_hash`` and ``cnf.jkt`` (RFC 7638 thumbprint of the
facility's Ed25519 key, RFC 7800). See docs/licences.md.

Verification refuses with `Unauthorized` (401) anything that is not an
authentic, well-formed licence, and with `Forbidden` (403) an authentic licence
that is not valid here or now (issuer, audience, lifetime).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Annotated

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from inventory.errors import Invalid
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
from licensing.tokens.signer import Signer

LICENCE = Kind(typ="pv-licence+jwt", prefix="licence", label="licence")
DEFAULT_LEEWAY = timedelta(seconds=30)

KeyLookup = Callable[[str], Ed25519PublicKey | None]

_SHA256_HEX = r"^[0-9a-f]{64}$"
_JKT = r"^[A-Za-z0-9_-]{43}$"
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class _Confirmation(msgspec.Struct, frozen=True):
    jkt: Annotated[str, msgspec.Meta(pattern=_JKT)]


class _LicencePayload(msgspec.Struct, frozen=True):
    """The signed claims as they travel (checked types, unknown claims ignored)."""

    iss: Text
    aud: Text | list[Text]
    sub: Text
    jti: Text
    iat: int
    nbf: int
    exp: int
    brand: Text
    part: Text
    revision: Text
    design_sha256: Annotated[str, msgspec.Meta(pattern=_SHA256_HEX)]
    prints: Annotated[int, msgspec.Meta(ge=1)]
    profile_hash: Text
    cnf: _Confirmation


@dataclass(frozen=True)
class LicenceClaims:
    """A verified licence."""

    kid: str
    issuer: str
    audience: tuple[str, ...]
    facility_id: str
    jti: str
    brand_id: str
    part_id: str
    revision_id: str
    design_sha256: str
    prints: int
    print_profile_hash: str
    facility_jkt: str
    issued_at: datetime
    not_before: datetime
    expires_at: datetime


def issue_licence(
    signer: Signer,
    *,
    issuer: str,
    audience: str | Sequence[str],
    subject: str,
    jti: str,
    brand_id: str,
    part_id: str,
    revision_id: str,
    design_sha256: str,
    prints: int,
    print_profile_hash: str,
    facility_jkt: str,
    not_before: datetime,
    expires_at: datetime,
    now: datetime,
) -> str:
    """Sign a licence for `prints` prints of one revision, bound to the facility key.

    Times are truncated to whole seconds. Raises `Invalid` for impossible
    parameters (no prints, empty lifetime, malformed hash or thumbprint).
    """
    payload = {
        "iss": issuer,
        "aud": audience if isinstance(audience, str) else list(audience),
        "sub": subject,
        "jti": jti,
        "iat": timestamp(now),
        "nbf": timestamp(not_before),
        "exp": timestamp(expires_at),
        "brand": brand_id,
        "part": part_id,
        "revision": revision_id,
        "design_sha256": design_sha256,
        "prints": prints,
        "profile_hash": print_profile_hash,
        "cnf": {"jkt": facility_jkt},
    }
    _check_issuable(payload)
    header = {"alg": ALG, "kid": signer.kid, "typ": LICENCE.typ}
    return encode_compact(
        header, canonical_json(payload), lambda data: signer.sign(data, valid_until=expires_at)
    )


def _check_issuable(payload: Mapping[str, object]) -> None:
    """Refuse to sign what verification would refuse."""
    try:
        claims = msgspec.convert(payload, _LicencePayload)
    except msgspec.ValidationError as exc:
        raise Invalid(f"licence parameters invalid: {exc}", code="licence-params-invalid") from exc
    if claims.exp <= claims.nbf:
        raise Invalid("licence must expire after it becomes valid", code="licence-params-invalid")
    if isinstance(claims.aud, list) and not claims.aud:
        raise Invalid("licence needs an audience", code="licence-params-invalid")


def verify_licence(
    token: str,
    *,
    key_lookup: KeyLookup,
    issuer: str | None,
    audience: str | None,
    now: datetime,
    leeway: timedelta = DEFAULT_LEEWAY,
) -> LicenceClaims:
    """Verify a licence and return its claims, or raise 401/403 with a precise code.

    Only ``alg: EdDSA`` and ``typ: pv-licence+jwt`` pass; any ``crit`` fails;
    ``jku``/``x5u``/``jwk``/``x5c`` are never read. ``kid`` is handed as an
    opaque string to `key_lookup`. `issuer`/`audience` None skips that check
    (offline verification without a configured issuer only).
    """
    header = read_header(token, LICENCE)
    kid = header.get("kid")
    if not isinstance(kid, str) or (key := key_lookup(kid)) is None:
        raise LICENCE.fail("kid-unknown", "not signed by a known partvault key")
    claims = _signed_claims(token, key.public_bytes_raw())
    _check_context(claims, issuer=issuer, audience=audience)
    check_lifetime(
        iat=claims.iat, nbf=claims.nbf, exp=claims.exp, now=now, leeway=leeway, kind=LICENCE
    )
    return _result(kid, claims)


@lru_cache(maxsize=1024)
def _signed_claims(token: str, public_key: bytes) -> _LicencePayload:
    """The claims of `token`, whose signature the Ed25519 `public_key` verifies.

    Remembered by token and key (a refusal is not): a facility redeems one
    licence print after print, and the signature check (0.1 ms) was repeated
    in every transaction, on the thread that commits them all. Issuer,
    audience and lifetime are still checked at each use.
    """
    key = Ed25519PublicKey.from_public_bytes(public_key)
    return decode_claims(verify_signature(token, key, LICENCE), _LicencePayload, LICENCE)


def _check_context(claims: _LicencePayload, *, issuer: str | None, audience: str | None) -> None:
    """Exact issuer; our audience among the token's audiences."""
    if issuer is not None and claims.iss != issuer:
        raise LICENCE.refuse("issuer-mismatch", "issued by someone else")
    if audience is not None and audience not in _audiences(claims):
        raise LICENCE.refuse("audience-mismatch", "not meant for this audience")


def _audiences(claims: _LicencePayload) -> tuple[str, ...]:
    """The ``aud`` claim as a tuple."""
    return (claims.aud,) if isinstance(claims.aud, str) else tuple(claims.aud)


def _result(kid: str, claims: _LicencePayload) -> LicenceClaims:
    """The public result type of a verified payload."""
    return LicenceClaims(
        kid=kid,
        issuer=claims.iss,
        audience=_audiences(claims),
        facility_id=claims.sub,
        jti=claims.jti,
        brand_id=claims.brand,
        part_id=claims.part,
        revision_id=claims.revision,
        design_sha256=claims.design_sha256,
        prints=claims.prints,
        print_profile_hash=claims.profile_hash,
        facility_jkt=claims.cnf.jkt,
        issued_at=from_timestamp(claims.iat),
        not_before=from_timestamp(claims.nbf),
        expires_at=from_timestamp(claims.exp),
    )
