"""A facility presenting a licence with its proof of possession (the redeem check).

One call for the route: verify the licence, check that it names this facility
and this facility's registered key, then verify the proof made with that key.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta

from licensing.tokens.dpop import DEFAULT_MAX_AGE, verify_proof
from licensing.tokens.licence import (
    DEFAULT_LEEWAY,
    LICENCE,
    KeyLookup,
    LicenceClaims,
    verify_licence,
)
from licensing.tokens.replay import ReplayGuard


def verify_presentation(
    licence: str,
    proof: str,
    *,
    key_lookup: KeyLookup,
    issuer: str,
    audience: str,
    facility_id: str,
    facility_jkt: str,
    htm: str,
    htu: str,
    replay_guard: ReplayGuard,
    now: datetime,
    leeway: timedelta = DEFAULT_LEEWAY,
    max_age: int = DEFAULT_MAX_AGE,
) -> LicenceClaims:
    """The licence's claims when the authenticated facility may use it for this request.

    `facility_id` and `facility_jkt` come from the facility's API token and its
    registered Ed25519 key. A licence for another facility or another key is
    refused (403 ``licence-facility-mismatch`` / ``licence-key-mismatch``); a
    proof by any other key is refused (401 ``dpop-key-mismatch``).
    """
    claims = verify_licence(
        licence, key_lookup=key_lookup, issuer=issuer, audience=audience, now=now, leeway=leeway
    )
    if claims.facility_id != facility_id:
        raise LICENCE.refuse("facility-mismatch", "issued to another facility")
    if not hmac.compare_digest(claims.facility_jkt.encode(), facility_jkt.encode()):
        raise LICENCE.refuse("key-mismatch", "bound to a key the facility no longer has")
    verify_proof(
        proof,
        htm=htm,
        htu=htu,
        access_token=licence,
        expected_jkt=facility_jkt,
        replay_guard=replay_guard,
        now=now,
        max_age=max_age,
    )
    return claims
