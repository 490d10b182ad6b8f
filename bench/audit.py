"""Benchmark the audit log: append rate, proof latency and reads, storage per event.

    python bench/audit.py                       # 1,000,000 events, SQLite file
    python bench/audit.py --db postgresql+psycopg://postgres@127.0.0.1/bench --count 200000

The database must not hold an audit log yet (tables are created if missing).
Appends are measured twice: one event per transaction (``--single`` events,
the API's real pattern) and ``--batch`` events per transaction for the bulk.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, SQLModel

import licensing.audit as audit
from licensing.audit import merkle
from licensing.audit.log import DbHashReader

ORIGIN = "partvault.bench/audit"
TABLES = ["audit_entry", "audit_node", "audit_head", "audit_checkpoint"]


def event(i: int) -> audit.AuditEvent:
    """A realistic print-redemption event."""
    return audit.AuditEvent(
        type="licensing:print:redeem",
        actor=f"facility:fac_{i % 97:024x}",
        brand_id=f"brand_{i % 13:024x}",
        subject={"licence": f"lic_{i // 10:024x}", "print": f"prt_{i:024x}"},
        facts={"serial": f"PV-{i:010d}", "remaining": i % 10, "quantity": 10},
        occurred_at=datetime.now(UTC),
    )


def append(engine: sa.Engine, start: int, count: int, batch: int) -> float:
    """Append ``count`` events, ``batch`` per transaction; return events per second."""
    began = time.perf_counter()
    for first in range(start, start + count, batch):
        with Session(engine) as s:
            audit.append_events(
                s, [event(i) for i in range(first, min(start + count, first + batch))]
            )
            s.commit()
    return count / (time.perf_counter() - began)


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float, float]:
    """Median, 99th percentile and max wall time of ``fn`` in milliseconds."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), statistics.quantiles(times, n=100)[98], max(times)


class QueryCounter:
    """Counts SQL statements sent on an engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self._on_execute)

    def _on_execute(self, *_: Any) -> None:
        self.count += 1


def proofs(engine: sa.Engine, size: int, runs: int) -> None:
    """Report proof latency, statements and node rows at ``size``."""
    rng = random.Random(1)
    counter = QueryCounter(engine)
    with Session(engine) as s:
        s.connection()
        for name, call, reader_call in [
            (
                "inclusion",
                lambda: audit.inclusion_proof(s, rng.randrange(size), size),
                lambda r: merkle.inclusion_proof(r, rng.randrange(size), size),
            ),
            (
                "consistency",
                lambda: audit.consistency_proof(s, rng.randrange(1, size), size),
                lambda r: merkle.consistency_proof(r, rng.randrange(1, size), size),
            ),
        ]:
            timed(call, runs // 5)  # warm-up: compile each statement shape, warm the cache
            before = counter.count
            median, p99, worst = timed(call, runs)
            statements = (counter.count - before) / runs
            reader = DbHashReader(s)
            for _ in range(runs):
                reader_call(reader)
            print(
                f"{name} proof @ {size:,}: median {median:.2f} ms, p99 {p99:.2f} ms, "
                f"max {worst:.2f} ms, "
                f"{statements:.0f} SQL statements, {reader.rows / runs:.1f} node rows/proof "
                f"(2·log2 n = {2 * size.bit_length()})"
            )


def storage(engine: sa.Engine, url: str) -> int:
    """Bytes used by the audit tables (file size on SQLite)."""
    if engine.dialect.name == "sqlite":
        return Path(url.removeprefix("sqlite:///")).stat().st_size
    with engine.connect() as conn:
        return int(
            sum(
                conn.execute(sa.text("SELECT pg_total_relation_size(:t)"), {"t": t}).scalar_one()
                for t in TABLES
            )
        )


def verify_all(engine: sa.Engine, size: int) -> None:
    """Fetch every entry page by page and run the offline verifier."""
    key = Ed25519PrivateKey.generate()
    with Session(engine) as s:
        note = audit.latest_checkpoint(s, key, ORIGIN).signed_note
        s.commit()

    def rows() -> Any:
        with Session(engine) as s:
            for start in range(0, size, 1000):
                for e in audit.entries(s, start, 1000):
                    yield e.index, e.body, e.leaf_hash

    began = time.perf_counter()
    report = audit.verify_log(rows(), [note], audit.verifier_key_string(ORIGIN, key.public_key()))
    print(f"verify_log over {report.entries:,} entries: {time.perf_counter() - began:.1f} s")


def wal_mode(dbapi_conn: Any, _: Any) -> None:
    """Switch a SQLite connection to WAL with synchronous=NORMAL."""
    dbapi_conn.execute("PRAGMA journal_mode=WAL")
    dbapi_conn.execute("PRAGMA synchronous=NORMAL")


def main() -> None:
    """Parse arguments, run every measurement and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=f"sqlite:///{tempfile.mkdtemp()}/audit-bench.db")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--single", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--verify", action="store_true", help="also time verify_log")
    parser.add_argument(
        "--sqlite-wal", action="store_true", help="SQLite in WAL mode with synchronous=NORMAL"
    )
    args = parser.parse_args()
    engine = sa.create_engine(args.db)
    if args.sqlite_wal:
        sa.event.listen(engine, "connect", wal_mode)
    SQLModel.metadata.create_all(engine, tables=[SQLModel.metadata.tables[t] for t in TABLES])
    with Session(engine) as s:
        if audit.log_size(s):
            raise SystemExit("the database already holds an audit log")
    single = min(args.single, args.count)
    print(f"db: {engine.dialect.name}  {args.db}  wal={args.sqlite_wal}")
    print(
        f"append, 1 event/transaction: {append(engine, 0, single, 1):,.0f} events/s "
        f"({single:,} events)"
    )
    rest = args.count - single
    if rest:
        rate = append(engine, single, rest, args.batch)
        print(f"append, {args.batch} events/transaction: {rate:,.0f} events/s ({rest:,} events)")
    proofs(engine, args.count, args.runs)
    used = storage(engine, args.db)
    print(f"storage: {used / 2**20:,.1f} MiB, {used / args.count:,.0f} bytes/event")
    if args.verify:
        verify_all(engine, args.count)
    engine.dispose()


if __name__ == "__main__":
    main()
