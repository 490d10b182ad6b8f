"""Group commit: concurrent redemptions share a transaction, refusals stay their own.

The batches are built by hand from the same domain calls the route makes, on
the test's real services (SQLite and PostgreSQL), so each test can say which
requests share a transaction and count the commits and audit-head updates.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from unittest.mock import patch

import msgspec
import pytest
import sqlalchemy as sa
from api_helpers import facility_keys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api import auth
from api.auth import Credentials, check_proof_ahead
from api.groupcommit import Deferred, Once, Outcome, Request, commit, run_grouped
from api.routes.licences import check_issue, check_redemption, count_redemptions, record_licences
from api.schemas import RedeemIn
from inventory import db
from inventory.accounts import TokenKind, authenticate
from inventory.db import shared_read, shared_reads, utcnow
from inventory.errors import Conflict, Invalid, PartvaultError, Unauthorized
from licensing import facilities, licences
from licensing.orders import idempotency
from licensing.orders.idempotency import Replay
from licensing.tokens import make_proof

FACILITY = (TokenKind.facility,)


def _redemption(
    world: Any, licence: dict[str, Any], proof: str | None = None, key: str | None = None
) -> Request:
    """A redemption of `licence` by the world's bureau (with Idempotency-Key `key`),
    as the route queues it."""
    path = f"/v1/licences/{licence['jti']}/redeem"
    htu = world.api.settings.public_url + path
    proof = proof or make_proof(
        world.bureau.pop_key,
        htm="POST",
        htu=htu,
        access_token=world.bureau.token,
        now=utcnow(),
    )

    once = None
    if key is not None:
        payload = msgspec.json.encode(RedeemIn(licence=licence["token"]))
        once = Once(key, idempotency.fingerprint("POST", path, payload), path, 201, "req-test")
    credentials = Credentials(world.bureau.token, proof, "POST", htu)
    check = partial(check_redemption, licence["jti"], licence["token"])
    return Request(credentials, FACILITY, Deferred(check, count_redemptions), once)


def _reworked(request: Request, check: Any = None, apply: Any = None) -> Request:
    """`request` with its work's check or apply replaced."""
    work = Deferred(check or request.work.check, apply or request.work.apply)
    return replace(request, work=work)


def _crashing(request: Request) -> Request:
    """`request`, whose apply fails after counting (a bug)."""

    def crash(session: Any, checked: list[Any]) -> list[Any]:
        request.work.apply(session, checked)
        raise RuntimeError("a bug after the count")

    return _reworked(request, apply=crash)


@contextmanager
def _statements(engine: sa.Engine) -> Iterator[list[str]]:
    """Every statement run on `engine` while the block runs, prepared ones included."""
    seen: list[str] = []

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    on_driver = db._on_driver

    def recording(connection: Any, sql: str, params: Any = None) -> Any:
        seen.append(sql)
        return on_driver(connection, sql, params)

    sa.event.listen(engine, "before_cursor_execute", on_execute)
    try:
        with patch.object(db, "_on_driver", recording):
            yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_execute)


def _starting(statements: list[str], prefix: str) -> int:
    return sum(statement.lstrip().startswith(prefix) for statement in statements)


@contextmanager
def _counting(engine: sa.Engine) -> Iterator[dict[str, int]]:
    """Count commits and audit-head updates on `engine` while the block runs."""
    counts = {"commits": 0, "head_updates": 0}

    def on_commit(_conn: Any) -> None:
        counts["commits"] += 1

    sa.event.listen(engine, "commit", on_commit)
    try:
        with _statements(engine) as statements:
            yield counts
            counts["head_updates"] = _starting(statements, "UPDATE audit_head")
    finally:
        sa.event.remove(engine, "commit", on_commit)


def _scalar(world: Any, sql: str, **params: Any) -> int:
    engine = world.api.client.app.state.services.engine
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar_one())


