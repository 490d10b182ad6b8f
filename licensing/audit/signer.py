"""The checkpoint signing key: Ed25519, stored with its private half wrapped.

One row per key in ``audit_log_key``. The key id is the hex SHA-256 of the raw
public key (the signed-note key ID depends on the key *name*, i.e. the log
origin, so it is derived at signing time, not stored). The private key is
stored only as a blob wrapped by the `KeyRing` with the context
``partvault/audit-log-key/<key id>``: a blob copied onto another row does not
unwrap. Exactly one key is current (``is_current`` TRUE, unique; retired rows
would hold NULL).

`ensure_log_key` runs in the caller's transaction (the caller commits) and is
safe when several processes start at once. `current_log_signer` returns a
`NoteSigner` for `latest_checkpoint`; `rotate_log_key` hands the log over to a
new key.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from sqlmodel import Field, Session, SQLModel, col, select

from inventory.crypto.keyring import KeyRing, rewrap_rows
from inventory.db import UTCDateTime, insert_if_absent, utcnow
from inventory.errors import Conflict, Unavailable
from licensing.audit.checkpoint import verifier_key_string
from licensing.audit.events import AuditEvent, EventType
from licensing.audit.log import append_event, handover_checkpoint
from licensing.tokens.signer import new_ed25519_key


class AuditLogKey(SQLModel, table=True):
    """An Ed25519 checkpoint signing key; the private half only ever wrapped."""

    __tablename__ = "audit_log_key"

    key_id: str = Field(primary_key=True, max_length=64)
    public_key: bytes = Field(sa_type=sa.LargeBinary)
    wrapped_private_key: bytes = Field(sa_type=sa.LargeBinary)
    created_at: datetime = Field(sa_type=UTCDateTime)
    retired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    is_current: bool | None = Field(default=True, unique=True)


def wrap_context(key_id: str) -> bytes:
    """The key-ring context binding a wrapped private key to its key id."""
    return f"partvault/audit-log-key/{key_id}".encode()


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def log_key_id(public_key: Ed25519PublicKey) -> str:
    """The stored key id: hex SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()


class LogSigner:
    """A `NoteSigner` over an unwrapped checkpoint key."""

    def __init__(self, key_id: str, private_key: Ed25519PrivateKey) -> None:
        self._key_id = key_id
        self._key = private_key

    @property
    def key_id(self) -> str:
        """The stored key id (hex SHA-256 of the public key)."""
        return self._key_id

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)

    def public_key(self) -> Ed25519PublicKey:
        """The matching public key."""
        return self._key.public_key()

    def verifier_key(self, origin: str) -> str:
        """The ``<origin>+<hex key ID>+<base64 key>`` string a brand pins."""
        return verifier_key_string(origin, self.public_key())


def ensure_log_key(session: Session, keyring: KeyRing, *, now: datetime | None = None) -> str:
    """The current checkpoint key's id, creating the first key if none (no commit)."""
    existing = _current_row(session)
    if existing is not None:
        return existing.key_id
    row = _new_row(keyring, now or utcnow())
    if insert_if_absent(session, AuditLogKey, row.model_dump(), "key_id"):
        return row.key_id
    winner = _current_row(session)
    if winner is None:
        raise Conflict("audit log key changed concurrently; retry", code="log-key-conflict")
    return winner.key_id


def current_log_signer(session: Session, keyring: KeyRing) -> LogSigner:
    """A signer for the current checkpoint key (unwrapped through the key ring)."""
    row = _current_row(session)
    if row is None:
        raise Unavailable("no audit log key; run ensure_log_key", code="log-key-missing")
    seed = keyring.unwrap(row.wrapped_private_key, wrap_context(row.key_id))
    private_key = Ed25519PrivateKey.from_private_bytes(seed)
    public = private_key.public_key()
    if _raw_public(public) != bytes(row.public_key) or log_key_id(public) != row.key_id:
        raise Unavailable("stored audit log key does not match its id", code="log-key-corrupt")
    return LogSigner(row.key_id, private_key)


def rotate_log_key(session: Session, keyring: KeyRing, origin: str, *, actor: str) -> str:
    """Retire the current checkpoint key, make a new one current (no commit).

    Returns the new key's verifier key string, the one brands pin from now on.

    The rotation is an audit event naming both keys, and the checkpoint that
    covers it is a handover signed by both: `verify_log` follows it from a key
    pinned before the rotation as from one pinned after it.
    """
    retired = current_log_signer(session, keyring)
    private_key, row = _new_key(keyring, utcnow())
    current = LogSigner(row.key_id, private_key)
    append_event(
        session,
        AuditEvent(
            type=EventType.CHECKPOINT_KEY_ROTATED,
            actor=actor,
            facts={
                "retired": retired.verifier_key(origin),
                "current": current.verifier_key(origin),
            },
        ),
    )
    handover_checkpoint(session, retired, current, origin)
    session.execute(
        sa.update(AuditLogKey)
        .where(col(AuditLogKey.key_id) == retired.key_id)
        .values(is_current=None, retired_at=row.created_at)
    )
    session.add(row)
    session.flush()
    return current.verifier_key(origin)


def current_public_key(session: Session) -> Ed25519PublicKey:
    """The current checkpoint key's public half (no key-ring access)."""
    row = _current_row(session)
    if row is None:
        raise Unavailable("no audit log key; run ensure_log_key", code="log-key-missing")
    return Ed25519PublicKey.from_public_bytes(bytes(row.public_key))


def rewrap_log_keys(session: Session, keyring: KeyRing) -> int:
    """Re-wrap every stored checkpoint key under the key ring's current KEK (no commit)."""
    rows = session.exec(select(AuditLogKey)).all()
    changed = rewrap_rows(keyring, rows, "wrapped_private_key", lambda r: wrap_context(r.key_id))
    session.add_all(changed)
    session.flush()
    return len(changed)


def _current_row(session: Session) -> AuditLogKey | None:
    statement = select(AuditLogKey).where(col(AuditLogKey.is_current).is_(True))
    return session.exec(statement).first()


def _new_row(keyring: KeyRing, now: datetime) -> AuditLogKey:
    return _new_key(keyring, now)[1]


def _new_key(keyring: KeyRing, now: datetime) -> tuple[Ed25519PrivateKey, AuditLogKey]:
    private_key, seed = new_ed25519_key()
    public_key = private_key.public_key()
    key_id = log_key_id(public_key)
    row = AuditLogKey(
        key_id=key_id,
        public_key=_raw_public(public_key),
        wrapped_private_key=keyring.wrap(seed, wrap_context(key_id)),
        created_at=now,
        is_current=True,
    )
    return private_key, row
