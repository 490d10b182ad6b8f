"""Group commit: the concurrent hot-path requests of one process share a transaction.

Licence issuance and redemption without an Idempotency-Key are each a few
statements and one commit; alone, the commit (an fsync on SQLite, the audit
head's row lock on PostgreSQL) and the statements that every request repeats
(token, facility, licence, certifications) dominate. So requests queue, and
each server process takes everything queued and runs it in one transaction,
then the next batch at once, while the event loop answers the batch before:
in a committing process of its own (`api.committer`, the default), or on one
committing thread. A request's DPoP proof is checked on arrival, on the event
loop, as far as it can be without the database (`api.auth.check_proof_ahead`):
the signature check runs without the GIL, beside the batch that commits,
and outside the writer turn that server processes take one at a time.
(Checked in a third thread instead, the proofs kept the committing thread
waiting for the GIL between its statements: redemption 16 % slower,
measured.) In the transaction:

- the batch runs in two passes. First every request is authorized (the DPoP
  proofs of all of them remembered by one statement) and claims its
  Idempotency-Key, if it sent one (`_admit_all`, in the order of the token's
  hash and the key). Then every admitted request works (`_work_all`, in the
  order of its URI; redemptions lock their licences when they are counted, in
  jti order). So batches of several processes take keys, then licence rows,
  each in one order, and never deadlock on them;
- a request's work is `Deferred`: each admitted request is checked, reading
  only, so a refused request (any `PartvaultError`) rolls nothing back and
  answers alone; then the checked requests of one kind are applied together
  (issuance: the licences signed and inserted by one statement; redemption:
  one count per licence, one insert for the print jobs). No savepoint
  anywhere. A refused request's DPoP proof stays spent: the replay cache row
  was written in the first pass, and all that pass writes before a refusal is
  kept anyway;
- reads of rows the requests never change are made once per transaction
  (`shared_reads`);
- the audit events of the requests that succeed are appended as one batch
  (`queued_appends`);
- a claimed key's work and its stored response (or refusal, a client error)
  commit together with the claim: a retry waits for that commit and replays,
  in any process. A retry in the same batch waits for a later round of both
  passes;
- nobody is answered before the commit. If the transaction as a whole fails
  (the database went away, a bug), every request of the batch is run again
  alone, so one request's failure is never another's (and claims nothing).

Exactly-once counting does not depend on any of this: it is still the
database's conditional UPDATE, across any number of processes.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar
from weakref import WeakKeyDictionary

import msgspec
from sqlmodel import Session

from api.auth import Credentials, authorize, check_proof_ahead
from api.committer import CommittingProcess, settle_all
from api.problems import problem_body
from api.services import Services
from inventory.accounts import Principal, TokenKind, hash_token
from inventory.db import is_deadlock, shared_reads
from inventory.errors import PartvaultError
from licensing.audit import queued_appends
from licensing.orders import idempotency
from licensing.orders.idempotency import Replay
from licensing.tokens.replay import ReplayBatch, ReplayGuard, replayed

#: The most requests one transaction takes (bounds a batch's latency).
MAX_BATCH = 64
#: How often a lone request that lost a deadlock is run again.
DEADLOCK_RETRIES = 3
#: How long a committing thread waits for another request before it ends.
IDLE_SECONDS = 1.0
C = TypeVar("C")


@dataclass(frozen=True)
class Deferred(Generic[C]):
    """A request's work in two steps, so that a batch writes once for all its requests.

    `check` runs for each request, on the services of the process that commits
    (its keyring and token context), and only reads: it refuses (raises)
    before anything is written, so a refused request rolls nothing back and
    needs no savepoint. `apply` then runs once for the checked requests of a
    batch that share it, and gives each its result or its refusal (a
    `PartvaultError`, returned, not raised), in order; it raises only for a
    fault, which fails the batch. Both must pickle (module-level functions,
    or partials of them over picklable values): a batch crosses to the
    committing process (`api.committer`).
    """

    check: Callable[[Services, Session, Principal], C]
    apply: Callable[[Session, list[C]], list[Any]]


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
    work: Deferred[Any]
    once: Once | None = None


#: What a request gets: its JSON body, the stored answer to replay, or its refusal.
Outcome = bytes | Replay | BaseException


Queued = tuple[Request, asyncio.Future[bytes | Replay]]


@dataclass
class _Queue:
    """The requests of one process waiting for a transaction, and whether a
    committing thread (`_commit_waiting`) serves them (both only with `ready`
    held); whether the thread is to be woken (`_wake`, on the event loop)."""

    loop: asyncio.AbstractEventLoop
    ready: threading.Condition = field(default_factory=threading.Condition)
    waiting: list[Queued] = field(default_factory=list)
    committing: bool = False
    waking: bool = False


_queues: WeakKeyDictionary[Services, _Queue] = WeakKeyDictionary()
_processes: WeakKeyDictionary[Services, CommittingProcess] = WeakKeyDictionary()


def start_committing(services: Services) -> None:
    """Start the committing process of `services` now (with
    ``PARTVAULT_GROUP_COMMIT=process``), so the first request does not wait for it."""
    if services.settings.group_commit == "process":
        _committing_process(services).start()


def stop_committing(services: Services) -> None:
    """Stop the committing process of `services`, if it has one."""
    process = _processes.pop(services, None)
    if process is not None:
        process.stop()


def _committing_process(services: Services) -> CommittingProcess:
    process = _processes.get(services)
    if process is None:
        process = _processes[services] = CommittingProcess(services.settings, MAX_BATCH)
    return process


async def run_grouped(services: Services, request: Request) -> bytes | Replay:
    """The JSON body of `request`'s result once committed (or, for a repeated
    Idempotency-Key, the stored answer), or the error that refused it.

    The request's DPoP proof is checked first, as far as it can be without the
    database (`api.auth.check_proof_ahead`), here on the event loop: its
    signature check releases the GIL, so a committing thread runs meanwhile,
    and the transaction then only finishes the check. The batch commits in
    the process's committing process (``PARTVAULT_GROUP_COMMIT=process``, see
    `api.committer`) or on its committing thread."""
    request = replace(request, credentials=check_proof_ahead(request.credentials))
    if services.settings.group_commit == "process":
        return await _committing_process(services).run(request)
    loop = asyncio.get_running_loop()
    queue = _queues.get(services)
    if queue is None or queue.loop is not loop:
        queue = _queues[services] = _Queue(loop)
    answer: asyncio.Future[bytes | Replay] = loop.create_future()
    with queue.ready:
        queue.waiting.append((request, answer))
    if not queue.waking:
        queue.waking = True
        loop.call_soon(_wake, services, queue)
    return await answer


def _wake(services: Services, queue: _Queue) -> None:
    """Hand the waiting requests to the committing thread (started if there is
    none). Called once the event loop has run what was ready with the first
    of them, so that requests arriving together start a transaction together."""
    queue.waking = False
    with queue.ready:
        queue.ready.notify()
        start = not queue.committing
        queue.committing = True
    if start:
        threading.Thread(target=_commit_waiting, args=(services, queue), daemon=True).start()


def _commit_waiting(services: Services, queue: _Queue) -> None:
    """Commit the waiting requests, batch after batch, until none has come for
    `IDLE_SECONDS`. Each batch is answered on the event loop after its commit,
    while this thread goes on with the next one: no round trip through the
    loop between two batches."""
    while batch := _next_batch(queue):
        outcomes = commit(services, [request for request, _ in batch])
        try:
            queue.loop.call_soon_threadsafe(settle_all, batch, outcomes)
        except RuntimeError:  # the loop is closed: nobody waits for an answer any more
            return


def _next_batch(queue: _Queue) -> list[Queued]:
    """Up to `MAX_BATCH` waiting requests, the first to come within
    `IDLE_SECONDS`; none (and the thread is no longer committing) if none came."""
    with queue.ready:
        if not queue.waiting:
            queue.ready.wait(IDLE_SECONDS)
        batch = queue.waiting[:MAX_BATCH]
        del queue.waiting[:MAX_BATCH]
        queue.committing = bool(batch)
        return batch


def commit(services: Services, batch: list[Request]) -> list[Outcome]:
    """Run `batch` in one transaction; if that fails as a whole, each request alone."""
    try:
        return _commit_together(services, batch)
    except Exception as exc:
        if len(batch) == 1:
            return [_alone_again(services, batch[0], exc)]
        return [commit(services, [request])[0] for request in batch]


def _alone_again(services: Services, request: Request, failure: Exception) -> Outcome:
    """A lone request whose transaction lost a deadlock (to another process's
    transaction) is run again, a few times; any other failure is its answer."""
    for _ in range(DEADLOCK_RETRIES):
        if not is_deadlock(failure):
            break
        try:
            return _commit_together(services, [request])[0]
        except Exception as exc:
            failure = exc
    return failure


@dataclass(frozen=True)
class _Admitted:
    """A request past the first pass: who it is, and the record of the
    Idempotency-Key it claimed (None without a key)."""

    principal: Principal
    record_id: str | None


def _commit_together(services: Services, batch: list[Request]) -> list[Outcome]:
    """The batch in one transaction, in two passes: every request is admitted
    (`_admit_all`) in `_claim_order`, then the admitted ones work (`_work_all`) in
    `_lock_order`. No request takes a licence row before every key of the batch
    is claimed, so a batch never holds a licence row while it waits for a key.
    A request repeating the Idempotency-Key of an earlier one in the batch (a
    quick retry) waits for a later round of both passes, which finds the earlier
    one's answer stored and replays it."""
    outcomes: dict[int, Outcome] = {}
    with (
        services.transaction() as session,
        shared_reads(session),
        queued_appends(session),
    ):
        for round_ in _rounds(batch):
            admitted: dict[int, _Admitted] = {}
            for index, admission in _admit_all(session, batch, round_).items():
                if isinstance(admission, _Admitted):
                    admitted[index] = admission
                else:
                    outcomes[index] = admission
            outcomes |= _work_all(services, session, batch, admitted)
    return [outcomes[index] for index in range(len(batch))]


