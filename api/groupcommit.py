"""Group commit: the concurrent hot-path requests of one process share a transaction.

Licence issuance and redemption without an Idempotency-Key are each a few
statements and one commit; alone, the commit (an fsync on SQLite, the audit
head's row lock on PostgreSQL) and the statements that every request repeats
(token, facility, licence, certifications) dominate. So requests queue on the
event loop, and one worker thread at a time takes everything queued and runs
it in one transaction. Before that, a request's DPoP proof is checked as far as
it can be without the database (`api.auth.check_proof_ahead`), in another worker
thread: the signature check runs without the GIL, on the other core, while the
batch before commits, and outside the writer turn that server processes take one
at a time. In the transaction:

- each request runs under its own SAVEPOINT: a refused request (any
  `PartvaultError`) rolls back to it and answers alone, the others commit; its
  DPoP proof is recorded as spent again (a refused request's proof cannot be
  replayed either);
- reads of rows the requests never change are made once per transaction
  (`shared_reads`) and forgotten whenever a request rolls back;
- the audit events of the requests that succeed are appended as one batch
  (`queued_appends`);
- a request with an Idempotency-Key claims its key, works and stores its
  response under its savepoint, so the claim, the work and the stored response
  commit together (a retry waits for that commit and replays, in any process);
  a refusal after the claim is stored too and replayed like a success;
- requests run in the order of their URI (`_lock_order`), so batches of
  several processes take licence rows in one order and never deadlock on them;
- nobody is answered before the commit. If the transaction as a whole fails
  (the database went away, a bug), every request of the batch is run again
  alone, so one request's failure is never another's (and claims nothing).

Exactly-once counting does not depend on any of this: it is still the
database's conditional UPDATE, across any number of processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

import anyio
import msgspec
from sqlmodel import Session

from api.auth import Authorized, Credentials, authorize, check_proof_ahead
from api.problems import problem_body
from api.services import Services
from inventory.accounts import Principal, TokenKind
from inventory.db import forget_shared_reads, is_deadlock, shared_reads
from inventory.errors import PartvaultError
from licensing.audit import AuditEvent, queued_appends
from licensing.orders import idempotency
from licensing.orders.idempotency import Replay
from licensing.tokens.replay import keep_spent

#: The most requests one transaction takes (bounds a batch's latency).
MAX_BATCH = 64
#: How often a lone request that lost a deadlock is run again.
DEADLOCK_RETRIES = 3
Work = Callable[[Session, Principal], Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Once:
    """What a request with an Idempotency-Key needs to run once per key."""

    key: str  # as sent: validated after authentication, as `require_key` does it
    fingerprint: str
    path: str
    status_code: int
    request_id: str  # for a stored problem document, read on the request's own task


@dataclass(frozen=True)
class Request:
    """One queued request: who calls, which roles may, the work to run, and its
    Idempotency-Key (if it came with one)."""

    credentials: Credentials
    kinds: Collection[TokenKind]
    work: Work
    once: Once | None = None


#: What a request gets: its JSON body, the stored answer to replay, or its refusal.
Outcome = bytes | Replay | BaseException


Queued = tuple[Request, asyncio.Future[bytes | Replay]]


@dataclass
class _Queue:
    """The requests of one process on its event loop: those whose proofs are still to
    be checked, those waiting for a transaction, and the tasks serving each list."""

    loop: asyncio.AbstractEventLoop
    unchecked: list[Queued] = field(default_factory=list)
    waiting: list[Queued] = field(default_factory=list)
    checking: asyncio.Task[None] | None = None
    draining: asyncio.Task[None] | None = None


_queues: WeakKeyDictionary[Services, _Queue] = WeakKeyDictionary()


async def run_grouped(services: Services, request: Request) -> bytes | Replay:
    """The JSON body of `request`'s result once committed (or, for a repeated
    Idempotency-Key, the stored answer), or the error that refused it."""
    loop = asyncio.get_running_loop()
    queue = _queues.get(services)
    if queue is None or queue.loop is not loop:
        queue = _queues[services] = _Queue(loop)
    answer: asyncio.Future[bytes | Replay] = loop.create_future()
    if request.credentials.proof:
        queue.unchecked.append((request, answer))
        if queue.checking is None:
            queue.checking = loop.create_task(_check(services, queue))
    else:
        _wait_for_commit(services, queue, [(request, answer)])
    return await answer


async def _check(services: Services, queue: _Queue) -> None:
    """Check the proofs of the queued requests in a worker thread, then queue them to
    commit. The check (an Ed25519 verification, which runs without the GIL) then
    runs on another core while the batch before commits, and outside the
    database's writer turn, which server processes take one at a time."""

    def checked(batch: list[Queued], requests: list[Request]) -> None:
        queued = [(request, answer) for request, (_, answer) in zip(requests, batch, strict=True)]
        _wait_for_commit(services, queue, queued)

    try:
        await _serve(queue.unchecked, _check_proofs, checked)
    finally:
        queue.checking = None


def _check_proofs(requests: list[Request]) -> list[Request]:
    return [
        replace(request, credentials=check_proof_ahead(request.credentials)) for request in requests
    ]