def _state(world: Any, jti: str) -> tuple[int, int, int]:
    """(prints_used, print jobs, redeemed audit events) of licence `jti`."""
    used = _scalar(world, "SELECT prints_used FROM licence WHERE jti = :j", j=jti)
    jobs = _scalar(world, "SELECT count(*) FROM print_job WHERE licence_jti = :j", j=jti)
    events = _scalar(
        world,
        "SELECT count(*) FROM audit_entry WHERE event_type = 'licensing:print:redeemed'"
        " AND subject LIKE :s",
        s=f"%{jti}%",
    )
    return used, jobs, events


def test_one_commit_for_a_batch_and_refusals_answer_alone(world):
    services = world.api.client.app.state.services
    licence = world.licence(prints=3)
    first = _redemption(world, licence)
    batch = [
        first,
        _redemption(world, licence),
        _redemption(world, licence, proof=first.credentials.proof),  # replayed proof
        _redemption(world, licence),
        _redemption(world, licence),  # a fourth print of three
    ]
    with _counting(services.engine) as counts:
        outcomes = commit(services, batch)
    assert counts == {"commits": 1, "head_updates": 1}
    ok = [msgspec.json.decode(o) for o in outcomes if isinstance(o, bytes)]
    assert len(ok) == 3 and len({job["serial"] for job in ok}) == 3
    assert isinstance(outcomes[2], Unauthorized) and outcomes[2].code == "dpop-replayed"
    assert isinstance(outcomes[4], Conflict) and outcomes[4].code == "licence-exhausted"
    assert _state(world, licence["jti"]) == (3, 3, 3)
    # the refused request rolled back to its savepoint, yet its proof stays spent
    again = commit(services, [_redemption(world, licence, proof=batch[4].credentials.proof)])
    assert isinstance(again[0], Unauthorized) and again[0].code == "dpop-replayed"


def test_a_batch_that_fails_as_a_whole_is_run_again_request_by_request(world):
    services = world.api.client.app.state.services
    licence = world.licence(prints=5)
    batch = [
        _redemption(world, licence),
        _crashing(_redemption(world, licence)),
        _redemption(world, licence),
    ]
    with _counting(services.engine) as counts:
        outcomes = commit(services, batch)
    assert isinstance(outcomes[0], bytes) and isinstance(outcomes[2], bytes)
    assert isinstance(outcomes[1], RuntimeError)
    assert counts["commits"] == 2  # the batch rolled back; the two good ones alone
    assert _state(world, licence["jti"]) == (2, 2, 2)


def test_requests_queued_together_share_one_transaction(world):
    services = world.api.client.app.state.services
    licence = world.licence(prints=8)
    requests = [_redemption(world, licence) for _ in range(8)]

    async def redeem_all() -> list[bytes]:
        return await asyncio.gather(*(run_grouped(services, r) for r in requests))

    with _counting(services.engine) as counts:
        bodies = asyncio.run(redeem_all())
    assert counts["commits"] == 1
    used = sorted(msgspec.json.decode(body)["serial"] for body in bodies)
    assert len(set(used)) == 8
    assert _state(world, licence["jti"]) == (8, 8, 8)


def _grouped(services: Any, requests: list[Request]) -> list[Any]:
    """Queue `requests` together as the route does; their bodies or refusals."""

    async def run_all() -> list[Any]:
        calls = (run_grouped(services, r) for r in requests)
        return await asyncio.gather(*calls, return_exceptions=True)

    return asyncio.run(run_all())


