"""Idempotency-Key semantics on SQLite and PostgreSQL, including a real race."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from inventory.db import utcnow
from inventory.errors import BadRequest, Conflict, Invalid, PartvaultError
from licensing.orders.idempotency import (
    IdempotencyRecord,
    Replay,
    Started,
    abandon,
    begin,
    fingerprint,
    finish,
    prune_expired,
    require_key,
)

BODY = b'{"part": "part_1", "quantity": 2}'
FP = fingerprint("POST", "/v1/orders", BODY)


def claim(
    engine: Engine, key: str, fp: str = FP, scope: str = "tok_shop1", **kw: object
) -> Replay | Started:
    with Session(engine) as s:
        outcome = begin(s, scope, key, fp, **kw)  # type: ignore[arg-type]
        s.commit()
    return outcome


def complete(engine: Engine, started: Replay | Started, status: int, body: bytes) -> None:
    assert isinstance(started, Started)
    with Session(engine) as s:
        finish(s, started.record_id, status, body)
        s.commit()


def test_key_header_is_required_and_sane() -> None:
    for missing in (None, "", "   "):
        with pytest.raises(BadRequest) as exc:
            require_key(missing)
        assert exc.value.code == "idempotency-key-missing" and exc.value.status == 400
    with pytest.raises(BadRequest) as exc:
        require_key("x" * 256)
    assert exc.value.code == "idempotency-key-invalid"
    assert (
        require_key(' "8e03978e-40d5-43e8-bc93-6894a57f9324" ')
        == '"8e03978e-40d5-43e8-bc93-6894a57f9324"'
    )


def test_fingerprint_is_canonical_over_json_and_binds_method_and_path() -> None:
    assert fingerprint("post", "/v1/orders", b'{"quantity":2, "part":"part_1"}') == FP
    assert fingerprint("POST", "/v1/orders", b'{"part": "part_1", "quantity": 3}') != FP
    assert fingerprint("POST", "/v1/quotes", BODY) != FP
    assert fingerprint("PUT", "/v1/orders", BODY) != FP
    assert fingerprint("POST", "/v1/x", b"\xff not json") != fingerprint("POST", "/v1/x", b"")


def test_done_request_is_replayed(engine: Engine) -> None:
    first = claim(engine, "k1")
    complete(engine, first, 201, b'{"id": "ord_1"}')
    again = claim(engine, "k1")
    assert again == Replay(201, b'{"id": "ord_1"}')


def test_same_key_other_body_is_422(engine: Engine) -> None:
    complete(engine, claim(engine, "k1"), 201, b"{}")
    other = fingerprint("POST", "/v1/orders", b'{"part": "part_2", "quantity": 2}')
    with pytest.raises(Invalid) as exc:
        claim(engine, "k1", other)
    assert exc.value.code == "idempotency-key-reused" and exc.value.status == 422


def test_same_key_in_flight_is_409(engine: Engine) -> None:
    assert isinstance(claim(engine, "k1"), Started)
    with pytest.raises(Conflict) as exc:
        claim(engine, "k1")
    assert exc.value.code == "idempotency-key-in-flight" and exc.value.status == 409


def test_keys_are_scoped_per_actor(engine: Engine) -> None:
    complete(engine, claim(engine, "k1", scope="tok_a"), 201, b"a")
    assert isinstance(claim(engine, "k1", scope="tok_b"), Started)


def test_abandoned_key_can_be_retried(engine: Engine) -> None:
    started = claim(engine, "k1")
    assert isinstance(started, Started)
    with Session(engine) as s:
        abandon(s, started.record_id)
        s.commit()
    assert isinstance(claim(engine, "k1"), Started)


def test_stale_in_progress_record_is_taken_over(engine: Engine) -> None:
    started = claim(engine, "k1")
    later = utcnow() + timedelta(minutes=6)
    again = claim(engine, "k1", now=later)
    assert again == started  # the same record, restarted
    with pytest.raises(Conflict):
        claim(engine, "k1", now=later + timedelta(seconds=1))


def test_expired_record_is_forgotten_and_pruned(engine: Engine) -> None:
    complete(engine, claim(engine, "k1"), 201, b"old")
    after_ttl = utcnow() + timedelta(hours=24, seconds=1)
    fresh = claim(engine, "k1", now=after_ttl)
    assert isinstance(fresh, Started)
    complete(engine, claim(engine, "k2"), 201, b"x")
    with Session(engine) as s:
        assert prune_expired(s, after_ttl) == 1  # k2 expired; k1 was claimed afresh
        s.commit()
        assert [r.key for r in s.exec(select(IdempotencyRecord))] == ["k1"]
        assert prune_expired(s, after_ttl + timedelta(hours=24, seconds=1)) == 1
        s.commit()
        assert list(s.exec(select(IdempotencyRecord))) == []


def test_prune_deletes_at_most_its_limit(engine: Engine) -> None:
    for key in ("a", "b", "c"):
        complete(engine, claim(engine, key), 201, b"x")
    later = utcnow() + timedelta(hours=25)
    with Session(engine) as s:
        assert prune_expired(s, later, limit=2) == 2
        assert prune_expired(s, later, limit=2) == 1
        assert prune_expired(s, later, limit=2) == 0
        s.commit()


def test_concurrent_begins_with_one_key_admit_exactly_one(engine: Engine) -> None:
    barrier = threading.Barrier(2)
    results: list[object] = []

    def contender() -> None:
        barrier.wait()
        try:
            results.append(claim(engine, "race"))
        except PartvaultError as exc:
            results.append(exc)

    threads = [threading.Thread(target=contender) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sum(isinstance(r, Started) for r in results) == 1
    losers = [r for r in results if isinstance(r, Conflict)]
    assert len(losers) == 1 and losers[0].code == "idempotency-key-in-flight"
