"""RFC 8725-style attacks on redemption, over HTTP against the in-process app.

tests/tokens/ checks each rule on the token functions; these check that the
route wires them up: every forged or misused licence or proof is refused with
401/403 (404 where the licence belongs to someone else) and its precise
problem+json code, and no attempt ever moves the licence's counter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta
from typing import Any

from api_helpers import register_bureau
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inventory.db import utcnow
from licensing.tokens import key_thumbprint, make_proof, public_jwk


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _split(token: str) -> tuple[dict[str, Any], bytes]:
    head, body, _ = token.split(".")
    return json.loads(_unb64(head)), _unb64(body)


def _forge(header: dict[str, Any], payload: bytes, sign: Any) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(payload)}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _flip(segment: str, byte: int) -> str:
    data = bytearray(_unb64(segment))
    data[byte] ^= 0x01
    return _b64(bytes(data))


class Redeem:
    """Redemption attempts on one licence, checking the counter after each."""

    def __init__(self, world: Any, licence: dict[str, Any]) -> None:
        self.world, self.licence = world, licence
        self.path = f"/v1/licences/{licence['jti']}/redeem"
        self.url = world.api.settings.public_url.rstrip("/") + self.path

    def proof(self, key: Ed25519PrivateKey | None = None, **overrides: Any) -> str:
        args = {
            "htm": "POST",
            "htu": self.url,
            "access_token": self.world.bureau.token,
            "now": utcnow(),
        } | overrides
        return make_proof(key or self.world.bureau.pop_key, **args)

    def send(
        self, *, token: str | None = None, proof: str | None = None, licence: str | None = None
    ) -> Any:
        return self.world.api.call(
            "POST",
            self.path,
            token or self.world.bureau.token,
            json={"licence": licence or self.licence["token"]},
            headers={"DPoP": proof or self.proof()},
        )

    def refused(self, response: Any, status: int, code: str, case: str) -> None:
        assert response.status_code == status, (case, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/problem+json"), case
        assert response.json()["code"] == code, (case, response.json())
        self.assert_used(0, case)

    def assert_used(self, used: int, case: str = "") -> None:
        row = self.world.api.ok("GET", f"/v1/licences/{self.licence['jti']}", self.world.brand)
        assert row["prints_used"] == used, case

    def control(self) -> None:
        """The genuine licence with a genuine proof still counts one print."""
        assert self.send().status_code == 201
        self.assert_used(1, "genuine redemption after the attacks")


def test_misused_proofs_are_refused_and_count_nothing(world):
    redeem = Redeem(world, world.licence(prints=3))
    other = register_bureau(world.api, name="Print Hub Grenoble")
    # facility B's own token and proof, presenting facility A's licence
    redeem.refused(
        redeem.send(token=other.token, proof=redeem.proof(other.pop_key, access_token=other.token)),
        404,
        "licence-not-found",
        "another facility's token and proof",
    )
    # A's token with a proof made by B's key
    redeem.refused(
        redeem.send(proof=redeem.proof(other.pop_key)), 401, "dpop-key-mismatch", "B's proof on A"
    )
    cases = {
        "dpop-htu-mismatch": redeem.proof(htu=redeem.url.replace("/redeem", "/revoke")),
        "dpop-htm-mismatch": redeem.proof(htm="GET"),
        "dpop-ath-mismatch": redeem.proof(access_token=other.token),
        "dpop-stale": redeem.proof(now=utcnow() - timedelta(minutes=5)),
        "dpop-issued-in-future": redeem.proof(now=utcnow() + timedelta(minutes=5)),
    }
    for code, proof in cases.items():
        redeem.refused(redeem.send(proof=proof), 401, code, code)
    # another host with the same path
    foreign = redeem.proof(htu="https://partvault.attacker.example" + redeem.path)
    redeem.refused(redeem.send(proof=foreign), 401, "dpop-htu-mismatch", "foreign host")
    # the licence itself as the access token the proof hashes (ath over another token)
    over_licence = redeem.proof(access_token=redeem.licence["token"])
    redeem.refused(redeem.send(proof=over_licence), 401, "dpop-ath-mismatch", "ath over licence")
    redeem.control()


def test_forged_licences_are_refused_and_count_nothing(world):
    redeem = Redeem(world, world.licence(prints=3))
    token = redeem.licence["token"]
    head, body = _split(token)
    segments = token.split(".")
    flipped_signature = ".".join([*segments[:2], _flip(segments[2], 5)])
    flipped_payload = ".".join([segments[0], _flip(segments[1], 40), segments[2]])
    for case, forged in {"signature": flipped_signature, "payload": flipped_payload}.items():
        redeem.refused(
            redeem.send(licence=forged), 401, "licence-signature-invalid", f"bit flip in {case}"
        )

    alg_none = _forge({**head, "alg": "none"}, body, lambda _: b"")
    redeem.refused(redeem.send(licence=alg_none), 401, "licence-alg-not-allowed", "alg none")

    jwks = world.api.ok("GET", "/.well-known/jwks.json")
    jwk = next(k for k in jwks["keys"] if k["kid"] == head["kid"])
    for secret in (_unb64(jwk["x"]), json.dumps(jwk).encode(), jwk["x"].encode()):
        hs256 = _forge(
            {**head, "alg": "HS256"},
            body,
            lambda data, s=secret: hmac.new(s, data, hashlib.sha256).digest(),
        )
        redeem.refused(redeem.send(licence=hs256), 401, "licence-alg-not-allowed", "HS256")

    attacker = Ed25519PrivateKey.generate()
    pointers = {
        "jwk": public_jwk(attacker.public_key()),
        "jku": "https://attacker.example/.well-known/jwks.json",
    }
    for name, pointer in pointers.items():
        ours = _forge({**head, name: pointer}, body, attacker.sign)
        redeem.refused(redeem.send(licence=ours), 401, "licence-signature-invalid", f"{name}+kid")
        own_kid = {**head, name: pointer, "kid": key_thumbprint(attacker.public_key())}
        theirs = _forge(own_kid, body, attacker.sign)
        redeem.refused(redeem.send(licence=theirs), 401, "licence-kid-unknown", f"{name} own kid")

    # more prints in a re-signed payload by the attacker
    inflated = json.loads(body) | {"prints": 1000}
    forged = _forge(head, json.dumps(inflated).encode(), attacker.sign)
    redeem.refused(redeem.send(licence=forged), 401, "licence-signature-invalid", "inflated")
    redeem.control()


def test_licences_outside_their_lifetime_are_forbidden(world):
    now = utcnow()
    expired = Redeem(
        world,
        world.licence(
            prints=2,
            not_before=(now - timedelta(days=2)).isoformat(),
            expires_at=(now - timedelta(days=1)).isoformat(),
        ),
    )
    expired.refused(expired.send(), 403, "licence-expired", "expired a day ago")
    expiry = utcnow() + timedelta(seconds=4)  # room for a slow issuance on a loaded machine
    just_expired = Redeem(world, world.licence(prints=2, expires_at=expiry.isoformat()))
    # still within the verifier's 30 s leeway: the licence row's own expiry decides
    time.sleep(max(0.0, (expiry - utcnow()).total_seconds()) + 0.5)
    just_expired.refused(just_expired.send(), 403, "licence-expired", "expired a second ago")
    early = Redeem(
        world,
        world.licence(
            prints=2,
            not_before=(now + timedelta(days=1)).isoformat(),
            expires_at=(now + timedelta(days=2)).isoformat(),
        ),
    )
    early.refused(early.send(), 403, "licence-not-yet-valid", "valid from tomorrow")
    # a genuine licence of this facility presented on another licence's path
    valid, other = Redeem(world, world.licence(prints=2)), world.licence(prints=2)
    crossed = valid.send(licence=other["token"])
    valid.refused(crossed, 400, "licence-jti-mismatch", "licence of another path")
    Redeem(world, other).assert_used(0, "the presented licence is not counted either")
    valid.control()