def _counting_proof_checks(monkeypatch: Any) -> dict[str, int]:
    """How often proofs are checked on arrival (`check_proof_ahead`) and in the
    transaction (`verify_proof`, only for a proof not checked ahead)."""
    checks = {"inline": 0, "ahead": 0}

    def counting(where: str, check: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            checks[where] += 1
            return check(*args, **kwargs)

        return run

    monkeypatch.setattr(facilities, "check_proof", counting("inline", facilities.check_proof))
    monkeypatch.setattr(auth, "check_proof", counting("ahead", auth.check_proof))
    return checks


def test_requests_arriving_while_a_batch_commits_share_the_next_transaction(world, monkeypatch):
    services = world.api.client.app.state.services
    licence = world.licence(prints=8)
    checks = _counting_proof_checks(monkeypatch)
    committing, go_on = threading.Event(), threading.Event()
    first = _then_wait(_redemption(world, licence), committing, go_on)
    later = [_redemption(world, licence) for _ in range(7)]

    async def redeem_all() -> list[Any]:
        alone = asyncio.ensure_future(run_grouped(services, first))
        while not committing.is_set():  # the first batch holds its transaction open
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(run_grouped(services, r)) for r in later]
        while checks["ahead"] < 1 + len(later):  # all queued, their proofs checked
            await asyncio.sleep(0.005)
        go_on.set()
        return await asyncio.gather(alone, *queued)

    with _counting(services.engine) as counts:
        outcomes = asyncio.run(asyncio.wait_for(redeem_all(), timeout=30))
    assert all(isinstance(o, bytes) for o in outcomes), outcomes
    # each proof checked once, on arrival, and not again in its transaction
    assert checks == {"inline": 0, "ahead": 8}
    assert counts["head_updates"] == 2
    assert _state(world, licence["jti"]) == (8, 8, 8)


def test_a_proof_checked_ahead_is_refused_in_the_same_order_as_inline(world):
    services = world.api.client.app.state.services
    licence = world.licence(prints=3)
    htu = world.api.settings.public_url + f"/v1/licences/{licence['jti']}/redeem"
    stranger = Ed25519PrivateKey.generate()

    def proof(key: Ed25519PrivateKey, htm: str = "POST") -> str:
        return make_proof(key, htm=htm, htu=htu, access_token=world.bureau.token, now=utcnow())

    unknown_token = _redemption(world, licence, proof="not.a.proof")
    unknown_token = replace(
        unknown_token, credentials=replace(unknown_token.credentials, token="pv_fac_unknown")
    )
    outcomes = _grouped(
        services,
        [
            unknown_token,  # the token is looked at before the proof
            _redemption(world, licence, proof=proof(stranger, htm="GET")),  # key before htm
            _redemption(world, licence, proof=proof(world.bureau.pop_key, htm="GET")),
            _redemption(world, licence, proof="not.a.proof"),
        ],
    )
    codes = [o.code for o in outcomes]
    assert codes == ["token-invalid", "dpop-key-mismatch", "dpop-htm-mismatch", "dpop-malformed"]
    assert _state(world, licence["jti"]) == (0, 0, 0)


def test_a_key_rotated_after_the_check_ahead_refuses_the_proof(world):
    services = world.api.client.app.state.services
    licence = world.licence(prints=3)
    request = _redemption(world, licence)
    request = replace(request, credentials=check_proof_ahead(request.credentials))
    assert request.credentials.checked_proof is not None
    _, _, new_pop_pem, _ = facility_keys()
    path = f"/v1/facilities/{world.bureau.id}"
    world.api.ok("PATCH", path, world.api.admin, json={"pop_public_key": new_pop_pem})
    (outcome,) = commit(services, [request])
    assert isinstance(outcome, Unauthorized) and outcome.code == "dpop-key-mismatch"
    assert _state(world, licence["jti"]) == (0, 0, 0)


def test_a_check_made_for_another_proof_is_not_trusted(world):
    services = world.api.client.app.state.services
    licence = world.licence(prints=3)
    good = check_proof_ahead(_redemption(world, licence).credentials)
    request = _redemption(world, licence, proof="not.a.proof")
    credentials = replace(request.credentials, checked_proof=good.checked_proof)
    (outcome,) = commit(services, [replace(request, credentials=credentials)])
    assert isinstance(outcome, Unauthorized) and outcome.code == "dpop-malformed"
    assert _state(world, licence["jti"]) == (0, 0, 0)


