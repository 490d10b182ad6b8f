"""Appends and proofs from several connections at once, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel

import licensing.audit as audit
from licensing.audit import merkle

ORIGIN = "partvault.test/audit"
KEY = Ed25519PrivateKey.generate()
VKEY = audit.verifier_key_string(ORIGIN, KEY.public_key())
WRITERS, TXNS = 6, 12


def ev(writer: int, n: int) -> audit.AuditEvent:
    return audit.AuditEvent(
        type="licensing:print:report",
        actor=f"facility:fac_{writer}",
        brand_id="brand_a",
        facts={"writer": writer, "n": n},
        occurred_at=datetime.now(UTC),
    )


def run_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def guard(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guard(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def writer(engine: Engine, w: int, seen: list[int]) -> Callable[[], None]:
    def run() -> None:
        for n in range(TXNS):
            with Session(engine) as s:
                receipts = audit.append_events(s, [ev(w, n)] * (1 + n % 3))
                s.commit()
            seen.extend(r.index for r in receipts)

    return run


def expected_total() -> int:
    return WRITERS * sum(1 + n % 3 for n in range(TXNS))


def full_log(engine: Engine) -> list[tuple[int, bytes | None, bytes]]:
    with Session(engine) as s:
        return [(e.index, e.body, e.leaf_hash) for e in audit.entries(s, 0, 1000)]


def test_concurrent_appends_are_gapless_and_consistent(engine: Engine) -> None:
    seen: list[int] = []
    run_threads([writer(engine, w, seen) for w in range(WRITERS)])
    total = expected_total()
    assert sorted(seen) == list(range(total))
    with Session(engine) as s:
        note = audit.latest_checkpoint(s, KEY, ORIGIN).signed_note
        s.commit()
    rows = full_log(engine)
    report = audit.verify_log(rows, [note], VKEY)
    assert report.entries == report.latest.size == total
    with engine.connect() as conn:
        stored = {
            (lvl, idx): bytes(h)
            for lvl, idx, h in conn.execute(sa.text('SELECT level, "index", hash FROM audit_node'))
        }
    rebuilt: dict[tuple[int, int], bytes] = {}
    tree = merkle.CompactRange()
    for _, _, leaf in rows:
        rebuilt.update(((lvl, idx), h) for lvl, idx, h in tree.append(leaf))
    assert stored == rebuilt


def test_proofs_during_appends_verify_at_the_stated_size(engine: Engine) -> None:
    observed: list[tuple[int, bytes]] = []
    stop = threading.Event()

    def prover() -> None:
        rng = random.Random(7)
        last = (0, merkle.EMPTY_ROOT)
        while not stop.is_set() or len(observed) < 5:
            with Session(engine) as s:
                size = audit.log_size(s)
                root = audit.tree_root(s, size)
                if size:
                    m = rng.randrange(size)
                    leaf = audit.entries(s, m, 1)[0].leaf_hash
                    audit.verify_inclusion(leaf, m, size, audit.inclusion_proof(s, m, size), root)
                proof = audit.consistency_proof(s, last[0], size)
                audit.verify_consistency(last[0], size, last[1], root, proof)
            last = (size, root)
            observed.append(last)

    def writers() -> None:
        try:
            run_threads([writer(engine, w, []) for w in range(WRITERS)])
        finally:
            stop.set()

    run_threads([writers, prover, prover])
    final = merkle.CompactRange()
    roots = [merkle.EMPTY_ROOT]
    for _, _, leaf in full_log(engine):
        final.append(leaf)
        roots.append(final.root())
    assert len({size for size, _ in observed}) > 1
    assert all(roots[size] == root for size, root in observed)


def test_an_append_after_reading_the_head_takes_the_next_index(engine: Engine) -> None:
    with Session(engine) as a:
        assert audit.log_size(a) == 0
        with Session(engine) as b:
            audit.append_event(b, ev(1, 0))
            b.commit()
        assert audit.append_event(a, ev(2, 0)).index == 1
        a.commit()
    assert [i for i, _, _ in full_log(engine)] == [0, 1]


def test_sqlite_stale_deferred_transaction_cannot_append(tmp_path: Path) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'wal.db'}", connect_args={"timeout": 0.5})

    @sa.event.listens_for(eng, "connect")
    def _connect(dbapi_conn: object, _: object) -> None:
        dbapi_conn.isolation_level = None  # type: ignore[attr-defined]
        dbapi_conn.execute("PRAGMA journal_mode=WAL")  # type: ignore[attr-defined]

    @sa.event.listens_for(eng, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN DEFERRED")

    SQLModel.metadata.create_all(eng)
    with Session(eng) as a:
        assert audit.log_size(a) == 0
        with Session(eng) as b:
            assert audit.append_event(b, ev(1, 0)).index == 0
            b.commit()
        with pytest.raises(OperationalError):
            audit.append_event(a, ev(2, 0))
        a.rollback()
        assert audit.append_event(a, ev(2, 0)).index == 1
        a.commit()
    assert [i for i, _, _ in full_log(eng)] == [0, 1]
    eng.dispose()
