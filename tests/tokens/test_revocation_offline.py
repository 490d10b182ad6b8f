"""The signed revocation list and the bureaus' offline verifier."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from licensing.tokens.licence import issue_licence
from licensing.tokens.offline import keys_from_jwks, verify_offline
from licensing.tokens.revocation import Revocation, sign_revocation_list, verify_revocation_list
from licensing.tokens.signer import Ed25519Signer
from licensing.tokens.thumbprint import key_thumbprint, public_jwk


@pytest.fixture
def published(issuer_key: Ed25519PrivateKey, signer: Ed25519Signer) -> dict[str, Any]:
    """The JWKS a bureau saved: our key as /.well-known/jwks.json serves it."""
    jwk = {**public_jwk(issuer_key.public_key()), "kid": signer.kid, "alg": "EdDSA", "use": "sig"}
    return {"keys": [jwk]}


@pytest.fixture
def crl(signer: Ed25519Signer, tools: SimpleNamespace) -> str:
    revoked = [
        ("lic_b", tools.NOW - timedelta(hours=1), "refund"),
        Revocation("lic_a", tools.NOW - timedelta(days=1), "leaked"),
    ]
    return sign_revocation_list(signer, revoked, issuer=tools.ISSUER, now=tools.NOW)


@pytest.fixture
def check_crl(published: dict[str, Any], tools: SimpleNamespace) -> Any:
    keys = keys_from_jwks(published)

    def run(token: str, **overrides: Any) -> Any:
        options = {"key_lookup": keys.get, "issuer": tools.ISSUER, "now": tools.NOW}
        return verify_revocation_list(token, **{**options, **overrides})

    return run


def test_revocation_list_round_trip(
    crl: str, check_crl: Any, signer: Ed25519Signer, tools: SimpleNamespace
) -> None:
    header, body = tools.split(crl)
    assert header == {"alg": "EdDSA", "kid": signer.kid, "typ": "pv-crl+jwt"}
    assert [e["jti"] for e in body["revoked"]] == ["lic_a", "lic_b"]
    result = check_crl(crl)
    assert result.next_update == tools.NOW + timedelta(hours=1)
    assert result.entries[0] == Revocation("lic_a", tools.NOW - timedelta(days=1), "leaked")
    assert result.is_revoked("lic_b") and not result.is_revoked("lic_c")


def test_stale_revocation_list_is_refused(crl: str, check_crl: Any, tools: SimpleNamespace) -> None:
    late = tools.NOW + timedelta(hours=1, minutes=1)
    tools.expect(lambda: check_crl(crl, now=late), 403, "crl-expired")


def test_revocation_list_attacks(
    crl: str, check_crl: Any, licence: str, attacker_key: Ed25519PrivateKey, tools: SimpleNamespace
) -> None:
    head, body = tools.split(crl)
    tools.expect(
        lambda: check_crl(tools.forge({**head, "alg": "none"}, body, lambda _: b"")),
        401,
        "crl-alg-not-allowed",
    )
    tools.expect(lambda: check_crl(licence), 401, "crl-typ-invalid")
    tools.expect(
        lambda: check_crl(tools.forge(head, {**body, "revoked": []}, attacker_key.sign)),
        401,
        "crl-signature-invalid",
    )
    tools.expect(
        lambda: check_crl(tools.forge({**head, "kid": "../x"}, body, attacker_key.sign)),
        401,
        "crl-kid-unknown",
    )
    tools.expect(
        lambda: check_crl(tools.forge({**head, "crit": ["x"]}, body, attacker_key.sign)),
        401,
        "crl-crit-unsupported",
    )
    tools.expect(
        lambda: check_crl(crl, issuer="https://partvault.example/"), 403, "crl-issuer-mismatch"
    )


def test_offline_verification_accepts_a_good_licence(
    licence: str,
    published: dict[str, Any],
    tools: SimpleNamespace,
    facility_key: Ed25519PrivateKey,
) -> None:
    claims = verify_offline(licence, published, now=tools.NOW)
    assert claims.facility_jkt == key_thumbprint(facility_key.public_key())
    assert (
        verify_offline(
            licence, published, issuer=tools.ISSUER, audience=tools.AUDIENCE, now=tools.NOW
        ).prints
        == 3
    )
    tools.expect(
        lambda: verify_offline(
            licence, published, issuer="https://partvault.example.evil", now=tools.NOW
        ),
        403,
        "licence-issuer-mismatch",
    )
    tools.expect(
        lambda: verify_offline(licence, published, now=tools.NOW + timedelta(days=1)),
        403,
        "licence-expired",
    )


def test_offline_verification_honours_the_revocation_list(
    signer: Ed25519Signer,
    licence_params: dict[str, Any],
    published: dict[str, Any],
    crl: str,
    tools: SimpleNamespace,
) -> None:
    revoked = issue_licence(signer, **{**licence_params, "jti": "lic_a"})
    tools.expect(
        lambda: verify_offline(revoked, published, now=tools.NOW, revocation_list=crl),
        403,
        "licence-revoked",
    )
    fine = issue_licence(signer, **{**licence_params, "jti": "lic_c"})
    assert verify_offline(fine, published, now=tools.NOW, revocation_list=crl).jti == "lic_c"
    tools.expect(
        lambda: verify_offline(fine, published, now=tools.NOW, revocation_list=crl[:-3] + "AAA"),
        401,
        "crl-signature-invalid",
    )


def test_offline_verification_ignores_foreign_and_mislabelled_keys(
    licence: str,
    published: dict[str, Any],
    issuer_key: Ed25519PrivateKey,
    signer: Ed25519Signer,
    tools: SimpleNamespace,
) -> None:
    rsa_jwk = {
        **public_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()),
        "kid": signer.kid,
    }
    mixed = {"keys": [rsa_jwk, *published["keys"]]}
    assert verify_offline(licence, mixed, now=tools.NOW).kid == signer.kid
    attacker = Ed25519PrivateKey.generate()
    relabelled = {
        "keys": [
            {**public_jwk(attacker.public_key()), "kid": signer.kid},
            {**public_jwk(issuer_key.public_key()), "kid": "x"},
        ]
    }
    tools.expect(lambda: verify_offline(licence, relabelled, now=tools.NOW), 400, "jwks-invalid")


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"keys": "x"},
        {"keys": []},
        {"keys": ["x"]},
        [],
        "keys",
        {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]},
    ],
)
def test_offline_verification_refuses_unusable_jwks(
    licence: str, tools: SimpleNamespace, document: Any
) -> None:
    tools.expect(lambda: verify_offline(licence, document, now=tools.NOW), 400, "jwks-invalid")


def test_offline_verification_refuses_jwks_with_private_material(
    licence: str, published: dict[str, Any], tools: SimpleNamespace
) -> None:
    leaky = {"keys": [{**published["keys"][0], "d": "AAAA"}]}
    tools.expect(lambda: verify_offline(licence, leaky, now=tools.NOW), 400, "jwks-invalid")