def test_shared_reads_read_once_per_transaction(world):
    services = world.api.client.app.state.services
    reads: list[int] = []

    def read() -> int:
        reads.append(1)
        return len(reads)

    with services.transaction() as session:
        assert [shared_read(session, ("k",), read) for _ in range(2)] == [1, 2]
        with shared_reads(session):
            assert [shared_read(session, ("k",), read) for _ in range(3)] == [3, 3, 3]
            assert shared_read(session, ("other",), read) == 4
        assert shared_read(session, ("k",), read) == 5


def test_savepoints_sent_as_plain_sql_undo_only_their_own_writes(world):
    """`make_engine` runs SAVEPOINT / RELEASE / ROLLBACK TO on the driver directly."""
    services = world.api.client.app.state.services

    def insert(session: Any, value: int) -> None:
        session.execute(sa.text("INSERT INTO savepoint_probe VALUES (:v)"), {"v": value})

    with services.transaction() as session:
        session.execute(sa.text("CREATE TEMPORARY TABLE savepoint_probe (v INTEGER)"))
        insert(session, 1)
        try:
            with session.begin_nested():
                insert(session, 2)
                raise Conflict("refused", code="probe")
        except Conflict:
            pass
        with session.begin_nested():
            insert(session, 3)
            inner = session.begin_nested()
            insert(session, 4)
            inner.rollback()
        kept = session.execute(sa.text("SELECT v FROM savepoint_probe ORDER BY v")).scalars()
        assert list(kept) == [1, 3]
        session.execute(sa.text("DROP TABLE savepoint_probe"))


def _keys(world: Any) -> dict[str, tuple[str, int | None]]:
    """Every stored Idempotency-Key: (status, response status)."""
    engine = world.api.client.app.state.services.engine
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT key, status, response_status FROM idempotency_record"))
        return {key: (status, code) for key, status, code in rows}


def test_keyed_requests_claim_work_and_store_in_the_batch_transaction(world):
    services = world.api.client.app.state.services
    licence = world.licence(prints=2)
    batch = [
        _redemption(world, licence, key="k1"),
        _redemption(world, licence, key="k2"),
        _redemption(world, licence, key="k1"),  # a retry, fresh proof, same batch
        _redemption(world, licence, key="k3"),  # a third print of two: refused, stored
        _redemption(world, licence),  # no key: refused, nothing stored
    ]
    with _counting(services.engine) as counts:
        outcomes = commit(services, batch)
    assert counts == {"commits": 1, "head_updates": 1}
    first, second, retry, refused, keyless = outcomes
    assert isinstance(first, bytes) and isinstance(second, bytes)
    assert isinstance(retry, Replay) and (retry.status, retry.body) == (201, first)
    assert isinstance(refused, Conflict) and refused.code == "licence-exhausted"
    assert isinstance(keyless, Conflict)
    assert _state(world, licence["jti"]) == (2, 2, 2)
    assert _keys(world) == {"k1": ("done", 201), "k2": ("done", 201), "k3": ("done", 409)}

    # the refusal replays as stored (with the request id it was answered with) ...
    again = commit(services, [_redemption(world, licence, key="k3")])[0]
    assert isinstance(again, Replay) and again.status == 409
    stored = msgspec.json.decode(again.body)
    assert stored["code"] == "licence-exhausted" and stored["request_id"] == "req-test"
    assert stored["instance"] == f"/v1/licences/{licence['jti']}/redeem"
    # ... and the same key for another request is refused without running it
    other = world.licence(prints=1)
    reused = commit(services, [_redemption(world, other, key="k1")])[0]
    assert isinstance(reused, Invalid) and reused.code == "idempotency-key-reused"
    assert _state(world, other["jti"]) == (0, 0, 0)


def test_a_request_refused_before_its_claim_leaves_the_key_free(world):
    services = world.api.client.app.state.services
    licence = world.licence(prints=2)
    spent = _redemption(world, licence)
    assert isinstance(commit(services, [spent])[0], bytes)
    replayed_proof = _redemption(world, licence, proof=spent.credentials.proof, key="k1")
    refused = commit(services, [replayed_proof])[0]
    assert isinstance(refused, Unauthorized) and refused.code == "dpop-replayed"
    assert _keys(world) == {}
    retried = commit(services, [_redemption(world, licence, key="k1")])[0]
    assert isinstance(retried, bytes) and _state(world, licence["jti"]) == (2, 2, 2)


