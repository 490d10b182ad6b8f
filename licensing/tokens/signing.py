"""Licence signing keys: stored wrapped, rotated with overlap, published as JWKS.

One row per Ed25519 key in ``licence_signing_key``. The key id is the RFC 7638
thumbprint of the public key. The private key is stored only as a blob wrapped
by the `KeyRing` with the context ``partvault/licence-signing-key/<kid>`` (a
blob copied onto another row does not unwrap).

Exactly one key is *current* (``is_current`` is TRUE; retired rows hold NULL,
and a unique constraint allows one TRUE on SQLite and PostgreSQL alike). Every
signature raises ``verify_until`` to cover the signed token's expiry (rounded up
to the hour plus the clock-skew margin, so busy issuers update the row about
once an hour). A retired key stays in the JWKS until ``verify_until`` passes.

Transactions: `ensure_signing_key` and signing execute in the caller's
transaction (the caller commits); `rotate_signing_key` is a unit of work and
commits.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from inventory.crypto.keyring import KeyRing, rewrap_rows
from inventory.db import PreparedSelect, UTCDateTime, insert_if_absent, shared_read, utcnow
from inventory.errors import Conflict, Unavailable
from licensing.tokens._jose import ALG
from licensing.tokens.signer import new_ed25519_key
from licensing.tokens.thumbprint import ed25519_from_jwk, key_thumbprint, public_jwk

CLOCK_SKEW = timedelta(minutes=5)
_GRANULE = timedelta(hours=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class LicenceSigningKey(SQLModel, table=True):
    """An Ed25519 licence signing key; the private half only ever wrapped."""

    __tablename__ = "licence_signing_key"

    kid: str = Field(primary_key=True, max_length=64)
    public_jwk: str = Field(sa_type=sa.Text)
    wrapped_private_key: bytes = Field(sa_type=sa.LargeBinary)
    created_at: datetime = Field(sa_type=UTCDateTime)
    retired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    verify_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    is_current: bool | None = Field(default=True, unique=True)


def wrap_context(kid: str) -> bytes:
    """The key-ring context binding a wrapped private key to its kid."""
    return f"partvault/licence-signing-key/{kid}".encode()


class StoredKeySigner:
    """A signer for a stored key that extends the key's ``verify_until`` as it signs."""

    def __init__(
        self,
        session: Session,
        kid: str,
        private_key: Ed25519PrivateKey,
        verify_until: datetime | None = None,
    ) -> None:
        self._session = session
        self._kid = kid
        self._key = private_key
        self._covered = verify_until

    @property
    def kid(self) -> str:
        """The RFC 7638 thumbprint of the public key."""
        return self._kid

    def sign(self, message: bytes, *, valid_until: datetime) -> bytes:
        """Record that the key must verify until `valid_until`, then sign (no commit).

        ``verify_until`` only ever grows, so when the value read in this
        transaction already covers the token, no write is needed.
        """
        until = _cover(valid_until)
        if self._covered is None or self._covered < until:
            _extend_verify_until(self._session, self._kid, until)
            self._covered = until
        return self._key.sign(message)