def _work_all(
    services: Services, session: Session, batch: list[Request], admitted: dict[int, _Admitted]
) -> dict[int, bytes | PartvaultError]:
    """The second pass: every admitted request's check, in `_lock_order` (reads
    only, so a refusal rolls nothing back), then each `apply` once for all the
    checked requests that share it, in the order of their first. The rows the
    applies lock (licences counted, the signing key's ``verify_until``) are
    then taken in one order by the batches of every process."""
    outcomes: dict[int, bytes | PartvaultError] = {}
    checked: dict[Callable[..., list[Any]], dict[int, Any]] = {}
    for index in sorted(admitted, key=lambda i: (_lock_order(batch[i]), i)):
        request, admission = batch[index], admitted[index]
        try:
            value = request.work.check(services, session, admission.principal)
        except PartvaultError as exc:
            outcomes[index] = _answer(session, request, admission, exc)
            continue
        checked.setdefault(request.work.apply, {})[index] = value
    for apply, values in checked.items():
        results = apply(session, list(values.values()))
        for index, result in zip(values, results, strict=True):
            outcomes[index] = _answer(session, batch[index], admitted[index], result)
    return outcomes


def _rounds(batch: list[Request]) -> list[list[int]]:
    """The batch's indexes by round: the n-th request with one token and key in round n."""
    rounds: list[list[int]] = []
    seen: Counter[tuple[str, str]] = Counter()
    for index, request in enumerate(batch):
        round_ = 0
        if request.once is not None:
            claim = _claim_order(request)
            round_, seen[claim] = seen[claim], seen[claim] + 1
        if round_ == len(rounds):
            rounds.append([])
        rounds[round_].append(index)
    return rounds


