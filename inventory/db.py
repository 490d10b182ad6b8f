"""Database conventions shared by every domain package.

All tables are SQLModel models on the one `SQLModel.metadata`, which carries a
naming convention so that Alembic migrations name constraints identically on
SQLite and PostgreSQL. Times are stored as UTC and always read back aware.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import DateTime, MetaData
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session, SQLModel

from inventory.errors import Unavailable

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLModel.metadata = MetaData(naming_convention=NAMING_CONVENTION)
metadata = SQLModel.metadata


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """An unguessable identifier with a readable prefix, e.g. ``part_5f0c…``."""
    return f"{prefix}_{secrets.token_hex(12)}"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and returned timezone-aware on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


T = TypeVar("T")
_SHARED_READS = "partvault.shared_reads"


@contextmanager
def shared_reads(session: Session) -> Iterator[None]:
    """Within this block, a read made through `shared_read` runs once per transaction.

    For a group commit, where many requests share one transaction and mostly
    read the same rows (token, facility, licence, certifications): a snapshot
    read twice in one transaction gives the same answer. Only reads of rows the
    shared requests never change may go through `shared_read`, and nothing
    that reads through it may roll back part of the transaction.
    """
    session.info[_SHARED_READS] = {}
    try:
        yield
    finally:
        session.info.pop(_SHARED_READS, None)


def shared_read(session: Session, key: tuple[Hashable, ...], read: Callable[[], T]) -> T:
    """`read()`, or inside `shared_reads` the answer it gave earlier for `key`."""
    memo: dict[tuple[Hashable, ...], Any] | None = session.info.get(_SHARED_READS)
    if memo is None:
        return read()
    if key not in memo:
        memo[key] = read()
    value: T = memo[key]
    return value


class Prepared:
    """A Core statement compiled once per dialect and run on the driver's cursor.

    For the few statements run once per print or per licence (the count, the
    print job, the proof's identifier, the licence row): SQLAlchemy's
    execution path adds 20-45 µs per statement to the driver's own cost
    (measured on the replay insert: 30 -> 8 µs on SQLite, 111 -> 66 µs on
    PostgreSQL). Parameters go through the bind processors SQLAlchemy would
    apply and the session is flushed first, as `Session.execute` does; rows
    come back as the driver returns them, so statements whose results would
    need converting are refused when they are compiled.
    """

    def __init__(self, statement: sa.ClauseElement) -> None:
        self._statement = statement
        self._compiled: dict[Dialect, _DriverStatement] = {}

    def rows(self, session: Session, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run with `params` in the session's transaction; the rows it returns."""
        session.flush()
        connection = session.connection()
        compiled = self._compiled.get(connection.dialect) or self._compile(connection.dialect)
        return _on_driver(connection, compiled.sql, compiled.parameters(params))

    def _check_results(self, dialect: Dialect) -> None:
        for column in getattr(self._statement, "exported_columns", ()):
            if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None:
                raise TypeError(f"column {column.name} needs converting: not for Prepared")

    def _compile(self, dialect: Dialect) -> _DriverStatement:
        compiled = self._statement.compile(dialect=dialect)
        assert isinstance(compiled, sa.sql.compiler.SQLCompiler)
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise TypeError("statements with expanding parameters cannot be prepared")
        self._check_results(dialect)
        names = compiled.positiontup if compiled.positional else list(compiled.bind_names.values())
        assert names is not None
        binds = [compiled.binds[name] for name in names]
        driver = _DriverStatement(
            sql=compiled.string,
            names=tuple(names),
            processors=tuple(b.type.dialect_impl(dialect).bind_processor(dialect) for b in binds),
            literals={n: b.value for n, b in zip(names, binds, strict=True) if b.value is not None},
            positional=compiled.positional,
        )
        self._compiled[dialect] = driver
        return driver


class PreparedSelect(Prepared):
    """A `Prepared` SELECT whose rows are converted as SQLAlchemy converts them (its
    result processors: datetimes, JSON, booleans) into records named like its
    columns (``row.status``). For the reads every batch of the group commit
    makes once (token, facility, certifications, licence, signing keys,
    revision and part profile, reprint policy): ``Session.execute`` took about 39 µs per read on SQLite, the
    driver 2 µs."""

    def __init__(self, statement: sa.Select[Any]) -> None:
        super().__init__(statement)
        self._columns = list(statement.selected_columns)
        self._record = namedtuple("Record", [str(column.key) for column in self._columns])  # type: ignore[misc]
        self._converters: dict[Dialect, tuple[Callable[[Any], Any] | None, ...]] = {}

    def all(self, session: Session, params: Mapping[str, Any]) -> list[Any]:
        """The converted rows for `params`, in the session's transaction."""
        rows = self.rows(session, params)
        converters = self._converters[session.get_bind().dialect]
        return [
            self._record(*(v if c is None else c(v) for v, c in zip(row, converters, strict=True)))
            for row in rows
        ]

    def first(self, session: Session, params: Mapping[str, Any]) -> Any | None:
        """The first converted row for `params`, or None."""
        rows = self.all(session, params)
        return rows[0] if rows else None

    def _check_results(self, dialect: Dialect) -> None:
        self._converters[dialect] = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in self._columns
        )