def _wait_for_commit(services: Services, queue: _Queue, queued: list[Queued]) -> None:
    queue.waiting += queued
    if queue.draining is None:
        queue.draining = queue.loop.create_task(_drain(services, queue))


async def _drain(services: Services, queue: _Queue) -> None:
    """Commit batches until nothing waits; each batch is answered after its commit."""

    def committed(batch: list[Queued], outcomes: list[Outcome]) -> None:
        for (_, answer), outcome in zip(batch, outcomes, strict=True):
            _settle(answer, outcome)

    try:
        await _serve(queue.waiting, partial(commit, services), committed)
    finally:
        queue.draining = None


async def _serve(
    pending: list[Queued],
    step: Callable[[list[Request]], list[T]],
    then: Callable[[list[Queued], list[T]], None],
) -> None:
    """Until `pending` is empty, take up to `MAX_BATCH` of its requests, run `step` on
    them in a worker thread and pass its results to `then` on the event loop."""
    batch: list[Queued] = []
    try:
        while pending:
            batch = pending[:MAX_BATCH]
            del pending[:MAX_BATCH]
            results = await anyio.to_thread.run_sync(step, [request for request, _ in batch])
            then(batch, results)
    except BaseException:  # cancelled (shutdown): nobody may wait forever
        for _, answer in batch + pending:
            answer.cancel()
        pending.clear()
        raise


def commit(services: Services, batch: list[Request]) -> list[Outcome]:
    """Run `batch` in one transaction; if that fails as a whole, each request alone."""
    try:
        return _commit_together(services, batch)
    except Exception as exc:
        if len(batch) == 1:
            return [_alone_again(services, batch[0], exc)]
        return [commit(services, [request])[0] for request in batch]


def _alone_again(services: Services, request: Request, failure: Exception) -> Outcome:
    """A lone request whose transaction lost a deadlock (to another process's batch:
    e.g. a retry holding its Idempotency-Key while waiting for the licence row
    this one holds) is run again, a few times; any other failure is its answer."""
    for _ in range(DEADLOCK_RETRIES):
        if not is_deadlock(failure):
            break
        try:
            return _commit_together(services, [request])[0]
        except Exception as exc:
            failure = exc
    return failure


def _commit_together(services: Services, batch: list[Request]) -> list[Outcome]:
    outcomes: dict[int, Outcome] = {}
    with (
        services.transaction() as session,
        shared_reads(session),
        queued_appends(session) as events,
    ):
        for index in sorted(range(len(batch)), key=lambda i: _lock_order(batch[i])):
            outcomes[index] = _attempt(session, events, batch[index])
    return [outcomes[index] for index in range(len(batch))]


def _lock_order(request: Request) -> str:
    """The order in which a batch runs its requests: by request URI, which names the
    licence a redemption locks (stable: arrival order within one URI). Batches of
    several processes on PostgreSQL then lock licence rows in one order; in
    arrival order, two batches redeeming the same two licences in opposite orders
    deadlock, and the loser waits a second before it is run again."""
    return request.credentials.htu


def _attempt(session: Session, events: list[AuditEvent], request: Request) -> Outcome:
    """One request under its own savepoint: its JSON body, the answer stored for
    its Idempotency-Key, or the error that refused it."""
    queued = len(events)
    authorized: Authorized | None = None
    savepoint = session.begin_nested()
    try:
        authorized = authorize(session, request.credentials, request.kinds)
        outcome = _run(session, events, request, authorized.principal)
        savepoint.commit()
    except PartvaultError as exc:
        savepoint.rollback()
        del events[queued:]
        forget_shared_reads(session)
        if authorized is not None and authorized.spent_proof is not None:
            keep_spent(session, authorized.spent_proof)
        return exc
    return outcome


def _run(
    session: Session, events: list[AuditEvent], request: Request, principal: Principal
) -> bytes | Replay | PartvaultError:
    once = request.once
    if once is None:
        return msgspec.json.encode(request.work(session, principal))
    key = idempotency.require_key(once.key)
    claim = idempotency.begin(session, principal.token_id, key, once.fingerprint)
    if isinstance(claim, Replay):
        return claim
    return _run_claimed(session, events, request, principal, claim.record_id)


def _run_claimed(
    session: Session,
    events: list[AuditEvent],
    request: Request,
    principal: Principal,
    record_id: str,
) -> bytes | PartvaultError:
    """The work of a claimed Idempotency-Key under a savepoint of its own, so that a
    refusal (a client error) rolls back the work but keeps the claim: the refusal
    is stored and replayed like a success, and a concurrent retry never finds the
    key free in between. A server error raises, releasing the key with the rest."""
    assert request.once is not None
    once, queued = request.once, len(events)
    work = session.begin_nested()
    try:
        body = msgspec.json.encode(request.work(session, principal))
        work.commit()
    except PartvaultError as exc:
        work.rollback()
        if exc.status >= 500:
            raise
        del events[queued:]
        forget_shared_reads(session)
        idempotency.finish(
            session, record_id, exc.status, problem_body(exc, once.path, once.request_id)
        )
        return exc
    idempotency.finish(session, record_id, once.status_code, body)
    return body


def _settle(answer: asyncio.Future[bytes | Replay], outcome: Outcome) -> None:
    """Answer a waiting request (unless its client went away meanwhile)."""
    if answer.done():
        return
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