def test_a_key_claimed_elsewhere_and_still_running_is_409_and_kept(world):
    services = world.api.client.app.state.services
    licence = world.licence(prints=2)
    keyed = _redemption(world, licence, key="busy")
    assert keyed.once is not None
    with services.transaction() as session:
        token_id = authenticate(session, world.bureau.token).token_id
        idempotency.begin(session, token_id, "busy", keyed.once.fingerprint)
    outcome = commit(services, [keyed])[0]
    assert isinstance(outcome, Conflict) and outcome.code == "idempotency-key-in-flight"
    assert _keys(world) == {"busy": ("in_progress", None)}
    assert _state(world, licence["jti"]) == (0, 0, 0)


def test_a_keyed_request_of_a_failed_batch_claims_nothing_when_it_fails_alone(world):
    services = world.api.client.app.state.services
    licence = world.licence(prints=5)
    batch = [
        _redemption(world, licence, key="ok"),
        _crashing(_redemption(world, licence, key="crash")),
    ]
    outcomes = commit(services, batch)
    assert isinstance(outcomes[0], bytes) and isinstance(outcomes[1], RuntimeError)
    assert _keys(world) == {"ok": ("done", 201)}  # a server error releases its key
    assert _state(world, licence["jti"]) == (1, 1, 1)


class _LostDeadlock(Exception):
    sqlstate = "40P01"  # what psycopg reports when PostgreSQL aborts a deadlock's loser


def test_a_lone_request_that_lost_a_deadlock_is_run_again(world):
    services = world.api.client.app.state.services
    licence = world.licence(prints=5)
    runs: list[int] = []

    def losing_twice(request: Request) -> Request:
        def apply(session: Any, checked: list[Any]) -> list[Any]:
            runs.append(1)
            if len(runs) <= 2:
                raise sa.exc.OperationalError("UPDATE licence …", {}, _LostDeadlock())
            return request.work.apply(session, checked)

        return _reworked(request, apply=apply)

    outcome = commit(services, [losing_twice(_redemption(world, licence, key="dl"))])[0]
    assert isinstance(outcome, bytes) and len(runs) == 3
    assert _state(world, licence["jti"]) == (1, 1, 1) and _keys(world) == {"dl": ("done", 201)}

    def buggy(services: Any, session: Any, facility: Any) -> Any:
        runs.append(1)
        raise RuntimeError("not a deadlock")

    runs.clear()
    failed = commit(services, [_reworked(_redemption(world, licence), check=buggy)])[0]
    assert isinstance(failed, RuntimeError) and len(runs) == 1


def _then_wait(request: Request, mine: threading.Event, theirs: threading.Event) -> Request:
    """`request`, whose work, once applied, says so and waits (at most a second) for
    `theirs`, holding its transaction open."""

    def apply(session: Any, checked: list[Any]) -> list[Any]:
        out = request.work.apply(session, checked)
        mine.set()
        theirs.wait(timeout=1.0)
        return out

    return _reworked(request, apply=apply)


_pause = threading.local()


@pytest.fixture
def pausing_counts(monkeypatch):
    """`commit_pausing`: a commit whose batch, once it has counted its first licence
    (and holds its row), says so and gives another thread a second to go on."""
    count = licences._count

    def counted_then_pause(session: Any, jti: str, prints: int) -> list[int]:
        granted = count(session, jti, prints)
        events, _pause.events = getattr(_pause, "events", None), None
        if events is not None:
            mine, theirs = events
            mine.set()
            theirs.wait(timeout=1.0)
        return granted

    monkeypatch.setattr(licences, "_count", counted_then_pause)

    def commit_pausing(
        services: Any, batch: list[Request], mine: threading.Event, theirs: threading.Event
    ) -> list[Outcome]:
        _pause.events = mine, theirs
        try:
            return commit(services, batch)
        finally:
            _pause.events = None

    return commit_pausing


