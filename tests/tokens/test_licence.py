"""Licences: issue and verify, and the RFC 8725 attack list (each refused, precise code)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inventory.errors import Invalid, PartvaultError
from licensing.tokens.dpop import make_proof
from licensing.tokens.licence import LicenceClaims, issue_licence, verify_licence
from licensing.tokens.signer import Ed25519Signer
from licensing.tokens.thumbprint import key_thumbprint, public_jwk


@pytest.fixture
def verify(signer: Ed25519Signer, issuer_key: Ed25519PrivateKey, tools: SimpleNamespace) -> Any:
    """verify_licence with our one key, our issuer and audience, at NOW (overridable)."""
    keys = {signer.kid: issuer_key.public_key()}

    def run(token: Any, **overrides: Any) -> LicenceClaims:
        options = {
            "key_lookup": keys.get,
            "issuer": tools.ISSUER,
            "audience": tools.AUDIENCE,
            "now": tools.NOW,
        }
        return verify_licence(token, **{**options, **overrides})

    return run


@pytest.fixture
def resign(issuer_key: Ed25519PrivateKey, signer: Ed25519Signer, tools: SimpleNamespace) -> Any:
    """Re-sign a licence with OUR key after editing its header and/or claims."""

    def run(token: str, header: dict[str, Any] | None = None, **claims: Any) -> str:
        head, body = tools.split(token)
        head.update(header or {})
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        head = {k: v for k, v in head.items() if v is not None}
        return tools.forge(head, body, issuer_key.sign)

    return run


def test_issued_licence_verifies_with_every_claim(
    licence: str, verify: Any, licence_params: dict[str, Any], signer: Ed25519Signer
) -> None:
    claims = verify(licence)
    p = licence_params
    assert claims == LicenceClaims(
        kid=signer.kid,
        issuer=p["issuer"],
        audience=(p["audience"],),
        facility_id=p["subject"],
        jti=p["jti"],
        brand_id=p["brand_id"],
        part_id=p["part_id"],
        revision_id=p["revision_id"],
        design_sha256=p["design_sha256"],
        prints=3,
        print_profile_hash=p["print_profile_hash"],
        facility_jkt=p["facility_jkt"],
        issued_at=p["now"],
        not_before=p["not_before"],
        expires_at=p["expires_at"],
    )


def test_header_is_exactly_alg_kid_typ(
    licence: str, signer: Ed25519Signer, tools: SimpleNamespace
) -> None:
    header, body = tools.split(licence)
    assert header == {"alg": "EdDSA", "kid": signer.kid, "typ": "pv-licence+jwt"}
    assert set(body) == {
        "iss",
        "aud",
        "sub",
        "jti",
        "iat",
        "nbf",
        "exp",
        "brand",
        "part",
        "revision",
        "design_sha256",
        "prints",
        "profile_hash",
        "cnf",
    }


def test_pyjwt_decodes_our_licence(
    licence: str, issuer_key: Ed25519PrivateKey, tools: SimpleNamespace
) -> None:
    decoded = jwt.decode(
        licence,
        issuer_key.public_key(),
        algorithms=["EdDSA"],
        audience=tools.AUDIENCE,
        issuer=tools.ISSUER,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert decoded["prints"] == 3


def test_audience_list_containing_ours_is_accepted(
    signer: Ed25519Signer, licence_params: dict[str, Any], verify: Any, tools: SimpleNamespace
) -> None:
    token = issue_licence(signer, **{**licence_params, "audience": ["other", tools.AUDIENCE]})
    assert verify(token).audience == ("other", tools.AUDIENCE)


@pytest.mark.parametrize(
    "change",
    [
        {"prints": 0},
        {"prints": -1},
        {"design_sha256": "XYZ"},
        {"facility_jkt": "short"},
        {"subject": ""},
        {"audience": []},
    ],
)
def test_issue_refuses_impossible_parameters(
    signer: Ed25519Signer, licence_params: dict[str, Any], change: dict[str, Any]
) -> None:
    with pytest.raises(Invalid) as info:
        issue_licence(signer, **{**licence_params, **change})
    assert info.value.code == "licence-params-invalid"


def test_issue_refuses_empty_lifetime(
    signer: Ed25519Signer, licence_params: dict[str, Any]
) -> None:
    params = {**licence_params, "expires_at": licence_params["not_before"]}
    with pytest.raises(Invalid):
        issue_licence(signer, **params)


# --- RFC 8725 attack list -------------------------------------------------------


def test_alg_none_is_refused(licence: str, verify: Any, tools: SimpleNamespace) -> None:
    head, body = tools.split(licence)
    for alg in ("none", "None", "NONE"):
        token = tools.forge({**head, "alg": alg}, body, lambda _: b"")
        assert token.endswith(".")
        tools.expect(lambda t=token: verify(t), 401, "licence-alg-not-allowed")


def test_hs256_with_public_key_as_secret_is_refused(
    licence: str, verify: Any, issuer_key: Ed25519PrivateKey, tools: SimpleNamespace
) -> None:
    public = issuer_key.public_key()
    secrets = [
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        json.dumps(public_jwk(public)).encode(),
    ]
    head, body = tools.split(licence)
    for secret in secrets:
        token = tools.forge(
            {**head, "alg": "HS256"},
            body,
            lambda data, s=secret: hmac.new(s, data, hashlib.sha256).digest(),
        )
        tools.expect(lambda t=token: verify(t), 401, "licence-alg-not-allowed")


def test_algorithms_outside_the_list_are_refused(
    licence: str, verify: Any, tools: SimpleNamespace
) -> None:
    head, body = tools.split(licence)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    signers = {
        "RS256": lambda d: rsa_key.sign(d, padding.PKCS1v15(), hashes.SHA256()),
        "PS256": lambda d: rsa_key.sign(
            d, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
        ),
        "ES256": lambda d: ec_key.sign(d, ec.ECDSA(hashes.SHA256())),
        "Ed25519": Ed25519PrivateKey.generate().sign,
        "eddsa": Ed25519PrivateKey.generate().sign,
    }
    for alg, sign in signers.items():
        token = tools.forge({**head, "alg": alg}, body, sign)
        tools.expect(lambda t=token: verify(t), 401, "licence-alg-not-allowed")
    no_alg = {k: v for k, v in head.items() if k != "alg"}
    tools.expect(
        lambda: verify(tools.forge(no_alg, body, lambda _: b"x")), 401, "licence-alg-not-allowed"
    )


@pytest.mark.parametrize(
    "kid", ["../../etc/passwd", "' OR 1=1 --", "%00", "", 42, None, ["a"], {"$ne": ""}]
)
def test_kid_is_only_an_opaque_lookup_key(
    resign: Any,
    licence: str,
    verify: Any,
    signer: Ed25519Signer,
    issuer_key: Ed25519PrivateKey,
    tools: SimpleNamespace,
    kid: Any,
) -> None:
    seen: list[Any] = []

    def lookup(value: str) -> Any:
        seen.append(value)
        return {signer.kid: issuer_key.public_key()}.get(value)

    token = resign(licence, {"kid": kid})
    tools.expect(lambda: verify(token, key_lookup=lookup), 401, "licence-kid-unknown")
    assert seen == ([kid] if isinstance(kid, str) else [])


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
def test_key_carrying_headers_are_never_used(
    licence: str,
    verify: Any,
    attacker_key: Ed25519PrivateKey,
    signer: Ed25519Signer,
    resign: Any,
    tools: SimpleNamespace,
    header: str,
) -> None:
    pointer: Any = {
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "jwk": public_jwk(attacker_key.public_key()),
        "x5c": ["MIIBattacker"],
    }[header]
    head, body = tools.split(licence)
    forged = tools.forge({**head, header: pointer}, body, attacker_key.sign)
    tools.expect(lambda: verify(forged), 401, "licence-signature-invalid")
    own_kid = {**head, header: pointer, "kid": key_thumbprint(attacker_key.public_key())}
    forged = tools.forge(own_kid, body, attacker_key.sign)
    tools.expect(lambda: verify(forged), 401, "licence-kid-unknown")
    # signed by us with the extra header: verifies, the header is simply ignored
    assert verify(resign(licence, {header: pointer})).kid == signer.kid


def test_expired_licence_is_forbidden(licence: str, verify: Any, tools: SimpleNamespace) -> None:
    late = tools.NOW + timedelta(hours=2, seconds=31)
    tools.expect(lambda: verify(licence, now=late), 403, "licence-expired")
    assert verify(licence, now=tools.NOW + timedelta(hours=2, seconds=29))  # within leeway


def test_a_licence_verified_before_is_checked_again_at_each_use(
    licence: str, verify: Any, tools: SimpleNamespace
) -> None:
    assert verify(licence)  # its signature is now remembered with our key
    late = tools.NOW + timedelta(hours=3)
    tools.expect(lambda: verify(licence, now=late), 403, "licence-expired")
    elsewhere = "https://elsewhere.example/v1/licences"
    tools.expect(lambda: verify(licence, audience=elsewhere), 403, "licence-audience-mismatch")
    stranger = Ed25519PrivateKey.generate().public_key()
    tools.expect(
        lambda: verify(licence, key_lookup=lambda _: stranger), 401, "licence-signature-invalid"
    )
    assert verify(licence)


def test_not_yet_valid_licence_is_forbidden(
    licence: str, verify: Any, tools: SimpleNamespace
) -> None:
    early = tools.NOW - timedelta(minutes=2)
    tools.expect(
        lambda: verify(licence, now=early, leeway=timedelta(0)), 403, "licence-not-yet-valid"
    )


def test_future_iat_is_forbidden(
    licence: str, verify: Any, resign: Any, tools: SimpleNamespace
) -> None:
    now = int(tools.NOW.timestamp())
    token = resign(licence, iat=now + 3600, nbf=now - 60)
    tools.expect(lambda: verify(token), 403, "licence-issued-in-future")
    assert verify(resign(licence, iat=now + 20))  # within leeway


@pytest.mark.parametrize("aud", ["partvault-redeem-x", "PARTVAULT-REDEEM", ["other"], []])
def test_wrong_audience_is_forbidden(
    licence: str, verify: Any, resign: Any, tools: SimpleNamespace, aud: Any
) -> None:
    tools.expect(lambda: verify(resign(licence, aud=aud)), 403, "licence-audience-mismatch")


@pytest.mark.parametrize(
    "iss",
    [
        "https://partvault.example/",
        "https://PartVault.example",
        "https://partvault.example.evil",
        "http://partvault.example",
        "https://partvault.example ",
    ],
)
def test_lookalike_issuer_is_forbidden(
    licence: str, verify: Any, resign: Any, tools: SimpleNamespace, iss: str
) -> None:
    tools.expect(lambda: verify(resign(licence, iss=iss)), 403, "licence-issuer-mismatch")


@pytest.mark.parametrize(
    "typ",
    [None, "JWT", "jwt", "PV-LICENCE+JWT", "dpop+jwt", "pv-crl+jwt", "application/pv-licence+jwt"],
)
def test_missing_or_foreign_typ_is_refused(
    licence: str, verify: Any, resign: Any, tools: SimpleNamespace, typ: str | None
) -> None:
    token = resign(licence, {"typ": typ})
    tools.expect(lambda: verify(token), 401, "licence-typ-invalid")


def test_a_proof_is_not_a_licence(
    facility_key: Ed25519PrivateKey, licence: str, verify: Any, tools: SimpleNamespace
) -> None:
    proof = make_proof(
        facility_key, htm="POST", htu="https://x.example/", access_token=licence, now=tools.NOW
    )
    tools.expect(lambda: verify(proof), 401, "licence-typ-invalid")


@pytest.mark.parametrize("crit", [["exp"], ["b64"], [], "x", ["http://example.com/ext"]])
def test_unknown_crit_is_refused(
    licence: str, verify: Any, resign: Any, tools: SimpleNamespace, crit: Any
) -> None:
    token = resign(licence, {"crit": crit, "exp": 1, "b64": True})
    tools.expect(lambda: verify(token), 401, "licence-crit-unsupported")


def test_flipped_bit_in_signature_or_payload_is_refused(
    licence: str, verify: Any, tools: SimpleNamespace
) -> None:
    head, body, sig = licence.split(".")
    for index in (0, 31, 63):
        raw = bytearray(tools.unb64(sig))
        raw[index] ^= 0x01
        token = f"{head}.{body}.{tools.b64(bytes(raw))}"
        tools.expect(lambda t=token: verify(t), 401, "licence-signature-invalid")
    payload = bytearray(tools.unb64(body))
    payload[payload.index(b'"prints":3') + 9] ^= 0x02  # 3 -> 1
    token = f"{head}.{tools.b64(bytes(payload))}.{sig}"
    assert b'"prints":1' in bytes(payload)
    tools.expect(lambda: verify(token), 401, "licence-signature-invalid")


@pytest.mark.parametrize(
    "claims",
    [
        {"prints": "3"},
        {"prints": True},
        {"prints": 0},
        {"prints": 2.0},
        {"exp": "tomorrow"},
        {"cnf": None},
        {"cnf": {"jkt": "short"}},
        {"sub": None},
        {"jti": ""},
        {"iat": None},
        {"design_sha256": "AB" * 32},
    ],
)
def test_missing_or_mistyped_claims_are_refused(
    licence: str, verify: Any, resign: Any, tools: SimpleNamespace, claims: dict[str, Any]
) -> None:
    tools.expect(lambda: verify(resign(licence, **claims)), 401, "licence-claims-invalid")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.AA",
        "e30=.e30.AA",
        b"e30.e30.AA",
        None,
        "x" * 9000 + ".a.b",
        "WzFd.e30.AA",
    ],
)
def test_malformed_tokens_are_refused(verify: Any, tools: SimpleNamespace, token: Any) -> None:
    tools.expect(lambda: verify(token), 401, "licence-malformed")


def test_duplicate_header_member_is_refused(
    licence: str, verify: Any, tools: SimpleNamespace
) -> None:
    _, body, sig = licence.split(".")
    dup = tools.b64(b'{"alg":"EdDSA","alg":"EdDSA","kid":"k","typ":"pv-licence+jwt"}')
    tools.expect(lambda: verify(f"{dup}.{body}.{sig}"), 401, "licence-malformed")


def test_errors_never_quote_the_token(licence: str, verify: Any, resign: Any) -> None:
    bad = [
        resign(licence, iss="https://partvault.example.evil"),
        licence[:-4] + "AAAA",
        resign(licence, prints="x"),
    ]
    for token in bad:
        with pytest.raises(PartvaultError) as info:
            verify(token)
        for part in token.split("."):
            assert part not in str(info.value) and part not in repr(info.value.extra)
