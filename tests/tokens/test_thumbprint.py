"""RFC 7638 thumbprints, JWK export and the compact JWS encoder against RFC vectors."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from licensing.tokens._jose import b64url_decode, encode_compact
from licensing.tokens.thumbprint import (
    ed25519_from_jwk,
    jwk_thumbprint,
    key_thumbprint,
    public_jwk,
    rsa_from_jwk,
)

# RFC 8037 Appendix A.1-A.4
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC8037_JWS = (
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)
# RFC 7638 section 3.1
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPe"
    "bWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY3"
    "68QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4l"
    "Fd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def rfc8037_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_D))


def test_ed25519_thumbprint_matches_rfc8037() -> None:
    jwk = public_jwk(rfc8037_key().public_key())
    assert jwk == {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}
    assert jwk_thumbprint(jwk) == RFC8037_THUMBPRINT
    assert key_thumbprint(rfc8037_key().public_key()) == RFC8037_THUMBPRINT


def test_rsa_thumbprint_matches_rfc7638() -> None:
    jwk = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == RFC7638_THUMBPRINT
    key = rsa_from_jwk(jwk)
    assert public_jwk(key) == {"kty": "RSA", "n": RFC7638_N, "e": "AQAB"}
    assert key_thumbprint(key) == RFC7638_THUMBPRINT


def test_thumbprint_ignores_optional_members_and_member_order() -> None:
    plain = {"x": RFC8037_X, "kty": "OKP", "crv": "Ed25519"}
    noisy = {**plain, "kid": "anything", "use": "sig", "alg": "EdDSA"}
    assert jwk_thumbprint(plain) == jwk_thumbprint(noisy) == RFC8037_THUMBPRINT


def test_fresh_rsa_key_round_trips() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    assert rsa_from_jwk(public_jwk(key)).public_numbers() == key.public_numbers()


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "EC", "crv": "P-256", "x": "a", "y": "b"},
        {"kty": "OKP", "crv": "Ed25519"},
        {"kty": "OKP", "x": RFC8037_X},
        {},
    ],
)
def test_thumbprint_refuses_incomplete_or_unknown_keys(jwk: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        jwk_thumbprint(jwk)


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X, "d": RFC8037_D},
        {"kty": "OKP", "crv": "Ed448", "x": RFC8037_X},
        {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X[:-2]},
        {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X + "="},
        {"kty": "RSA", "n": RFC7638_N, "e": "AQAB"},
    ],
)
def test_ed25519_from_jwk_is_strict(jwk: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        ed25519_from_jwk(jwk)


def test_compact_encoder_reproduces_rfc8037_signature() -> None:
    token = encode_compact({"alg": "EdDSA"}, b"Example of Ed25519 signing", rfc8037_key().sign)
    assert token == RFC8037_JWS