def test_batches_lock_licences_in_one_order_so_they_never_deadlock(world, pausing_counts):
    """Two processes' batches redeeming the same two licences in opposite orders
    would each hold one licence's row and wait for the other's (on PostgreSQL a
    deadlock: one batch aborted after a second, then run again request by
    request). Each batch counts the licences in jti order, so one waits for the
    other's commit instead."""
    services = world.api.client.app.state.services
    first, second = sorted(
        (world.licence(prints=2), world.licence(prints=2)), key=lambda x: x["jti"]
    )
    # the bureau's token was used a moment ago: no batch stamps its last use (a row lock)
    assert isinstance(commit(services, [_redemption(world, world.licence(prints=1))])[0], bytes)
    done = threading.Event(), threading.Event()
    batches = [
        ([_redemption(world, first), _redemption(world, second)], *done),
        ([_redemption(world, second), _redemption(world, first)], *reversed(done)),
    ]
    with _counting(services.engine) as counts, ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda args: pausing_counts(services, *args), batches))
    assert all(isinstance(o, bytes) for batch in outcomes for o in batch)
    assert counts["head_updates"] == 2  # one per batch: neither failed and ran again
    assert _state(world, first["jti"]) == _state(world, second["jti"]) == (2, 2, 2)


def test_a_batch_claims_its_keys_before_it_locks_a_licence(world, pausing_counts):
    """A quick retry in another process (here: another thread) claims its key, then
    redeems. Had the batch holding the original locked the licence before claiming
    the same key, each would wait for the other: on PostgreSQL a deadlock, one
    transaction aborted after a second and run again. The batch claims every key
    first, so the retry waits for its commit and replays the stored answer."""
    services = world.api.client.app.state.services
    licence = world.licence(prints=3)
    # the bureau's token was used a moment ago: no transaction stamps its last use (a row lock)
    assert isinstance(commit(services, [_redemption(world, world.licence(prints=1))])[0], bytes)
    counted, retry_claimed = threading.Event(), threading.Event()
    original = _redemption(world, licence, key="quick-retry")
    retry = _redemption(world, licence, key="quick-retry")
    batch = [_redemption(world, licence), original]

    def claimed_then_check(services: Any, session: Any, facility: Any) -> Any:
        retry_claimed.set()
        return retry.work.check(services, session, facility)

    def run_retry() -> list[Outcome]:
        counted.wait(timeout=5)
        return commit(services, [_reworked(retry, check=claimed_then_check)])

    with _counting(services.engine) as counts, ThreadPoolExecutor(2) as pool:
        retried = pool.submit(run_retry)
        outcomes = pausing_counts(services, batch, counted, retry_claimed)
        (replayed,) = retried.result()
    assert all(isinstance(o, bytes) for o in outcomes)
    assert isinstance(replayed, Replay) and replayed.body == outcomes[1]
    assert counts["head_updates"] == 1 and not retry_claimed.is_set()  # nothing ran again
    assert _state(world, licence["jti"]) == (2, 2, 2)


def test_a_batch_counts_a_licence_once_and_inserts_its_jobs_at_once(world, monkeypatch):
    services = world.api.client.app.state.services
    licence = world.licence(prints=10)
    batch = [_redemption(world, licence) for _ in range(6)]
    with _statements(services.engine) as statements:
        outcomes = commit(services, batch)
    assert all(isinstance(o, bytes) for o in outcomes), outcomes
    assert _starting(statements, "UPDATE licence") == 1
    assert _starting(statements, "INSERT INTO print_job") == 1
    assert _starting(statements, "SAVEPOINT") == 0  # the checks write nothing
    assert _state(world, licence["jti"]) == (6, 6, 6)


