"""`SqliteWriterTurn`: one writer at a time across threads and processes, without
SQLite's busy-handler sleeps."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from inventory.db import SqliteWriterTurn, make_engine, writer_turn
from inventory.errors import Unavailable


def test_turns_exclude_each_other_across_open_files(tmp_path: Path) -> None:
    """Two turns on one lock file (as two server processes hold them: each its own
    open file) never overlap; the waiter starts once the holder leaves."""
    path = str(tmp_path / "pv.db-writer.lock")
    first, second = SqliteWriterTurn(path), SqliteWriterTurn(path)
    events: list[str] = []
    holding = threading.Event()

    def wait_for_turn() -> None:
        holding.wait()
        with second:
            events.append("second in")

    waiter = threading.Thread(target=wait_for_turn)
    waiter.start()
    with first:
        holding.set()
        waiter.join(timeout=0.2)  # it cannot get in while the first holds the turn
        events.append("first out")
    waiter.join(timeout=10)
    assert events == ["first out", "second in"]
    first.close()
    second.close()


def test_a_waiting_process_gets_the_next_turn(tmp_path: Path) -> None:
    """A writer taking turn after turn (a committing thread, batch after batch)
    lets a waiting process in after its current turn, instead of taking the
    lock back before the waiter's next poll, again and again."""
    path = str(tmp_path / "pv.db-writer.lock")
    busy, waiter = SqliteWriterTurn(path), SqliteWriterTurn(path, timeout=2.0)
    stop, turns = threading.Event(), [0]

    def turn_after_turn() -> None:
        while not stop.is_set():
            with busy:
                turns[0] += 1
                time.sleep(0.001)  # a transaction

    hammer = threading.Thread(target=turn_after_turn)
    hammer.start()
    try:
        while turns[0] < 5:
            time.sleep(0.001)
        started = time.monotonic()
        with waiter:
            waited = time.monotonic() - started
    finally:
        stop.set()
        hammer.join(10)
    assert waited < 0.1
    busy.close()
    waiter.close()


def _hold_for(
    path: str,
    entered: multiprocessing.synchronize.Event,
    release: multiprocessing.synchronize.Event,
) -> None:
    with SqliteWriterTurn(path):
        entered.set()
        release.wait(10)


def test_a_turn_held_by_another_process_times_out_as_503(tmp_path: Path) -> None:
    path = str(tmp_path / "pv.db-writer.lock")
    context = multiprocessing.get_context("spawn")
    entered, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_for, args=(path, entered, release))
    holder.start()
    try:
        assert entered.wait(30)
        turn = SqliteWriterTurn(path, timeout=0.05)
        with pytest.raises(Unavailable) as refused:
            turn.__enter__()
        assert refused.value.code == "database-busy" and refused.value.status == 503
        release.set()
        holder.join(10)
        with turn:  # free again once the other process is done
            pass
        turn.close()
    finally:
        release.set()
        holder.join(10)


def test_a_turn_is_reentrant_in_its_thread(tmp_path: Path) -> None:
    turn = SqliteWriterTurn(str(tmp_path / "lock"))
    other = SqliteWriterTurn(str(tmp_path / "lock"), timeout=0.01)
    with turn, turn:
        pass
    with other:  # both levels released the file lock
        pass
    turn.close()
    other.close()


def test_only_sqlite_files_take_file_turns(tmp_path: Path, db_url: str) -> None:
    engine = make_engine(db_url)
    turn = writer_turn(engine)
    engine.dispose()
    assert isinstance(turn, SqliteWriterTurn) == db_url.startswith("sqlite")