def _cover(valid_until: datetime) -> datetime:
    """`valid_until` plus clock skew, rounded up to the next whole hour."""
    late = valid_until + CLOCK_SKEW
    granules = -(-(late - _EPOCH) // _GRANULE)
    return _EPOCH + granules * _GRANULE


def _extend_verify_until(session: Session, kid: str, until: datetime) -> None:
    """Raise ``verify_until`` to `until` atomically (no row lock when already covered)."""
    column = col(LicenceSigningKey.verify_until)
    statement = (
        sa.update(LicenceSigningKey)
        .where(col(LicenceSigningKey.kid) == kid)
        .where(sa.or_(column.is_(None), column < until))
        .values(verify_until=until)
    )
    session.execute(statement)


def ensure_signing_key(session: Session, keyring: KeyRing, *, now: datetime | None = None) -> str:
    """The current key's kid, creating the first key if there is none (no commit).

    Safe when several processes start at once: the insert skips on a conflict
    (``ON CONFLICT DO NOTHING``, waiting for a concurrent creator to finish)
    and the winner's key is returned.
    """
    existing = _current_row(session)
    if existing is not None:
        return existing.kid
    row = _new_row(keyring, now or utcnow())
    if insert_if_absent(session, LicenceSigningKey, row.model_dump(), "kid"):
        return row.kid
    winner = _current_row(session)
    if winner is None:
        raise Conflict("signing key changed concurrently; retry", code="signing-key-conflict")
    return winner.kid


def rotate_signing_key(session: Session, keyring: KeyRing, *, now: datetime | None = None) -> str:
    """Retire the current key, make a new one current, commit; return the new kid.

    The retired key stays published until the last token it signed expires.
    Unit of work: commits on success, rolls back and raises `Conflict` when
    another process rotated at the same moment.
    """
    moment = now or utcnow()
    try:
        old = _current_row(session, for_update=True)
        if old is not None:
            old.retired_at, old.is_current = moment, None
            session.add(old)
            session.flush()
        row = _new_row(keyring, moment)
        session.add(row)
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(
            "another signing-key rotation happened concurrently; retry",
            code="signing-key-rotation-conflict",
        ) from exc
    return row.kid


def current_signer(session: Session, keyring: KeyRing) -> StoredKeySigner:
    """A signer for the current key (unwrapped through the key ring once per process;
    one signer per transaction under `shared_reads`, which knows what it extended)."""
    return shared_read(session, ("signer",), lambda: _current_signer(session, keyring))


def _current_signer(session: Session, keyring: KeyRing) -> StoredKeySigner:
    row = _CURRENT_KEY.first(session, {})
    if row is None:
        raise Unavailable(
            "no licence signing key; run ensure_signing_key", code="signing-key-missing"
        )
    private_key = _unwrapped(keyring, row.kid, row.wrapped_private_key)
    return StoredKeySigner(session, row.kid, private_key, row.verify_until)


def _unwrapped(keyring: KeyRing, kid: str, wrapped: bytes) -> Ed25519PrivateKey:
    """The private key of `kid`, unwrapped on first use and then kept in this process.

    A kid is the thumbprint of its key, so a cached key can never go stale; a
    wrapped blob that does not match its kid is refused.
    """
    cached = _private_keys.get(kid)
    if cached is not None:
        return cached
    private_key = Ed25519PrivateKey.from_private_bytes(keyring.unwrap(wrapped, wrap_context(kid)))
    _require_kid(private_key.public_key(), kid)
    _private_keys[kid] = private_key
    return private_key


def published_key(session: Session, kid: str, now: datetime) -> Ed25519PublicKey | None:
    """The public key `kid` if it is in the JWKS at `now` (the same rule as `jwks`),
    else None. One prepared primary-key SELECT; the parsed key is kept per
    process (a kid is its key's thumbprint)."""
    row = shared_read(
        session,
        ("published-key", kid),
        lambda: _PUBLISHED_BY_KID.first(session, {"kid": kid, "now": now}),
    )
    return None if row is None else _public_key(row.kid, row.public_jwk)


@lru_cache(maxsize=64)
def _public_key(kid: str, jwk_json: str) -> Ed25519PublicKey:
    key = ed25519_from_jwk(json.loads(jwk_json))
    _require_kid(key, kid)
    return key


def _require_kid(public_key: Ed25519PublicKey, kid: str) -> None:
    """A stored key must be the key its kid (its RFC 7638 thumbprint) names."""
    if key_thumbprint(public_key) != kid:
        raise Unavailable("stored signing key does not match its kid", code="signing-key-corrupt")


def jwks(session: Session, now: datetime) -> dict[str, Any]:
    """The public JWK Set (current key first), with ``kid``, ``alg`` and ``use``."""
    keys = [
        {**json.loads(row.public_jwk), "kid": row.kid, "alg": ALG, "use": "sig"}
        for row in _published(session, now)
    ]
    return {"keys": keys}


def _published(session: Session, now: datetime) -> list[LicenceSigningKey]:
    """The current key and retired keys whose ``verify_until`` is still ahead."""
    order = (col(LicenceSigningKey.is_current).is_(None), col(LicenceSigningKey.created_at).desc())
    statement = select(LicenceSigningKey).where(_STILL_PUBLISHED).order_by(*order)
    return list(session.exec(statement, params={"now": now}))


def _current_row(session: Session, *, for_update: bool = False) -> LicenceSigningKey | None:
    """The current key's row, optionally locked (PostgreSQL) for rotation."""
    statement = select(LicenceSigningKey).where(col(LicenceSigningKey.is_current).is_(True))
    if for_update:
        statement = statement.with_for_update()
    return session.exec(statement).first()


_keys = LicenceSigningKey.__table__  # type: ignore[attr-defined]
_CURRENT_KEY = PreparedSelect(
    sa.select(_keys.c.kid, _keys.c.wrapped_private_key, _keys.c.verify_until).where(
        _keys.c.is_current.is_(True)
    )
)
#: The publication rule: the current key, and retired keys still needed at ``:now``.
_STILL_PUBLISHED = sa.or_(_keys.c.retired_at.is_(None), _keys.c.verify_until > sa.bindparam("now"))
_PUBLISHED_BY_KID = PreparedSelect(
    sa.select(_keys.c.kid, _keys.c.public_jwk).where(
        _keys.c.kid == sa.bindparam("kid"), _STILL_PUBLISHED
    )
)
#: kid → unwrapped private key, filled by `_unwrapped`.
_private_keys: dict[str, Ed25519PrivateKey] = {}


def _new_row(keyring: KeyRing, now: datetime) -> LicenceSigningKey:
    """A fresh Ed25519 key as a current row, its private half wrapped."""
    private_key, seed = new_ed25519_key()
    public_key = private_key.public_key()
    kid = key_thumbprint(public_key)
    return LicenceSigningKey(
        kid=kid,
        public_jwk=json.dumps(public_jwk(public_key), sort_keys=True),
        wrapped_private_key=keyring.wrap(seed, wrap_context(kid)),
        created_at=now,
        is_current=True,
    )


def rewrap_signing_keys(session: Session, keyring: KeyRing) -> int:
    """Re-wrap every stored private signing key under the key ring's current KEK."""
    rows = session.exec(select(LicenceSigningKey)).all()
    changed = rewrap_rows(keyring, rows, "wrapped_private_key", lambda r: wrap_context(r.kid))
    session.add_all(changed)
    session.flush()
    return len(changed)