def _audited_counts(world: Any, jti: str) -> list[tuple[str, int]]:
    """(serial, prints_used) of the licence's redemption events, in log order."""
    engine = world.api.client.app.state.services.engine
    query = sa.text(
        "SELECT body FROM audit_entry WHERE event_type = 'licensing:print:redeemed'"
        ' AND subject LIKE :s ORDER BY "index"'
    )
    with engine.connect() as conn:
        bodies = [msgspec.json.decode(b) for b in conn.execute(query, {"s": f"%{jti}%"}).scalars()]
    return [(body["facts"]["serial"], body["facts"]["prints_used"]) for body in bodies]


def test_a_batch_asking_more_prints_than_remain_gets_them_in_order(world):
    services = world.api.client.app.state.services
    licence = world.licence(prints=6)
    assert isinstance(commit(services, [_redemption(world, licence)])[0], bytes)
    outcomes = commit(services, [_redemption(world, licence) for _ in range(7)])
    granted = [msgspec.json.decode(o) for o in outcomes[:5]]
    assert all(isinstance(o, Conflict) and o.code == "licence-exhausted" for o in outcomes[5:])
    assert outcomes[5] is not outcomes[6]  # raised apart: one shared error would pile tracebacks
    assert _state(world, licence["jti"]) == (6, 6, 6)
    audited = _audited_counts(world, licence["jti"])
    assert [used for _, used in audited] == [1, 2, 3, 4, 5, 6]
    assert [serial for serial, _ in audited[1:]] == [job["serial"] for job in granted]


def _write_mark(session: Any) -> Any:
    """What changes when the session's transaction writes: SQLite's count of rows
    changed on the connection; PostgreSQL's transaction id (none until it writes)."""
    if session.get_bind().dialect.name == "postgresql":
        return session.execute(sa.text("SELECT pg_current_xact_id_if_assigned()")).scalar()
    return session.connection().connection.driver_connection.total_changes


def test_a_redemption_check_writes_nothing_whether_it_passes_or_refuses(world, monkeypatch):
    services = world.api.client.app.state.services
    good, revoked, other = world.licence(prints=2), world.licence(prints=2), world.licence()
    world.api.ok(
        "POST", f"/v1/licences/{revoked['jti']}/revoke", world.brand, json={"reason": "recall"}
    )
    with services.transaction() as session:
        facility = authenticate(session, world.bureau.token)

    def check(licence: dict[str, Any], jti: str | None = None) -> str:
        with services.transaction() as session:
            before = _write_mark(session)
            try:
                licences.check_redemption(
                    session,
                    facility,
                    jti or licence["jti"],
                    licence["token"],
                    context=services.tokens,
                )
                outcome = "passed"
            except PartvaultError as exc:
                outcome = exc.code
            assert _write_mark(session) == before, outcome
            return outcome

    assert check(good) == "passed"
    assert check(good, jti=other["jti"]) == "licence-jti-mismatch"
    assert check(revoked) == "licence-revoked"
    cert = world.certification["id"]
    world.api.ok("POST", f"/v1/certifications/{cert}/suspend", world.brand, json={"reason": "x"})
    assert check(good) == "certification-suspended"
    monkeypatch.setattr(licences, "utcnow", lambda: datetime(2100, 1, 1, tzinfo=UTC))
    assert check(good).endswith("expired")
    assert _state(world, good["jti"]) == (0, 0, 0)


def test_a_batch_whose_count_fails_is_run_again_request_by_request(world, monkeypatch):
    services = world.api.client.app.state.services
    licence = world.licence(prints=5)
    count, calls = licences._count, []

    def failing_once(session: Any, jti: str, prints: int) -> list[int]:
        calls.append(prints)
        if len(calls) == 1:
            raise RuntimeError("the connection dropped mid-count")
        return count(session, jti, prints)

    monkeypatch.setattr(licences, "_count", failing_once)
    with _counting(services.engine) as counts:
        outcomes = commit(services, [_redemption(world, licence) for _ in range(3)])
    assert all(isinstance(o, bytes) for o in outcomes), outcomes
    assert calls == [3, 1, 1, 1] and counts["commits"] == 3
    assert _state(world, licence["jti"]) == (3, 3, 3)


