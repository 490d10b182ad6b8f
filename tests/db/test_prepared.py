"""`Prepared`: Core statements run on the driver's cursor, on both backends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session
from tests_support import create_pg_database, drop_pg_database

from inventory.db import (
    Prepared,
    PreparedSelect,
    UTCDateTime,
    insert_all_absent,
    insert_if_absent,
    is_deadlock,
    make_engine,
)
from licensing.tokens.replay import DpopReplay

_METADATA = sa.MetaData()
_PROBE = sa.Table(
    "prepared_probe",
    _METADATA,
    sa.Column("id", sa.String(20), primary_key=True),
    sa.Column("at", UTCDateTime),
    sa.Column("facts", sa.JSON),
    sa.Column("flag", sa.Boolean),
    sa.Column("count", sa.Integer),
)
_INSERT = Prepared(sa.insert(_PROBE))
_BUMP = Prepared(
    sa.update(_PROBE)
    .where(_PROBE.c.id == sa.bindparam("probe"), _PROBE.c.count < 2)
    .values(count=_PROBE.c.count + 1)
    .returning(_PROBE.c.count)
)
AT = datetime(2026, 12, 4, 23, 59, 58, 123456, tzinfo=UTC)


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    engine = make_engine(db_url)
    _METADATA.create_all(engine)
    DpopReplay.__table__.create(engine)  # type: ignore[attr-defined]
    try:
        with Session(engine) as session, session.begin():
            yield session
    finally:
        engine.dispose()


def _row(**overrides: Any) -> dict[str, Any]:
    return {"id": "a", "at": AT, "facts": {"k": [1, "x"]}, "flag": True, "count": 0} | overrides


def test_parameters_are_converted_as_sqlalchemy_would(session: Session) -> None:
    assert _INSERT.rows(session, _row()) == []
    stored = session.execute(sa.select(_PROBE)).one()
    assert stored == ("a", AT, {"k": [1, "x"]}, True, 0)
    assert stored.at.tzinfo is not None


def test_literals_in_the_statement_and_returned_rows(session: Session) -> None:
    _INSERT.rows(session, _row())
    assert [_BUMP.rows(session, {"probe": "a"}) for _ in range(3)] == [[(1,)], [(2,)], []]
    assert _BUMP.rows(session, {"probe": "missing"}) == []


def test_a_missing_parameter_fails_before_anything_is_sent(session: Session) -> None:
    row = _row()
    del row["flag"]
    with pytest.raises(KeyError, match="flag"):
        _INSERT.rows(session, row)
    assert session.execute(sa.select(sa.func.count()).select_from(_PROBE)).scalar() == 0


def test_results_that_need_converting_are_refused(session: Session) -> None:
    with pytest.raises(TypeError, match="at needs converting"):
        Prepared(sa.select(_PROBE.c.at)).rows(session, {})


_SELECT = PreparedSelect(
    sa.select(_PROBE.c.at, _PROBE.c.facts, _PROBE.c.flag, _PROBE.c.count, _PROBE.c.id)
    .where(_PROBE.c.id >= sa.bindparam("first"))
    .order_by(_PROBE.c.id)
)


def test_a_prepared_select_converts_its_rows_as_sqlalchemy_would(session: Session) -> None:
    _INSERT.rows(session, _row())
    _INSERT.rows(session, _row(id="b", at=None, facts=None, flag=False))
    expected = session.execute(_SELECT._statement, {"first": "a"}).all()
    got = _SELECT.all(session, {"first": "a"})
    assert [tuple(r) for r in got] == [tuple(r) for r in expected]
    assert got[0] == (AT, {"k": [1, "x"]}, True, 0, "a")
    assert got[0].at.tzinfo is not None and got[0].facts == {"k": [1, "x"]}
    assert got[0].flag is True and got[1].flag is False and got[1].at is None
    assert _SELECT.first(session, {"first": "b"}).id == "b"
    assert _SELECT.first(session, {"first": "c"}) is None


def test_pending_orm_changes_are_flushed_first(session: Session) -> None:
    """As with ``Session.execute``: the added row is there before the insert runs."""
    expires = AT + timedelta(seconds=60)
    session.add(DpopReplay(digest="d" * 64, expires_at=expires))
    assert not insert_if_absent(
        session, DpopReplay, {"digest": "d" * 64, "expires_at": expires}, "digest"
    )
    assert insert_if_absent(
        session, DpopReplay, {"digest": "e" * 64, "expires_at": expires}, "digest"
    )


def test_driver_errors_are_raised_as_sqlalchemy_raises_them(session: Session) -> None:
    """A constraint violation on the driver's cursor is SQLAlchemy's IntegrityError,
    like from `Session.execute`, and the transaction's earlier work is intact."""
    _INSERT.rows(session, _row())
    with pytest.raises(sa.exc.IntegrityError) as caught, session.begin_nested():
        _INSERT.rows(session, _row(count=5))
    assert not is_deadlock(caught.value)
    assert session.execute(sa.select(_PROBE.c.count)).scalars().all() == [0]


