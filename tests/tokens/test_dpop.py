"""Proofs of possession: RFC 9449 checks and the RFC 8725 attack list against proofs."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inventory.errors import Unauthorized
from licensing.tokens.dpop import access_token_hash, make_proof, verify_proof
from licensing.tokens.licence import issue_licence
from licensing.tokens.thumbprint import key_thumbprint, public_jwk

HTU = "https://api.partvault.example/v1/licences/lic_1/redeem"


class MemoryGuard:
    """An in-memory replay guard (the database one is tested in test_replay.py)."""

    def __init__(self) -> None:
        self.seen: dict[str, datetime] = {}

    def remember(self, jti: str, expires: datetime) -> None:
        if jti in self.seen:
            raise Unauthorized("replayed", code="dpop-replayed")
        self.seen[jti] = expires


@pytest.fixture
def proof(facility_key: Ed25519PrivateKey, licence: str, tools: SimpleNamespace) -> str:
    return make_proof(facility_key, htm="POST", htu=HTU, access_token=licence, now=tools.NOW)


@pytest.fixture
def check(facility_key: Ed25519PrivateKey, licence: str, tools: SimpleNamespace) -> Any:
    """verify_proof for the facility's licence at NOW with a fresh guard (overridable)."""

    def run(token: Any, **overrides: Any) -> None:
        options = {
            "htm": "POST",
            "htu": HTU,
            "access_token": licence,
            "expected_jkt": key_thumbprint(facility_key.public_key()),
            "replay_guard": MemoryGuard(),
            "now": tools.NOW,
        }
        verify_proof(token, **{**options, **overrides})

    return run


@pytest.fixture
def resign(facility_key: Ed25519PrivateKey, tools: SimpleNamespace) -> Any:
    """Re-sign a proof with the FACILITY key after editing header and/or claims."""

    def run(token: str, header: dict[str, Any] | None = None, **claims: Any) -> str:
        head, body = tools.split(token)
        head = {k: v for k, v in {**head, **(header or {})}.items() if v is not None}
        body = {k: v for k, v in {**body, **claims}.items() if v is not None}
        return tools.forge(head, body, facility_key.sign)

    return run


def test_valid_proof_is_accepted_and_remembered(
    proof: str, check: Any, facility_key: Ed25519PrivateKey, tools: SimpleNamespace
) -> None:
    guard = MemoryGuard()
    check(proof, replay_guard=guard)
    ((key, expires),) = guard.seen.items()
    jti = tools.split(proof)[1]["jti"]
    assert key == f"{key_thumbprint(facility_key.public_key())}\x00{jti}"
    assert expires == tools.NOW + timedelta(seconds=60)


def test_proof_format(
    proof: str, licence: str, facility_key: Ed25519PrivateKey, tools: SimpleNamespace
) -> None:
    head, body = tools.split(proof)
    assert head == {"alg": "EdDSA", "typ": "dpop+jwt", "jwk": public_jwk(facility_key.public_key())}
    assert set(body) == {"jti", "htm", "htu", "iat", "ath"}
    assert body["ath"] == tools.b64(hashlib.sha256(licence.encode()).digest())
    assert body["ath"] == access_token_hash(licence)
    assert len(body["jti"]) >= 32


def test_make_proof_drops_query_and_fragment(
    facility_key: Ed25519PrivateKey, licence: str, tools: SimpleNamespace
) -> None:
    token = make_proof(
        facility_key, htm="GET", htu=HTU + "?a=1#f", access_token=licence, now=tools.NOW
    )
    assert tools.split(token)[1]["htu"] == HTU


@pytest.mark.parametrize(
    "request_uri",
    [
        HTU,
        HTU + "?cursor=abc",
        HTU + "#frag",
        "HTTPS://API.partvault.example/v1/licences/lic_1/redeem",
        "https://api.partvault.example:443/v1/licences/lic_1/redeem",
    ],
)
def test_htu_comparison_ignores_query_fragment_case_and_default_port(
    proof: str, check: Any, request_uri: str
) -> None:
    check(proof, htu=request_uri)


# --- attack list against proofs ----------------------------------------------------


def test_alg_none_is_refused(proof: str, check: Any, tools: SimpleNamespace) -> None:
    head, body = tools.split(proof)
    for alg in ("none", "None"):
        token = tools.forge({**head, "alg": alg}, body, lambda _: b"")
        tools.expect(lambda t=token: check(t), 401, "dpop-alg-not-allowed")


def test_hs256_with_public_key_as_secret_is_refused(
    proof: str, check: Any, facility_key: Ed25519PrivateKey, tools: SimpleNamespace
) -> None:
    public = facility_key.public_key()
    head, body = tools.split(proof)
    for secret in (
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    ):
        token = tools.forge(
            {**head, "alg": "HS256"},
            body,
            lambda d, s=secret: hmac.new(s, d, hashlib.sha256).digest(),
        )
        tools.expect(lambda t=token: check(t), 401, "dpop-alg-not-allowed")


