"""A signed print profile: the JSON a bureau receives with its design copy.

A compact JWS (``typ: pv-profile+jwt``, EdDSA, the licence signing key's
``kid``) over the profile settings, their hash, the licence and the print
serial, so a bureau can check with the JWKS that the parameters it prints with
are the brand's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from licensing.tokens._jose import canonical_json, encode_compact, timestamp
from licensing.tokens.signer import Signer

PROFILE_TYP = "pv-profile+jwt"


def sign_profile(
    signer: Signer,
    *,
    issuer: str,
    profile: dict[str, Any],
    profile_hash: str,
    licence_jti: str,
    serial: str,
    now: datetime,
    valid_until: datetime,
) -> str:
    payload = {
        "iss": issuer,
        "iat": timestamp(now),
        "licence": licence_jti,
        "serial": serial,
        "profile_hash": profile_hash,
        "profile": profile,
    }
    header = {"alg": "EdDSA", "kid": signer.kid, "typ": PROFILE_TYP}
    return encode_compact(
        header, canonical_json(payload), lambda data: signer.sign(data, valid_until=valid_until)
    )