def test_a_replayed_proof_outranks_only_a_refusal_of_the_role(world):
    """Proofs are remembered together after every request is authorized, yet refused
    as if each had been remembered at the end of its own authorization: after
    the token and the proof's own checks, before the role."""
    services = world.api.client.app.state.services
    licence = world.licence(prints=3)
    spent = _redemption(world, licence)
    assert isinstance(commit(services, [spent])[0], bytes)
    as_brand = (TokenKind.brand,)
    outcomes = commit(
        services,
        [
            replace(_redemption(world, licence, proof=spent.credentials.proof), kinds=as_brand),
            replace(fresh := _redemption(world, licence), kinds=as_brand),
            replace(_redemption(world, licence, proof="not.a.proof"), kinds=as_brand),
        ],
    )
    assert [o.code for o in outcomes] == ["dpop-replayed", "wrong-role", "dpop-malformed"]
    # the fresh proof was remembered although its request was refused
    again = commit(services, [_redemption(world, licence, proof=fresh.credentials.proof)])
    assert isinstance(again[0], Unauthorized) and again[0].code == "dpop-replayed"
    assert _state(world, licence["jti"]) == (1, 1, 1)


def _issuance(world: Any, prints: int = 1, **terms: Any) -> Request:
    """An issuance by the world's brand, as the route queues it."""
    now = utcnow()
    licence_terms = licences.LicenceTerms(
        facility_id=terms.get("facility_id", world.bureau.id),
        revision_id=terms.get("revision_id", world.revision["id"]),
        prints=prints,
        not_before=now,
        expires_at=terms.get("expires_at", now + timedelta(days=30)),
    )

    htu = world.api.settings.public_url + "/v1/licences"
    credentials = Credentials(world.brand, None, "POST", htu)
    check = partial(check_issue, licence_terms)
    return Request(credentials, (TokenKind.brand,), Deferred(check, record_licences))


def test_a_batch_records_its_licences_by_one_insert_and_refusals_write_nothing(world, monkeypatch):
    services = world.api.client.app.state.services
    batch = [_issuance(world, prints=n) for n in (1, 2, 3)]
    batch.insert(1, _issuance(world, revision_id="rev_unknown"))
    batch.insert(3, _issuance(world, expires_at=utcnow() - timedelta(days=1)))
    with _statements(services.engine) as statements:
        outcomes = commit(services, batch)
    issued = [msgspec.json.decode(o) for o in outcomes if isinstance(o, bytes)]
    assert [licence["prints_total"] for licence in issued] == [1, 2, 3]
    assert [o.code for o in outcomes if isinstance(o, PartvaultError)] == [
        "revision-not-found",
        "licence-empty-lifetime",
    ]
    assert _starting(statements, "INSERT INTO licence") == 1
    assert _starting(statements, "SAVEPOINT") == 0
    for licence in issued:  # each one redeemable, and audited once
        assert isinstance(commit(services, [_redemption(world, licence)])[0], bytes)
        audited = _scalar(
            world,
            "SELECT count(*) FROM audit_entry WHERE event_type = 'licensing:licence:issued'"
            " AND subject LIKE :s",
            s=f"%{licence['jti']}%",
        )
        assert audited == 1


def test_an_issuance_check_writes_nothing_whether_it_passes_or_refuses(world):
    services = world.api.client.app.state.services
    with services.transaction() as session:
        brand = authenticate(session, world.brand)
    cases = {
        "passed": _issuance(world),
        "revision-not-found": _issuance(world, revision_id="rev_unknown"),
        "facility-not-found": _issuance(world, facility_id="fac_unknown"),
        "licence-empty-lifetime": _issuance(world, expires_at=utcnow()),
    }
    for expected, request in cases.items():
        assert isinstance(request.work, Deferred)
        with services.transaction() as session:
            before = _write_mark(session)
            try:
                request.work.check(services, session, brand)
                outcome = "passed"
            except PartvaultError as exc:
                outcome = exc.code
            assert (outcome, _write_mark(session)) == (expected, before)
