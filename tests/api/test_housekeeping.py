"""Housekeeping: expired proof identifiers and Idempotency-Keys are deleted."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from api import housekeeping
from api.housekeeping import HousekeepingTask, prune
from inventory.db import utcnow
from licensing.orders import idempotency
from licensing.tokens.replay import remember


def _fill(services: Any, expired: int, fresh: int) -> None:
    """`expired` stale and `fresh` live rows in both tables."""
    now = utcnow()
    with Session(services.engine) as session:
        for n in range(expired + fresh):
            stale = n < expired
            remember(session, f"jkt\x00proof-{n}", now + timedelta(seconds=-1 if stale else 60))
            claimed_at = now - timedelta(hours=25) if stale else now
            claim = idempotency.begin(session, "tok_1", f"key-{n}", "fp", now=claimed_at)
            assert isinstance(claim, idempotency.Started)
            idempotency.finish(session, claim.record_id, 201, b"{}")
        session.commit()


def _counts(services: Any) -> dict[str, int]:
    with services.engine.connect() as conn:
        return {
            table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("dpop_replay", "idempotency_record")
        }


def test_prune_deletes_every_expired_row_chunk_by_chunk(api):
    services = api.client.app.state.services
    _fill(services, expired=5, fresh=2)
    assert prune(services, chunk=2) == {"dpop_replay": 5, "idempotency_record": 5}
    assert _counts(services) == {"dpop_replay": 2, "idempotency_record": 2}
    assert prune(services, chunk=2) == {"dpop_replay": 0, "idempotency_record": 0}


def _with_interval(services: Any, seconds: float) -> Any:
    settings = dataclasses.replace(services.settings, prune_interval=seconds)
    return dataclasses.replace(services, settings=settings)


def _run_until(api: Any, left: dict[str, int], failure: str) -> HousekeepingTask:
    """Run housekeeping every 50 ms until the tables hold `left` rows, then stop it."""
    services = api.client.app.state.services

    async def run() -> HousekeepingTask:
        task = HousekeepingTask(_with_interval(services, 0.05))
        await task.start(api.client.app)
        deadline = time.monotonic() + 20
        while _counts(services) != left:
            assert time.monotonic() < deadline, failure
            await asyncio.sleep(0.05)
        await task.stop(api.client.app)
        return task

    return asyncio.run(run())


def test_each_server_process_prunes_in_the_background(api):
    services = api.client.app.state.services
    _fill(services, expired=3, fresh=1)

    task = _run_until(
        api, {"dpop_replay": 1, "idempotency_record": 1}, "expired rows were never pruned"
    )
    assert task.task is None


def test_an_interval_of_zero_turns_housekeeping_off(api):
    services = api.client.app.state.services

    async def run() -> None:
        task = HousekeepingTask(_with_interval(services, 0))
        await task.start(api.client.app)
        assert task.task is None

    asyncio.run(run())


def test_a_failed_pass_is_logged_and_the_next_one_prunes(api, monkeypatch):
    services = api.client.app.state.services
    _fill(services, expired=2, fresh=0)
    passes: list[int] = []

    def database_away_once(services: Any) -> dict[str, int]:
        passes.append(1)
        if len(passes) == 1:
            raise sa.exc.OperationalError("DELETE FROM dpop_replay …", {}, OSError("gone"))
        return prune(services)

    warnings: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = warnings.append  # type: ignore[method-assign]
    logger = logging.getLogger("partvault.housekeeping")
    logger.addHandler(handler)
    monkeypatch.setattr(housekeeping, "prune", database_away_once)

    try:
        left = {"dpop_replay": 0, "idempotency_record": 0}
        _run_until(api, left, "the pass after the failure never pruned")
    finally:
        logger.removeHandler(handler)
    failed = [r for r in warnings if r.getMessage() == "housekeeping pass failed"]
    assert len(failed) == 1 and failed[0].error == "OperationalError"  # type: ignore[attr-defined]
    assert len(passes) >= 2