@dataclass(frozen=True)
class _DriverStatement:
    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    literals: dict[str, Any]  # values written into the statement, such as the 1 of ``n + 1``
    positional: bool

    def parameters(self, params: Mapping[str, Any]) -> list[Any] | dict[str, Any]:
        """The driver's parameters: every bound name must be given (or be a literal)."""
        given = [params[n] if n in params else self.literals[n] for n in self.names]
        values = [
            value if process is None else process(value)
            for value, process in zip(given, self.processors, strict=True)
        ]
        return values if self.positional else dict(zip(self.names, values, strict=True))


#: PostgreSQL's deadlock_detected and serialization_failure: the transaction lost a
#: race and may simply be run again.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def is_deadlock(exc: BaseException) -> bool:
    """Whether `exc` (or an error it was raised from) says the transaction lost a
    deadlock or a serialization conflict, so running it again may succeed."""
    seen: BaseException | None = exc
    while seen is not None:
        sqlstate = (
            getattr(seen.orig, "sqlstate", None) if isinstance(seen, sa.exc.DBAPIError) else None
        )
        if sqlstate in _RETRYABLE_SQLSTATES:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def insert_if_absent(
    session: Session, model: type[SQLModel], row: dict[str, Any], key: str
) -> bool:
    """Insert `row` (every column) unless it violates a unique constraint; True when inserted.

    Portable ``INSERT … ON CONFLICT DO NOTHING RETURNING key`` (RETURNING reports
    the outcome on every driver), prepared once per table. No statement fails,
    so the caller's transaction stays usable without a savepoint. On PostgreSQL
    a conflicting insert by a concurrent, uncommitted transaction makes this
    wait for that transaction; SQLite serialises writers anyway.
    """
    return bool(insert_all_absent(session, model, [row], key))


def insert_all_absent(
    session: Session, model: type[SQLModel], rows: list[dict[str, Any]], key: str
) -> set[Any]:
    """`insert_if_absent` of several rows (every column each) by one statement; the
    keys of those inserted.

    One multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING key``, prepared
    once per table and row count: one round trip on PostgreSQL, and a fraction
    of the cost of as many single-row inserts (or of SQLAlchemy's executemany).
    """
    if not rows:
        return set()
    table: sa.Table = model.__table__  # type: ignore[attr-defined]
    statement = _insert_rows(session.get_bind().dialect.name, table, len(rows), key)
    return {found for (found,) in statement.rows(session, _numbered(rows))}