def test_algorithms_outside_the_list_are_refused(
    proof: str, check: Any, tools: SimpleNamespace
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    head, body = tools.split(proof)
    cases = {
        "RS256": (
            rsa_key.sign,
            (padding.PKCS1v15(), hashes.SHA256()),
            public_jwk(rsa_key.public_key()),
        ),
        "ES256": (ec_key.sign, (ec.ECDSA(hashes.SHA256()),), head["jwk"]),
    }
    for alg, (sign, args, jwk) in cases.items():
        token = tools.forge(
            {**head, "alg": alg, "jwk": jwk}, body, lambda d, s=sign, a=args: s(d, *a)
        )
        tools.expect(lambda t=token: check(t), 401, "dpop-alg-not-allowed")


@pytest.mark.parametrize("kid", ["../../etc/passwd", "' OR 1=1 --"])
def test_kid_injection_with_attacker_key_is_refused(
    proof: str, check: Any, attacker_key: Ed25519PrivateKey, tools: SimpleNamespace, kid: str
) -> None:
    head, body = tools.split(proof)
    forged = {**head, "kid": kid, "jwk": public_jwk(attacker_key.public_key())}
    token = tools.forge(forged, body, attacker_key.sign)
    tools.expect(lambda: check(token), 401, "dpop-key-mismatch")


@pytest.mark.parametrize("header", ["jku", "x5u", "x5c"])
def test_key_pointing_headers_do_not_replace_the_jwk(
    proof: str, check: Any, attacker_key: Ed25519PrivateKey, tools: SimpleNamespace, header: str
) -> None:
    head, body = tools.split(proof)
    pointer = {
        "jku": "https://attacker.example/jwks",
        "x5u": "https://attacker.example/c",
        "x5c": ["MIIB"],
    }[header]
    token = tools.forge({**head, header: pointer}, body, attacker_key.sign)
    tools.expect(lambda: check(token), 401, "dpop-signature-invalid")


def test_another_facilitys_proof_is_refused(
    licence: str, check: Any, attacker_key: Ed25519PrivateKey, tools: SimpleNamespace
) -> None:
    foreign = make_proof(attacker_key, htm="POST", htu=HTU, access_token=licence, now=tools.NOW)
    tools.expect(lambda: check(foreign), 401, "dpop-key-mismatch")


@pytest.mark.parametrize(
    "jwk",
    [
        None,
        "x",
        {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
        {"kty": "OKP", "crv": "X25519", "x": "A"},
        {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
    ],
)
def test_missing_or_bad_jwk_is_refused(
    proof: str, check: Any, resign: Any, tools: SimpleNamespace, jwk: Any
) -> None:
    tools.expect(lambda: check(resign(proof, {"jwk": jwk})), 401, "dpop-jwk-invalid")


def test_jwk_with_private_key_is_refused(
    proof: str, check: Any, resign: Any, facility_key: Ed25519PrivateKey, tools: SimpleNamespace
) -> None:
    head, _ = tools.split(proof)
    seed = facility_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    token = resign(proof, {"jwk": {**head["jwk"], "d": tools.b64(seed)}})
    tools.expect(lambda: check(token), 401, "dpop-jwk-invalid")


@pytest.mark.parametrize("typ", [None, "JWT", "DPOP+JWT", "pv-licence+jwt"])
def test_missing_or_foreign_typ_is_refused(
    proof: str, check: Any, resign: Any, tools: SimpleNamespace, typ: str | None
) -> None:
    tools.expect(lambda: check(resign(proof, {"typ": typ})), 401, "dpop-typ-invalid")


def test_a_licence_is_not_a_proof(licence: str, check: Any, tools: SimpleNamespace) -> None:
    tools.expect(lambda: check(licence), 401, "dpop-typ-invalid")


def test_unknown_crit_is_refused(
    proof: str, check: Any, resign: Any, tools: SimpleNamespace
) -> None:
    token = resign(proof, {"crit": ["exp"], "exp": 0})
    tools.expect(lambda: check(token), 401, "dpop-crit-unsupported")


def test_flipped_bit_in_signature_or_payload_is_refused(
    proof: str, check: Any, tools: SimpleNamespace
) -> None:
    head, body, sig = proof.split(".")
    raw = bytearray(tools.unb64(sig))
    raw[5] ^= 0x80
    tools.expect(
        lambda: check(f"{head}.{body}.{tools.b64(bytes(raw))}"), 401, "dpop-signature-invalid"
    )
    payload = bytearray(tools.unb64(body))
    payload[payload.index(b'"POST"') + 1] ^= 0x20  # POST -> pOST
    tools.expect(
        lambda: check(f"{head}.{tools.b64(bytes(payload))}.{sig}"), 401, "dpop-signature-invalid"
    )


def test_replayed_proof_is_refused(proof: str, check: Any, tools: SimpleNamespace) -> None:
    guard = MemoryGuard()
    check(proof, replay_guard=guard)
    tools.expect(lambda: check(proof, replay_guard=guard), 401, "dpop-replayed")


def test_stale_and_future_iat_are_refused(proof: str, check: Any, tools: SimpleNamespace) -> None:
    tools.expect(lambda: check(proof, now=tools.NOW + timedelta(seconds=61)), 401, "dpop-stale")
    tools.expect(
        lambda: check(proof, now=tools.NOW - timedelta(seconds=61)), 401, "dpop-issued-in-future"
    )
    check(proof, now=tools.NOW + timedelta(seconds=60))
    check(proof, now=tools.NOW - timedelta(seconds=60))
    tools.expect(
        lambda: check(proof, now=tools.NOW + timedelta(seconds=11), max_age=10), 401, "dpop-stale"
    )


@pytest.mark.parametrize("htm", ["GET", "post", "PUT"])
def test_wrong_htm_is_refused(proof: str, check: Any, tools: SimpleNamespace, htm: str) -> None:
    tools.expect(lambda: check(proof, htm=htm), 401, "dpop-htm-mismatch")


@pytest.mark.parametrize(
    "request_uri",
    [
        "https://api.partvault.example/v1/licences/lic_2/redeem",
        "http://api.partvault.example/v1/licences/lic_1/redeem",
        "https://api.partvault.example.evil/v1/licences/lic_1/redeem",
        "https://api.partvault.example:8443/v1/licences/lic_1/redeem",
        "https://api.partvault.example/v1/licences/lic_1/redeem/",
        "https://api.partvault.example/V1/licences/lic_1/redeem",
        "not a uri",
    ],
)
def test_wrong_htu_is_refused(
    proof: str, check: Any, tools: SimpleNamespace, request_uri: str
) -> None:
    tools.expect(lambda: check(proof, htu=request_uri), 401, "dpop-htu-mismatch")


@pytest.mark.parametrize(
    "claimed",
    [
        "https://attacker@api.partvault.example/v1/licences/lic_1/redeem",
        "ftp://api.partvault.example/v1/licences/lic_1/redeem",
    ],
)
def test_htu_with_userinfo_or_other_scheme_is_refused(
    proof: str, check: Any, resign: Any, tools: SimpleNamespace, claimed: str
) -> None:
    tools.expect(lambda: check(resign(proof, htu=claimed)), 401, "dpop-htu-mismatch")


def test_ath_over_another_token_is_refused(
    proof: str, check: Any, signer: Any, licence_params: dict[str, Any], tools: SimpleNamespace
) -> None:
    other = issue_licence(signer, **{**licence_params, "jti": "lic_other_licence"})
    tools.expect(lambda: check(proof, access_token=other), 401, "dpop-ath-mismatch")


@pytest.mark.parametrize(
    "claims",
    [
        {"jti": None},
        {"jti": "short"},
        {"iat": "now"},
        {"iat": None},
        {"ath": None},
        {"htm": 1},
        {"htu": None},
    ],
)
def test_missing_or_mistyped_claims_are_refused(
    proof: str, check: Any, resign: Any, tools: SimpleNamespace, claims: dict[str, Any]
) -> None:
    tools.expect(lambda: check(resign(proof, **claims)), 401, "dpop-claims-invalid")


@pytest.mark.parametrize("token", ["", "a.b", None, json.dumps({"alg": "EdDSA"})])
def test_malformed_proofs_are_refused(check: Any, tools: SimpleNamespace, token: Any) -> None:
    tools.expect(lambda: check(token), 401, "dpop-malformed")


def test_a_header_seen_before_still_needs_its_signature(
    proof: str, check: Any, attacker_key: Ed25519PrivateKey, tools: SimpleNamespace
) -> None:
    """The header's key is remembered per header text; every proof's signature is not."""
    check(proof)  # the facility's header, now remembered
    head = proof.split(".")[0]
    body = tools.b64(
        json.dumps({**tools.split(proof)[1], "jti": "a-fresh-jti-of-the-attacker"}).encode()
    )
    signature = tools.b64(attacker_key.sign(f"{head}.{body}".encode()))
    copied = f"{head}.{body}.{signature}"
    tools.expect(lambda: check(copied), 401, "dpop-signature-invalid")
    check(proof, replay_guard=MemoryGuard())  # and the remembered header still verifies
