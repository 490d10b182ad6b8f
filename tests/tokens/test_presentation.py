"""Redeem check end to end: stored signing key, licence, proof, database replay cache."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import Session

from licensing.tokens.dpop import make_proof
from licensing.tokens.licence import issue_licence
from licensing.tokens.presentation import verify_presentation
from licensing.tokens.replay import DbReplayGuard
from licensing.tokens.signing import current_signer, ensure_signing_key, published_key
from licensing.tokens.thumbprint import key_thumbprint

HTU = "https://api.partvault.example/v1/licences/lic_0123456789/redeem"


@pytest.fixture
def present(facility_key: Ed25519PrivateKey, tools: SimpleNamespace) -> Any:
    def run(session: Session, licence: str, proof: str, **overrides: Any) -> Any:
        options = {
            "key_lookup": lambda kid: published_key(session, kid, tools.NOW),
            "issuer": tools.ISSUER,
            "audience": tools.AUDIENCE,
            "facility_id": "fac_0123",
            "facility_jkt": key_thumbprint(facility_key.public_key()),
            "htm": "POST",
            "htu": HTU,
            "replay_guard": DbReplayGuard(session),
            "now": tools.NOW,
        }
        return verify_presentation(licence, proof, **{**options, **overrides})

    return run


@pytest.fixture
def stored_licence(
    engine: Engine, keyring: Any, licence_params: dict[str, Any], tools: SimpleNamespace
) -> str:
    with Session(engine) as session:
        ensure_signing_key(session, keyring, now=tools.NOW)
        token = issue_licence(current_signer(session, keyring), **licence_params)
        session.commit()
    return token


def test_redeem_check_end_to_end(
    engine: Engine,
    stored_licence: str,
    present: Any,
    facility_key: Ed25519PrivateKey,
    attacker_key: Ed25519PrivateKey,
    tools: SimpleNamespace,
) -> None:
    proof = make_proof(
        facility_key, htm="POST", htu=HTU, access_token=stored_licence, now=tools.NOW
    )
    with Session(engine) as session:
        assert present(session, stored_licence, proof).prints == 3
        session.commit()
    with Session(engine) as session:
        tools.expect(lambda: present(session, stored_licence, proof), 401, "dpop-replayed")
        other_key = make_proof(
            attacker_key, htm="POST", htu=HTU, access_token=stored_licence, now=tools.NOW
        )
        tools.expect(lambda: present(session, stored_licence, other_key), 401, "dpop-key-mismatch")
        fresh = make_proof(
            facility_key, htm="POST", htu=HTU, access_token=stored_licence, now=tools.NOW
        )
        tools.expect(
            lambda: present(session, stored_licence, fresh, facility_id="fac_other"),
            403,
            "licence-facility-mismatch",
        )
        tools.expect(
            lambda: present(
                session,
                stored_licence,
                fresh,
                facility_jkt=key_thumbprint(attacker_key.public_key()),
            ),
            403,
            "licence-key-mismatch",
        )
        assert present(session, stored_licence, fresh).jti == "lic_0123456789"