def test_a_lost_deadlock_is_recognised_on_postgresql() -> None:
    """Two transactions lock two rows in opposite orders; PostgreSQL aborts one of
    them, and `is_deadlock` says that one may be run again (through `Prepared` too).
    PostgreSQL only: SQLite has one writer, its transactions cannot deadlock."""
    db_url = create_pg_database()
    engine = make_engine(db_url)
    _METADATA.create_all(engine)
    with engine.begin() as conn:
        conn.execute(_PROBE.insert(), [_row(id="a"), _row(id="b")])
    both_locked_one = threading.Barrier(2)
    failures: list[BaseException] = []

    def bump(first: str, second: str) -> None:
        try:
            with Session(engine) as session, session.begin():
                _BUMP.rows(session, {"probe": first})
                both_locked_one.wait()
                _BUMP.rows(session, {"probe": second})
        except sa.exc.DBAPIError as exc:
            failures.append(exc)

    threads = [threading.Thread(target=bump, args=pair) for pair in (("a", "b"), ("b", "a"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    engine.dispose()
    drop_pg_database(db_url)
    assert len(failures) == 1 and is_deadlock(failures[0])


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The dialects `Prepared` statements are compiled for while the test runs."""
    dialects: list[Any] = []
    compile_once = Prepared._compile

    def counting(self: Prepared, dialect: Any) -> Any:
        dialects.append(dialect)
        return compile_once(self, dialect)

    monkeypatch.setattr(Prepared, "_compile", counting)
    return dialects


def test_insert_if_absent_compiles_once_per_table(session: Session, compiled: list[Any]) -> None:
    """Once per table and engine, not per call: it runs once per redemption."""
    for n in range(3):
        row = {"digest": f"{n:064x}", "expires_at": AT}
        assert insert_if_absent(session, DpopReplay, row, "digest")
    assert len(compiled) == 1


def test_insert_all_absent_inserts_what_is_new_in_one_statement(
    session: Session, compiled: list[Any]
) -> None:
    """Rows already there (or repeated in the call) are skipped; one statement per
    call, compiled once per row count."""
    expires = AT + timedelta(seconds=60)

    def rows(*digits: int) -> list[dict[str, Any]]:
        return [{"digest": f"{d:064x}", "expires_at": expires} for d in digits]

    assert insert_all_absent(session, DpopReplay, rows(1, 2, 3), "digest") == {
        f"{d:064x}" for d in (1, 2, 3)
    }
    assert insert_all_absent(session, DpopReplay, rows(3, 4, 4), "digest") == {f"{4:064x}"}
    assert insert_all_absent(session, DpopReplay, [], "digest") == set()
    assert len(compiled) == 1  # both calls had three rows
    stored = session.execute(sa.select(DpopReplay)).scalars().all()
    assert len(stored) == 4 and {row.expires_at for row in stored} == {expires}