def _claim_order(request: Request) -> tuple[str, str]:
    """The order of the first pass: by token (its stored hash: tokens themselves are
    never compared but in constant time), then Idempotency-Key. The rows it may
    lock (a token's last-use stamp, a key's claim) are then taken in one order by
    the batches of every process."""
    return hash_token(request.credentials.token), request.once.key if request.once else ""


def _lock_order(request: Request) -> str:
    """The order of the second pass: by request URI, which names the licence a
    redemption reads (stable: arrival order within one URI); a redemption's
    licence row is locked when the batch counts, licence by licence in jti
    order (`licensing.licences.count_prints`). Batches of several processes on
    PostgreSQL then lock licence rows in one order; in arrival order, two
    batches redeeming the same two licences in opposite orders deadlock, and
    the loser waits a second before it is run again."""
    return request.credentials.htu


def _admit_all(
    session: Session, batch: list[Request], round_: list[int]
) -> dict[int, _Admitted | Replay | PartvaultError]:
    """The first pass, in `_claim_order`: authorize every request, remember all
    their DPoP proofs with one statement (`ReplayBatch`), then claim the
    Idempotency-Keys of those admitted so far (`_claim`); what each request
    got: admission, the answer stored for its key, or the error that refused it.

    No savepoint: all this writes before a refusal is kept anyway. That is the
    proof's row in the replay cache (a refused request's proof cannot be
    replayed either), the token's last-use stamp, and an expired record of the
    key, deleted. A claim refuses before it inserts. A replayed proof is
    refused as if each request had remembered its own: authorization ends
    with it, so it outranks only a refusal of the token's role.
    """
    order = sorted(round_, key=lambda i: _claim_order(batch[i]))
    proofs = ReplayBatch()
    authorized = {i: _authorize(session, batch[i], proofs.guard(i)) for i in order}
    seen_before = proofs.remember_all(session)
    return {
        i: replayed() if i in seen_before else _claim(session, batch[i], authorized[i])
        for i in order
    }


