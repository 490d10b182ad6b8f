"""Group commit: the concurrent hot-path requests of one process share a transaction.

Licence issuance and redemption without an Idempotency-Key are each a few
statements and one commit; alone, the commit (an fsync on SQLite, the audit
head's row lock on PostgreSQL) and the statements that every request repeats
(token, facility, licence, certifications) dominate. So requests queue on the
event loop, and one worker thread at a time takes everything queued and runs
it in one transaction:

- each request runs under its own SAVEPOINT: a refused request (any
  `PartvaultError`) rolls back to it and answers alone, the others commit; its
  DPoP proof is recorded as spent again (a refused request's proof cannot be
  replayed either);
- reads of rows the requests never change are made once per transaction
  (`shared_reads`) and forgotten whenever a request rolls back;
- the audit events of the requests that succeed are appended as one batch
  (`queued_appends`);
- nobody is answered before the commit. If the transaction as a whole fails
  (the database went away, a bug), every request of the batch is run again
  alone, so one request's failure is never another's.

Exactly-once counting does not depend on any of this: it is still the
database's conditional UPDATE, across any number of processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import anyio
import msgspec
from sqlmodel import Session

from api.auth import Authorized, Credentials, authorize
from api.services import Services
from inventory.accounts import Principal, TokenKind
from inventory.db import forget_shared_reads, shared_reads
from inventory.errors import PartvaultError
from licensing.audit import AuditEvent, queued_appends
from licensing.tokens.replay import keep_spent

#: The most requests one transaction takes (bounds a batch's latency).
MAX_BATCH = 64
Work = Callable[[Session, Principal], Any]


@dataclass(frozen=True)
class Request:
    """One queued request: who calls, which roles may, and the work to run."""

    credentials: Credentials
    kinds: Collection[TokenKind]
    work: Work


@dataclass
class _Queue:
    """The requests of one process waiting on its event loop, and the task draining them."""

    loop: asyncio.AbstractEventLoop
    waiting: list[tuple[Request, asyncio.Future[bytes]]] = field(default_factory=list)
    draining: asyncio.Task[None] | None = None


_queues: WeakKeyDictionary[Services, _Queue] = WeakKeyDictionary()


async def run_grouped(services: Services, request: Request) -> bytes:
    """The JSON body of `request`'s result once committed, or the error that refused it."""
    loop = asyncio.get_running_loop()
    queue = _queues.get(services)
    if queue is None or queue.loop is not loop:
        queue = _queues[services] = _Queue(loop)
    answer: asyncio.Future[bytes] = loop.create_future()
    queue.waiting.append((request, answer))
    if queue.draining is None:
        queue.draining = loop.create_task(_drain(services, queue))
    return await answer


async def _drain(services: Services, queue: _Queue) -> None:
    """Commit batches until nothing waits; each batch is answered after its commit."""
    batch: list[tuple[Request, asyncio.Future[bytes]]] = []
    try:
        while queue.waiting:
            batch = queue.waiting[:MAX_BATCH]
            del queue.waiting[:MAX_BATCH]
            requests = [request for request, _ in batch]
            outcomes = await anyio.to_thread.run_sync(commit, services, requests)
            for (_, answer), outcome in zip(batch, outcomes, strict=True):
                _settle(answer, outcome)
    except BaseException:  # cancelled (shutdown): nobody may wait forever
        for _, answer in batch + queue.waiting:
            answer.cancel()
        queue.waiting.clear()
        raise
    finally:
        queue.draining = None


def commit(services: Services, batch: list[Request]) -> list[bytes | BaseException]:
    """Run `batch` in one transaction; if that fails as a whole, each request alone."""
    try:
        return _commit_together(services, batch)
    except Exception as exc:
        if len(batch) == 1:
            return [exc]
        return [commit(services, [request])[0] for request in batch]


def _commit_together(services: Services, batch: list[Request]) -> list[bytes | BaseException]:
    with (
        services.transaction() as session,
        shared_reads(session),
        queued_appends(session) as events,
    ):
        return [_attempt(session, events, request) for request in batch]


def _attempt(
    session: Session, events: list[AuditEvent], request: Request
) -> bytes | PartvaultError:
    """One request under its own savepoint: its JSON body, or the error that refused it."""
    queued = len(events)
    authorized: Authorized | None = None
    savepoint = session.begin_nested()
    try:
        authorized = authorize(session, request.credentials, request.kinds)
        body = msgspec.json.encode(request.work(session, authorized.principal))
        savepoint.commit()
    except PartvaultError as exc:
        savepoint.rollback()
        del events[queued:]
        forget_shared_reads(session)
        if authorized is not None and authorized.spent_proof is not None:
            keep_spent(session, authorized.spent_proof)
        return exc
    return body


def _settle(answer: asyncio.Future[bytes], outcome: bytes | BaseException) -> None:
    """Answer a waiting request (unless its client went away meanwhile)."""
    if answer.done():
        return
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
