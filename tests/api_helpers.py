"""Client-side helpers for API tests: bureaus with keys and DPoP-signed calls."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from litestar.testing import TestClient

from api.config import Settings
from inventory.db import utcnow
from licensing.tokens import make_proof


@dataclass
class Api:
    """A test client with the operator token and shortcuts to make tenants."""

    client: TestClient[Any]
    admin: str
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.request(method, path, headers=headers, **kwargs)

    def ok(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        response = self.call(method, path, token, **kwargs)
        assert response.status_code < 300, response.text
        return response.json()

    def brand(self, name: str) -> tuple[str, str]:
        """Create a brand; return (brand_id, brand token)."""
        brand = self.ok("POST", "/v1/brands", self.admin, json={"name": name})
        token = self.ok(
            "POST",
            "/v1/tokens",
            self.admin,
            json={"kind": "brand", "name": f"{name} api", "brand_id": brand["id"]},
        )
        return brand["id"], token["token"]

    def shop(self, brand_token: str, name: str = "shop") -> str:
        return self.ok("POST", "/v1/tokens", brand_token, json={"kind": "shop", "name": name})[
            "token"
        ]


PROFILE = {
    "process": "SLA",
    "material": "Tough 2000",
    "layer_height_mm": 0.05,
    "supports": "auto",
    "tolerance_mm": 0.1,
}


@dataclass
class Bureau:
    """A print bureau as a client: its keys, its token and DPoP-signed calls."""

    api: Any
    id: str
    token: str
    pop_key: Any
    wrap_key: Any

    def call(self, method: str, path: str, **kwargs: Any) -> Any:

        proof = make_proof(
            self.pop_key,
            htm=method,
            htu=self.api.settings.public_url.rstrip("/") + path,
            access_token=self.token,
            now=utcnow(),
        )
        headers = kwargs.pop("headers", {}) | {"DPoP": proof}
        return self.api.call(method, path, self.token, headers=headers, **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        assert response.status_code < 300, response.text
        return response.json()


#: RSA key generation costs ~60 ms: bureaus take turns over this many 2048-bit keys
#: per test process (distinct within any test that registers no more bureaus).
RSA_POOL = 8
_rsa_keys: list[rsa.RSAPrivateKey] = []
_rsa_uses = itertools.count()


def _pooled_rsa_key() -> rsa.RSAPrivateKey:
    turn = next(_rsa_uses) % RSA_POOL
    if turn == len(_rsa_keys):
        _rsa_keys.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _rsa_keys[turn]


def facility_keys(rsa_bits: int = 2048) -> tuple[Any, Any, str, str]:
    """A fresh Ed25519 proof-of-possession key and an RSA wrapping key."""
    pop = ed25519.Ed25519PrivateKey.generate()
    if rsa_bits == 2048:
        wrap = _pooled_rsa_key()
    else:
        wrap = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)

    def pem(key: Any) -> str:
        return (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    return pop, wrap, pem(pop), pem(wrap)


def facility_body(pop_pem: str, wrap_pem: str, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "Print Hub Lyon",
        "address": "1 rue de la République, 69001 Lyon",
        "country": "FR",
        "latitude": 45.764,
        "longitude": 4.8357,
        "processes": ["SLA", "FDM"],
        "materials": ["Tough 2000", "PETG"],
        "printer_models": ["Form 3L"],
        "build_volume_mm": [335, 200, 300],
        "capacity": 4,
        "contact_email": "ops@printhub.example",
        "rates": {
            "per_cm3_cents": {"Tough 2000": 45, "PETG": 10},
            "per_hour_cents": 800,
            "setup_fee_cents": 500,
        },
        "pop_public_key": pop_pem,
        "wrap_public_key": wrap_pem,
    } | overrides


def register_bureau(api: Any, **overrides: Any) -> Bureau:
    pop, wrap, pop_pem, wrap_pem = facility_keys()
    created = api.ok(
        "POST", "/v1/facilities", api.admin, json=facility_body(pop_pem, wrap_pem, **overrides)
    )
    return Bureau(api, created["facility"]["id"], created["token"], pop, wrap)
