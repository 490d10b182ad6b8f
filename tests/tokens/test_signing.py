"""Signing keys on SQLite and PostgreSQL: wrapped at rest, rotation with overlap, JWKS."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from inventory.errors import Unavailable
from licensing.tokens.licence import issue_licence, verify_licence
from licensing.tokens.offline import verify_offline
from licensing.tokens.signing import (
    LicenceSigningKey,
    current_signer,
    ensure_signing_key,
    jwks,
    published_key,
    rotate_signing_key,
    wrap_context,
)
from licensing.tokens.thumbprint import jwk_thumbprint


def _issue(session: Session, keyring: Any, params: dict[str, Any], **changes: Any) -> str:
    return issue_licence(current_signer(session, keyring), **{**params, **changes})


def _verify(session: Session, token: str, tools: SimpleNamespace, now: datetime) -> Any:
    """Verify as the server does (one kid at a time), after checking that this
    per-kid lookup and the JWKS agree on every stored key."""
    published = {key["kid"] for key in jwks(session, now)["keys"]}
    for row in session.exec(select(LicenceSigningKey)).all():
        assert (published_key(session, row.kid, now) is not None) == (row.kid in published)
    return verify_licence(
        token,
        key_lookup=lambda kid: published_key(session, kid, now),
        issuer=tools.ISSUER,
        audience=tools.AUDIENCE,
        now=now,
    )


def _seed(keyring: Any, row: LicenceSigningKey) -> bytes:
    return keyring.unwrap(row.wrapped_private_key, wrap_context(row.kid))


def test_ensure_creates_one_wrapped_key(
    engine: Engine, keyring: Any, tools: SimpleNamespace
) -> None:
    with Session(engine) as session:
        kid = ensure_signing_key(session, keyring, now=tools.NOW)
        assert ensure_signing_key(session, keyring, now=tools.NOW) == kid
        session.commit()
        row = session.exec(select(LicenceSigningKey)).one()
        seed = _seed(keyring, row)
    assert keyring.contexts == [wrap_context(kid)]
    assert kid == jwk_thumbprint(json.loads(row.public_jwk))
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    assert public.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ) == tools.unb64(json.loads(row.public_jwk)["x"])
    with engine.connect() as conn:
        raw = conn.execute(sa.text("SELECT * FROM licence_signing_key")).one()._mapping
    stored = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in raw.values())
    for encoding in (seed, tools.b64(seed).encode(), seed.hex().encode()):
        assert encoding not in stored
    assert "d" not in json.loads(raw["public_jwk"])
    with pytest.raises(InvalidTag):
        keyring.unwrap(row.wrapped_private_key, wrap_context("another-kid"))


def test_ensure_leaves_the_commit_to_the_caller(engine: Engine, keyring: Any) -> None:
    with Session(engine) as session:
        ensure_signing_key(session, keyring)
        session.rollback()
    with Session(engine) as session:
        assert session.exec(select(LicenceSigningKey)).all() == []


def test_concurrent_first_start_yields_one_key(engine: Engine, keyring: Any) -> None:
    kids: list[str] = []

    def start() -> None:
        with Session(engine) as other:
            kids.append(ensure_signing_key(other, keyring))
            other.commit()

    with Session(engine) as first:
        kids.append(ensure_signing_key(first, keyring))
        thread = threading.Thread(target=start)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive(), "the second creator must wait for the first transaction"
        first.commit()
    thread.join(timeout=10)
    with Session(engine) as session:
        assert len(session.exec(select(LicenceSigningKey)).all()) == 1
    assert len(kids) == 2 and kids[0] == kids[1]


def test_current_signer_requires_a_key(
    engine: Engine, keyring: Any, tools: SimpleNamespace
) -> None:
    with Session(engine) as session:
        error = tools.expect(lambda: current_signer(session, keyring), 503, "signing-key-missing")
        assert isinstance(error, Unavailable)


def test_signing_records_verify_until(
    engine: Engine, keyring: Any, tools: SimpleNamespace, licence_params: dict[str, Any]
) -> None:
    with Session(engine) as session:
        kid = ensure_signing_key(session, keyring, now=tools.NOW)
        token = _issue(session, keyring, licence_params)  # expires 14:00
        _issue(session, keyring, licence_params, expires_at=tools.NOW + timedelta(minutes=5))
        session.commit()
        row = session.get(LicenceSigningKey, kid)
        assert row is not None
        assert row.verify_until == datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # 14:05 → 15:00
        assert _verify(session, token, tools, tools.NOW).kid == kid


def test_signer_writes_verify_until_only_when_it_grows(
    engine: Engine, keyring: Any, tools: SimpleNamespace, licence_params: dict[str, Any]
) -> None:
    with Session(engine) as session:
        ensure_signing_key(session, keyring, now=tools.NOW)
        session.commit()
        updates: list[str] = []

        def count_updates(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
            if statement.lstrip().upper().startswith("UPDATE LICENCE_SIGNING_KEY"):
                updates.append(statement)

        sa.event.listen(engine, "before_cursor_execute", count_updates)
        try:
            _issue(session, keyring, licence_params)  # expires 14:00: covered to 15:00
            _issue(session, keyring, licence_params)  # same hour: already covered
            session.commit()
            _issue(session, keyring, licence_params)  # a new transaction reads 15:00 back
            _issue(session, keyring, licence_params, expires_at=tools.NOW + timedelta(hours=3))
            session.commit()
        finally:
            sa.event.remove(engine, "before_cursor_execute", count_updates)
        assert len(updates) == 2  # the first signature and the one three hours out


def test_rotation_keeps_old_licences_until_expiry_then_drops_the_key(
    engine: Engine, keyring: Any, tools: SimpleNamespace, licence_params: dict[str, Any]
) -> None:
    with Session(engine) as session:
        old = ensure_signing_key(session, keyring, now=tools.NOW)
        old_licence = _issue(session, keyring, licence_params)  # expires 14:00
        session.commit()
        new = rotate_signing_key(session, keyring, now=tools.NOW + timedelta(minutes=1))
        new_licence = _issue(session, keyring, licence_params, jti="lic_after_rotation")
        session.commit()

        assert [k["kid"] for k in jwks(session, tools.NOW)["keys"]] == [new, old]
        assert _verify(session, old_licence, tools, tools.NOW + timedelta(hours=1)).kid == old
        assert _verify(session, new_licence, tools, tools.NOW).kid == new
        late = tools.NOW + timedelta(hours=2, seconds=20)  # past exp, within leeway
        assert _verify(session, old_licence, tools, late).kid == old

        after = datetime(2026, 11, 23, 15, 0, 1, tzinfo=UTC)
        assert [k["kid"] for k in jwks(session, after)["keys"]] == [new]
        tools.expect(
            lambda: _verify(session, old_licence, tools, after), 401, "licence-kid-unknown"
        )


def test_retired_key_that_signed_nothing_leaves_jwks_at_once(
    engine: Engine, keyring: Any, tools: SimpleNamespace
) -> None:
    with Session(engine) as session:
        first = ensure_signing_key(session, keyring, now=tools.NOW)
        session.commit()
        second = rotate_signing_key(session, keyring, now=tools.NOW)
        third = rotate_signing_key(session, keyring, now=tools.NOW)
        assert len({first, second, third}) == 3
        assert [k["kid"] for k in jwks(session, tools.NOW)["keys"]] == [third]
        current = session.exec(
            select(LicenceSigningKey).where(LicenceSigningKey.is_current == True)  # noqa: E712
        ).all()
        assert [row.kid for row in current] == [third]


def test_jwks_is_public_only_and_verifies_offline(
    engine: Engine, keyring: Any, tools: SimpleNamespace, licence_params: dict[str, Any]
) -> None:
    with Session(engine) as session:
        ensure_signing_key(session, keyring, now=tools.NOW)
        token = _issue(session, keyring, licence_params)
        session.commit()
        document = jwks(session, tools.NOW)
        seed = _seed(keyring, session.exec(select(LicenceSigningKey)).one())
    (key,) = document["keys"]
    assert set(key) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert key["kid"] == jwk_thumbprint(key)
    text = json.dumps(document)
    assert tools.b64(seed) not in text and seed.hex() not in text
    claims = verify_offline(
        token, json.loads(text), now=tools.NOW, issuer=tools.ISSUER, audience=tools.AUDIENCE
    )
    assert claims.prints == 3


def test_injected_kid_never_reaches_the_database(
    engine: Engine, keyring: Any, tools: SimpleNamespace, licence: str
) -> None:
    head, body = tools.split(licence)
    with Session(engine) as session:
        ensure_signing_key(session, keyring, now=tools.NOW)
        session.commit()
        for kid in ("' OR 1=1 --", "../../etc/passwd", "x'; DROP TABLE licence_signing_key; --"):
            forged = tools.forge({**head, "kid": kid}, body, Ed25519PrivateKey.generate().sign)
            tools.expect(
                lambda t=forged: _verify(session, t, tools, tools.NOW), 401, "licence-kid-unknown"
            )
        assert len(session.exec(select(LicenceSigningKey)).all()) == 1