def _authorize(
    session: Session, request: Request, replay_guard: ReplayGuard
) -> Principal | PartvaultError:
    try:
        return authorize(session, request.credentials, request.kinds, replay_guard)
    except PartvaultError as exc:
        return exc


def _claim(
    session: Session, request: Request, authorized: Principal | PartvaultError
) -> _Admitted | Replay | PartvaultError:
    """The authorized request's claim of its Idempotency-Key (if it sent one)."""
    if isinstance(authorized, PartvaultError):
        return authorized
    if request.once is None:
        return _Admitted(authorized, None)
    try:
        key = idempotency.require_key(request.once.key)
        claim = idempotency.begin(session, authorized.token_id, key, request.once.fingerprint)
    except PartvaultError as exc:
        return exc
    if isinstance(claim, Replay):
        return claim
    return _Admitted(authorized, claim.record_id)


def _answer(
    session: Session, request: Request, admitted: _Admitted, result: Any
) -> bytes | PartvaultError:
    """The request's JSON body, or the error that refused it. For a claimed key a
    refusal (a client error) is stored and replayed like a success, so a
    concurrent retry never finds the key free in between; a server error raises,
    failing the batch and releasing the key with the rest."""
    if isinstance(result, PartvaultError):
        if admitted.record_id is not None:
            _store_refusal(session, request, admitted.record_id, result)
        return result
    body = msgspec.json.encode(result)
    if admitted.record_id is not None:
        assert request.once is not None
        idempotency.finish(session, admitted.record_id, request.once.status_code, body)
    return body


def _store_refusal(
    session: Session, request: Request, record_id: str, refusal: PartvaultError
) -> None:
    if refusal.status >= 500:
        raise refusal
    assert request.once is not None
    body = problem_body(refusal, request.once.path, request.once.request_id)
    idempotency.finish(session, record_id, refusal.status, body)
