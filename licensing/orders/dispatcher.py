"""Deliver the webhook outbox: claim due rows, POST them signed, record the outcome.

Guarantees
- At least once: a row is claimed with a lease (`lease_until`, `lease_token`)
  in a committed transaction, delivered outside any transaction, then its
  outcome is written only if the lease is still ours. A dispatcher that dies
  mid-delivery leaves the row claimed until the lease expires; it is then due
  again with the same ``webhook-id``, so receivers de-duplicate on it.
- Safe across processes: the claim is one ``UPDATE … WHERE seq IN (SELECT …
  FOR UPDATE SKIP LOCKED)`` on PostgreSQL; on SQLite the same statement is
  atomic because SQLite has a single writer (``FOR UPDATE`` is not rendered).
  The outer ``WHERE`` re-checks the lease, so two claims never share a row.
- Ordered per endpoint: only an endpoint's oldest open row (pending or
  awaiting retry) is ever claimable, so its events arrive in enqueue order and
  a later event waits while an earlier one is being retried. A dead row no
  longer blocks the ones behind it. There is no order across endpoints.
- Retries: 2xx → delivered; 410 → the endpoint is disabled and the row is
  dead; anything else (other status, timeout, connection error) → retried
  after ``schedule.delays[attempts]`` (the last delay repeats) until
  ``schedule.max_age`` after the row was created, then dead. Every attempt is
  written to ``webhook_delivery_log``. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from inventory.crypto.keyring import KeyRing
from inventory.db import new_id, utcnow
from licensing.orders.webhooks import (
    DELIVERY_LOG,
    ENDPOINTS,
    OUTBOX,
    OutboxStatus,
    sign,
    unwrap_secret,
)

logger = logging.getLogger(__name__)

OPEN = (OutboxStatus.pending, OutboxStatus.failed)
DEFAULT_DELAYS = tuple(
    timedelta(seconds=s) for s in (0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600)
)


@dataclass(frozen=True)
class RetrySchedule:
    """Delay before attempt n+1 is ``delays[n]`` (the last repeats), within `max_age`.

    The default follows the Standard Webhooks suggestion: immediately, 5 s,
    5 min, 30 min, 2 h, 5 h, 10 h, 10 h, … until 3 days after creation.
    """

    delays: tuple[timedelta, ...] = DEFAULT_DELAYS
    max_age: timedelta = timedelta(days=3)

    def next_delay(self, attempts: int) -> timedelta:
        return self.delays[min(attempts, len(self.delays) - 1)]


@dataclass(frozen=True)
class Claimed:
    """A leased outbox row with what is needed to send it."""

    seq: int
    msg_id: str
    endpoint_id: str
    payload: bytes
    attempts: int
    created_at: datetime
    lease_token: str
    url: str
    secret_wrapped: bytes
    enabled: bool


@dataclass(frozen=True)
class Attempt:
    """What happened when one row was sent."""

    outcome: str  # delivered | failed | dead | gone | skipped
    status_code: int | None
    error: str | None
    duration_ms: int


class Dispatcher:
    """Sends due outbox rows; `run_once` for one pass, `run_forever` as a background task."""

    def __init__(
        self,
        engine: Engine,
        http_client: httpx.Client,
        keyring: KeyRing,
        schedule: RetrySchedule | None = None,
        clock: Callable[[], datetime] = utcnow,
        *,
        lease: timedelta = timedelta(seconds=60),
        batch_size: int = 16,
        timeout: float = 10.0,
        turn: AbstractContextManager[object] | None = None,
    ) -> None:
        """`turn` is held around each transaction: the server's turn at the
        database's writer lock (`inventory.db.writer_turn`)."""
        if lease.total_seconds() <= 4 * timeout:  # connect, pool, write, read phases
            raise ValueError("the lease must outlast the HTTP timeouts")
        self.engine = engine
        self.http = http_client
        self.keyring = keyring
        self.schedule = schedule or RetrySchedule()
        self.clock = clock
        self.lease = lease
        self.batch_size = batch_size
        self.timeout = timeout
        self.turn = turn or nullcontext()

    def run_once(self) -> int:
        """Claim due rows and send them in parallel; returns the number handled.

        A batch holds at most one row per endpoint, and all of it is sent at
        once, so every row is done well within its lease.
        """
        claimed = self.claim()
        if claimed:
            with ThreadPoolExecutor(max_workers=len(claimed)) as pool:
                list(pool.map(self.deliver, claimed))
        return len(claimed)

    async def run_forever(self, stop_event: asyncio.Event, interval: float = 1.0) -> None:
        """Loop `run_once` in a worker thread until `stop_event` is set."""
        while not stop_event.is_set():
            handled = 0
            try:
                handled = await asyncio.to_thread(self.run_once)
            except Exception:
                logger.exception("webhook dispatcher pass failed")
            if handled == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_event.wait(), interval)

    def claim(self) -> list[Claimed]:
        """Lease the due head row of each endpoint (committed before any sending)."""
        now, token = self.clock(), secrets.token_hex(16)
        with self.turn, self.engine.begin() as conn:
            conn.execute(
                sa.update(OUTBOX)
                .where(OUTBOX.c.seq.in_(self._due_heads(now)), _unleased(OUTBOX.c, now))
                .values(lease_until=now + self.lease, lease_token=token)
            )
            rows = conn.execute(_claimed_rows(token)).all()
        return [Claimed(**row._asdict()) for row in rows]

    def _due_heads(self, now: datetime) -> sa.Select[tuple[int]]:
        cand = OUTBOX.alias("cand")
        earlier = OUTBOX.alias("earlier")
        earlier_open = sa.exists().where(
            earlier.c.endpoint_id == cand.c.endpoint_id,
            earlier.c.status.in_(OPEN),
            earlier.c.seq < cand.c.seq,
        )
        return (
            sa.select(cand.c.seq)
            .where(
                cand.c.status.in_(OPEN),
                cand.c.next_attempt_at <= now,
                _unleased(cand.c, now),
                ~earlier_open,
            )
            .order_by(cand.c.seq)
            .limit(self.batch_size)
            .with_for_update(skip_locked=True)
        )

    def deliver(self, row: Claimed) -> Attempt:
        """Send one claimed row and record the attempt."""
        attempt = self._attempt(row)
        self._record(row, attempt)
        return attempt

    def _attempt(self, row: Claimed) -> Attempt:
        if not row.enabled:
            return Attempt("skipped", None, "endpoint-disabled", 0)
        try:
            return self._send(row)
        except Exception as exc:  # e.g. the key ring: count it, never wedge the endpoint
            logger.exception("webhook %s could not be prepared", row.msg_id)
            return Attempt("failed", None, f"internal error: {type(exc).__name__}", 0)

    def _send(self, row: Claimed) -> Attempt:
        secret = unwrap_secret(self.keyring, row.endpoint_id, row.secret_wrapped)
        timestamp = int(self.clock().timestamp())
        headers = {
            "content-type": "application/json",
            "webhook-id": row.msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, row.msg_id, timestamp, row.payload),
        }
        started = time.perf_counter()
        try:  # streamed: only the status line and headers are read, never the body
            with self.http.stream(
                "POST",
                row.url,
                content=row.payload,
                headers=headers,
                timeout=self.timeout,
                follow_redirects=False,
            ) as response:
                code = response.status_code
        except httpx.HTTPError as exc:
            return Attempt("failed", None, f"{type(exc).__name__}: {exc}"[:500], _ms(started))
        outcome = "delivered" if 200 <= code < 300 else "gone" if code == 410 else "failed"
        return Attempt(
            outcome, code, None if outcome == "delivered" else f"HTTP {code}", _ms(started)
        )

    def _record(self, row: Claimed, attempt: Attempt) -> None:
        now = self.clock()
        status, next_at = self._next_state(row, attempt, now)
        with self.turn, self.engine.begin() as conn:
            conn.execute(
                sa.update(OUTBOX)
                .where(OUTBOX.c.seq == row.seq, OUTBOX.c.lease_token == row.lease_token)
                .values(
                    status=status,
                    attempts=row.attempts + 1,
                    next_attempt_at=next_at,
                    last_status_code=attempt.status_code,
                    last_error=attempt.error,
                    lease_until=None,
                    lease_token=None,
                )
            )
            conn.execute(
                sa.insert(DELIVERY_LOG).values(
                    id=new_id("whdl"),
                    message_id=row.msg_id,
                    endpoint_id=row.endpoint_id,
                    attempt=row.attempts + 1,
                    attempted_at=now,
                    status_code=attempt.status_code,
                    error=attempt.error,
                    duration_ms=attempt.duration_ms,
                    outcome=status,
                )
            )
            if attempt.outcome == "gone":
                _disable(conn, row.endpoint_id, "endpoint answered 410 Gone")
        logger.info(
            "webhook %s to %s: %s (%s)", row.msg_id, row.endpoint_id, status, attempt.status_code
        )

    def _next_state(self, row: Claimed, attempt: Attempt, now: datetime) -> tuple[str, datetime]:
        if attempt.outcome == "delivered":
            return OutboxStatus.delivered, now
        if attempt.outcome in ("gone", "skipped"):
            return OutboxStatus.dead, now
        next_at = now + self.schedule.next_delay(row.attempts + 1)
        if next_at > row.created_at + self.schedule.max_age:
            return OutboxStatus.dead, now
        return OutboxStatus.failed, next_at


def _unleased(
    cols: sa.ColumnCollection[str, sa.ColumnElement[object]], now: datetime
) -> sa.ColumnElement[bool]:
    return sa.or_(cols.lease_until.is_(None), cols.lease_until <= now)


def _claimed_rows(token: str) -> sa.Select[tuple[object, ...]]:
    o, e = OUTBOX, ENDPOINTS
    return (
        sa.select(
            o.c.seq,
            o.c.id.label("msg_id"),
            o.c.endpoint_id,
            o.c.payload,
            o.c.attempts,
            o.c.created_at,
            o.c.lease_token,
            e.c.url,
            e.c.secret_wrapped,
            e.c.enabled,
        )
        .join(e, e.c.id == o.c.endpoint_id)
        .where(o.c.lease_token == token)
        .order_by(o.c.seq)
    )


def _disable(conn: sa.Connection, endpoint_id: str, reason: str) -> None:
    endpoint = ENDPOINTS
    conn.execute(
        sa.update(endpoint)
        .where(endpoint.c.id == endpoint_id)
        .values(enabled=False, disabled_reason=reason)
    )


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
