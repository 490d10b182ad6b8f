"""Idempotency-Key for creating POSTs (IETF draft-ietf-httpapi-idempotency-key-header).

Use from a route in two short transactions, so that a second request with the
same key sees the first one in flight::

    key = require_key(request.headers.get("Idempotency-Key"))
    fp = fingerprint("POST", "/v1/orders", raw_body)
    with Session(engine) as s:                 # transaction 1: claim the key
        outcome = begin(s, principal.token_id, key, fp)
        s.commit()
    if isinstance(outcome, Replay):
        return stored response (outcome.status, outcome.body)
    try:
        with Session(engine) as s:             # transaction 2: the work + finish
            ...create the order...
            finish(s, outcome.record_id, 201, body)
            s.commit()
    except PartvaultError as exc:              # a failed request may be retried
        with Session(engine) as s:
            finish(s, outcome.record_id, exc.status, problem_body)  # or abandon()
            s.commit()

Or claim, work and finish in one transaction, the work under a savepoint of
its own so that a refusal keeps the claim (what `api.groupcommit` does for
issuance and redemption): a concurrent retry then waits for that commit and
replays instead of seeing the key in flight.

Rules: missing key → 400 ``idempotency-key-missing``; same key and same
request fingerprint, finished → the stored response is replayed; same key,
different fingerprint → 422 ``idempotency-key-reused``; same key still in
progress → 409 ``idempotency-key-in-flight``. Keys are scoped per actor and
expire after 24 h. The unique constraint on (scope, key) makes the claim
race-safe across processes: of two concurrent `begin`s exactly one inserts.
An in-progress record older than `stale_after` (a crashed request) may be
taken over by a retry, atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, Session, SQLModel, select

from inventory.db import (
    Prepared,
    UTCDateTime,
    delete_where,
    insert_if_absent,
    new_id,
    utcnow,
)
from inventory.errors import BadRequest, Conflict, Invalid

KEY_TTL = timedelta(hours=24)
STALE_AFTER = timedelta(minutes=5)
MAX_KEY_LENGTH = 255
IN_PROGRESS = "in_progress"
DONE = "done"


class IdempotencyRecord(SQLModel, table=True):
    __tablename__ = "idempotency_record"
    __table_args__ = (sa.UniqueConstraint("scope", "key"),)

    id: str = Field(primary_key=True, max_length=40)
    scope: str = Field(max_length=80)
    key: str = Field(max_length=MAX_KEY_LENGTH)
    request_fingerprint: str = Field(max_length=64)
    status: str = Field(max_length=16)
    response_status: int | None = None
    response_body: bytes | None = Field(default=None, sa_type=sa.LargeBinary)
    created_at: datetime = Field(sa_type=UTCDateTime)
    started_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


RECORDS: sa.Table = SQLModel.metadata.tables["idempotency_record"]


@dataclass(frozen=True)
class Replay:
    """The request was already done: send this response again."""

    status: int
    body: bytes


@dataclass(frozen=True)
class Started:
    """The key is claimed by this request; call `finish` with its response."""

    record_id: str


def require_key(header_value: str | None) -> str:
    """The Idempotency-Key header value, or 400 when missing or malformed."""
    if header_value is None or not header_value.strip():
        raise BadRequest(
            "this request needs an Idempotency-Key header", code="idempotency-key-missing"
        )
    key = header_value.strip()
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise BadRequest(
            "the Idempotency-Key is too long or not printable", code="idempotency-key-invalid"
        )
    return key


def fingerprint(method: str, path: str, body: bytes) -> str:
    """SHA-256 over method, path and the canonical JSON of `body` (raw if not JSON)."""
    try:
        canonical = json.dumps(
            json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except ValueError:
        canonical = body
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def begin(
    session: Session,
    scope: str,
    key: str,
    request_fingerprint: str,
    *,
    now: datetime | None = None,
    stale_after: timedelta = STALE_AFTER,
) -> Replay | Started:
    """Claim `key` for this request, or say what happened to it before."""
    now = now or utcnow()
    record_id = new_id("idem")
    record: dict[str, Any] = {
        "id": record_id,
        "scope": scope,
        "key": key,
        "request_fingerprint": request_fingerprint,
        "status": IN_PROGRESS,
        "response_status": None,
        "response_body": None,
        "created_at": now,
        "started_at": now,
        "expires_at": now + KEY_TTL,
    }
    if _try_insert(session, record):
        return Started(record_id)
    existing = _load(session, scope, key)
    if existing is None or existing.expires_at <= now:
        _delete_expired(session, scope, key, now)
        if _try_insert(session, record):
            return Started(record_id)
        raise Conflict(
            "this Idempotency-Key is being used right now", code="idempotency-key-in-flight"
        )
    return _outcome_for(session, existing, request_fingerprint, now, stale_after)


def _outcome_for(
    session: Session,
    existing: IdempotencyRecord,
    request_fingerprint: str,
    now: datetime,
    stale_after: timedelta,
) -> Replay | Started:
    if existing.request_fingerprint != request_fingerprint:
        raise Invalid(
            "this Idempotency-Key was used for a different request", code="idempotency-key-reused"
        )
    if existing.status == DONE:
        assert existing.response_status is not None
        return Replay(existing.response_status, existing.response_body or b"")
    if existing.started_at <= now - stale_after and _take_over(session, existing, now):
        return Started(existing.id)
    raise Conflict(
        "a request with this Idempotency-Key is still in progress", code="idempotency-key-in-flight"
    )


def prune_expired(session: Session, now: datetime, limit: int | None = None) -> int:
    """Delete the records whose keys expired by `now` (at most `limit`); how many.

    An expired key is free again anyway (`begin` deletes it when the key comes
    back); this removes the ones that never come back.
    """
    return delete_where(session, RECORDS.c.id, RECORDS.c.expires_at <= now, limit)


def _try_insert(session: Session, record: dict[str, Any]) -> bool:
    """Claim: ``INSERT … ON CONFLICT DO NOTHING``, so a taken key fails no statement.

    On PostgreSQL a claim by a concurrent, uncommitted transaction makes this
    wait for it, and then see its outcome.
    """
    return insert_if_absent(session, IdempotencyRecord, record, "id")


def _load(session: Session, scope: str, key: str) -> IdempotencyRecord | None:
    query = select(IdempotencyRecord).where(
        IdempotencyRecord.scope == scope, IdempotencyRecord.key == key
    )
    return session.exec(query.execution_options(populate_existing=True)).first()


def _delete_expired(session: Session, scope: str, key: str, now: datetime) -> None:
    table = RECORDS
    session.execute(
        sa.delete(table).where(
            table.c.scope == scope, table.c.key == key, table.c.expires_at <= now
        )
    )


def _take_over(session: Session, record: IdempotencyRecord, now: datetime) -> bool:
    """Atomically restart a stale in-progress record (compare-and-set on started_at)."""
    table = RECORDS
    result = session.execute(
        sa.update(table)
        .where(
            table.c.id == record.id,
            table.c.status == IN_PROGRESS,
            table.c.started_at == record.started_at,
        )
        .values(started_at=now)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def finish(session: Session, record_id: str, status: int, body: bytes) -> None:
    """Store the response of a started request; later retries replay it."""
    _FINISH.rows(
        session, {"record_id": record_id, "response_status": status, "response_body": body}
    )


_FINISH = Prepared(
    sa.update(RECORDS)
    .where(RECORDS.c.id == sa.bindparam("record_id"))
    .values(
        status=DONE,
        response_status=sa.bindparam("response_status"),
        response_body=sa.bindparam("response_body"),
    )
)


def abandon(session: Session, record_id: str) -> None:
    """Release a started key without a response (e.g. after a 5xx), so a retry runs."""
    table = RECORDS
    session.execute(sa.delete(table).where(table.c.id == record_id, table.c.status == IN_PROGRESS))
    session.flush()