def _numbered(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The parameters of `_insert_rows`: the i-th row's column c as ``c_i``."""
    return {f"{name}_{i}": value for i, row in enumerate(rows) for name, value in row.items()}


def insert_all(session: Session, model: type[SQLModel], rows: list[dict[str, Any]]) -> None:
    """Insert several rows (every column each) by one prepared multi-row ``INSERT``."""
    if rows:
        table: sa.Table = model.__table__  # type: ignore[attr-defined]
        statement = _insert_rows(session.get_bind().dialect.name, table, len(rows), None)
        statement.rows(session, _numbered(rows))


def delete_where(
    session: Session,
    key: sa.Column[Any],
    condition: sa.ColumnElement[bool],
    limit: int | None = None,
) -> int:
    """Delete the rows of `key`'s table matching `condition`, at most `limit` of
    them (chosen by the database); how many were deleted. A limit keeps a large
    backlog from holding SQLite's writer lock, or many row locks, for long."""
    table = key.table
    if limit is None:
        statement = sa.delete(table).where(condition)
    else:
        chosen = sa.select(key).where(condition).limit(limit)
        statement = sa.delete(table).where(key.in_(chosen.scalar_subquery()))
    result = session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


@lru_cache(maxsize=256)
def _insert_rows(dialect: str, table: sa.Table, count: int, ignoring: str | None) -> Prepared:
    """``INSERT … VALUES`` of `count` rows, the i-th row's column c bound as ``c_i``;
    with `ignoring` (a key column), ``ON CONFLICT DO NOTHING RETURNING`` that key."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    rows = [
        {column.name: sa.bindparam(f"{column.name}_{i}", type_=column.type) for column in table.c}
        for i in range(count)
    ]
    statement = insert(table).values(rows)
    if ignoring is None:
        return Prepared(statement)
    return Prepared(statement.on_conflict_do_nothing().returning(table.c[ignoring]))


#: How long a SQLite writer waits for the lock: SQLite's busy timeout and a writer turn's.
SQLITE_BUSY_SECONDS = 30


def make_engine(url: str, *, pool_size: int = 5, **kwargs: Any) -> sa.Engine:
    """An engine with the per-backend settings partvault relies on.

    PostgreSQL: `pool_size` connections kept open, as many again opened in a
    burst (each server process has its own pool, so PostgreSQL's
    ``max_connections`` must cover workers x 2 x `pool_size`), checked with a
    ping before use.

    SQLite: WAL, foreign keys on, a generous busy timeout, connections usable
    from the worker threads that run blocking handlers, and every transaction
    opened with BEGIN IMMEDIATE so concurrent writers queue on the writer lock
    instead of failing when a read lock cannot be upgraded.
    """
    if url.startswith("sqlite"):
        kwargs.setdefault(
            "connect_args", {"check_same_thread": False, "timeout": SQLITE_BUSY_SECONDS}
        )
        engine = sa.create_engine(url, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin_immediate)
    else:
        kwargs.setdefault("pool_pre_ping", True)
        engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, **kwargs)
    _plain_savepoints(engine.dialect)
    return engine


def _plain_savepoints(dialect: Dialect) -> None:
    """Send savepoint statements to the driver as they are.

    SQLAlchemy compiles each SAVEPOINT / RELEASE / ROLLBACK TO anew (their
    names vary, so they never hit the statement cache): about 0.1 ms per
    savepoint on SQLite, a fifth of a group-committed request, which takes
    one savepoint each. The names are SQLAlchemy's own ``sa_savepoint_N``.
    """
    dialect.do_savepoint = partial(_driver_sql, "SAVEPOINT")  # type: ignore[method-assign]
    dialect.do_release_savepoint = partial(_driver_sql, "RELEASE SAVEPOINT")  # type: ignore[method-assign]
    dialect.do_rollback_to_savepoint = partial(_driver_sql, "ROLLBACK TO SAVEPOINT")  # type: ignore[method-assign]


def _driver_sql(verb: str, connection: sa.Connection, name: str) -> None:
    _on_driver(connection, f"{verb} {name}")


def _on_driver(
    connection: sa.Connection, sql: str, params: list[Any] | dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """Run `sql` on the connection's own driver cursor; the rows it returns.

    A driver error is raised as SQLAlchemy would raise it (wrapped in its
    `DBAPIError` subclass, the connection invalidated on a disconnect), so
    callers see the same errors as from `Session.execute`.
    """
    cursor = connection.connection.cursor()
    try:
        if params is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []
    except connection.dialect.loaded_dbapi.Error as exc:
        disconnected = connection.dialect.is_disconnect(exc, connection.connection, cursor)
        if disconnected:
            connection.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            sql,
            params,
            exc,
            connection.dialect.loaded_dbapi.Error,
            connection_invalidated=disconnected,
            dialect=connection.dialect,
        ) from exc
    finally:
        if not connection.invalidated:
            cursor.close()


def writer_turn(engine: sa.Engine) -> AbstractContextManager[object]:
    """What a transaction on `engine` holds while it runs: on a SQLite file, a turn
    at its writer lock (`SqliteWriterTurn`); elsewhere nothing."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    database = engine.url.database
    if not database or database == ":memory:":
        return threading.RLock()
    return SqliteWriterTurn(database + "-writer.lock")


#: How long a process about to take the writer turn again leaves it to a waiting one.
FAIR_TURN_SECONDS = 0.02


class SqliteWriterTurn:
    """Turns at a SQLite database's single writer lock, for every thread and
    process of partvault (every transaction begins IMMEDIATE, reads included).

    A writer that finds SQLite's lock taken sleeps in SQLite's busy handler, in
    steps growing to 100 ms, so it may start long after the lock was freed
    (measured with two server processes: redemption p99 300 ms). Here the
    threads of a process queue on a lock and one of them at a time polls an
    exclusive ``flock`` of the lock file next to the database, in steps of at
    most 1 ms: the next writer starts within a millisecond. A process that
    found the turn taken says so with a shared ``flock`` of a second file
    (``…-waiting``) while it polls, and a process about to take the turn again
    first lets such a waiter go (`_let_waiters_go`): a process committing batch
    after batch would otherwise take the turn back before the other's next
    poll, every time (measured: p99 250-350 ms with two processes). SQLite's
    lock stays the authority; programs that do not take turns still meet its
    busy timeout. Re-entrant in the thread that holds the turn.
    """

    def __init__(self, path: str, timeout: float = SQLITE_BUSY_SECONDS) -> None:
        self._path = path
        self._timeout = timeout
        self._thread_turn = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._waiting_fd: int | None = None

    def __enter__(self) -> None:
        self._thread_turn.acquire()
        try:
            if self._depth == 0:
                self._take_file_lock()
        except BaseException:
            self._thread_turn.release()
            raise
        self._depth += 1

    def __exit__(self, *_: object) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_turn.release()

    def close(self) -> None:
        """Close the lock files (a later turn opens them again)."""
        for fd in (self._fd, self._waiting_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._waiting_fd = None

    def _take_file_lock(self) -> None:
        if self._fd is None or self._waiting_fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            self._waiting_fd = os.open(self._path + "-waiting", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self._timeout
        self._let_waiters_go(deadline)
        waiting, pause = False, 0.0001
        try:
            while not _try_flock(self._fd, fcntl.LOCK_EX):
                waiting = waiting or _try_flock(self._waiting_fd, fcntl.LOCK_SH)
                _pause_until(deadline, pause)
                pause = min(pause * 2, 0.001)
        finally:
            if waiting:
                fcntl.flock(self._waiting_fd, fcntl.LOCK_UN)

    def _let_waiters_go(self, deadline: float) -> None:
        """While another process waits for a turn (holds ``…-waiting``), and for
        at most `FAIR_TURN_SECONDS`, leave the turn to it."""
        assert self._waiting_fd is not None
        until = min(deadline, time.monotonic() + FAIR_TURN_SECONDS)
        while not _try_flock(self._waiting_fd, fcntl.LOCK_EX):
            if time.monotonic() > until:
                return
            time.sleep(0.0002)
        fcntl.flock(self._waiting_fd, fcntl.LOCK_UN)


def _try_flock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _pause_until(deadline: float, pause: float) -> None:
    if time.monotonic() > deadline:
        raise Unavailable("the database stayed busy", code="database-busy")
    time.sleep(pause)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let the "begin" hook below open transactions
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
    cursor.close()


def _sqlite_begin_immediate(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")
