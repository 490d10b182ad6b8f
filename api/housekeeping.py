"""Housekeeping: rows kept only until they expire are deleted in the background.

Every redemption and every facility request leaves its proof's identifier in
the replay cache for a minute; every request with an Idempotency-Key leaves its
stored answer for a day. Nothing reads them after that, so without pruning
both tables would grow by one row per request forever. Each API process runs
`HousekeepingTask` (every ``PARTVAULT_PRUNE_INTERVAL`` seconds; 0 turns it
off); `partvault database prune` runs one pass by hand. Several processes
pruning one database is harmless: a row is deleted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import datetime

import anyio
from litestar import Litestar
from sqlmodel import Session

from api.background import BackgroundTask
from api.services import Services
from inventory.db import utcnow
from licensing.orders.idempotency import prune_expired
from licensing.tokens.replay import prune_replay_cache

#: Rows deleted per transaction: a backlog never holds SQLite's writer lock for long.
CHUNK = 5000
Pruner = Callable[[Session, datetime, int], int]
PRUNERS: dict[str, Pruner] = {
    "dpop_replay": prune_replay_cache,
    "idempotency_record": prune_expired,
}
log = logging.getLogger("partvault.housekeeping")


def prune(services: Services, *, chunk: int = CHUNK) -> dict[str, int]:
    """Delete every row expired by now, `chunk` rows per transaction; how many per table."""
    now = utcnow()
    return {table: _prune_table(services, pruner, now, chunk) for table, pruner in PRUNERS.items()}


def _prune_table(services: Services, pruner: Pruner, now: datetime, chunk: int) -> int:
    total = 0
    while True:
        with services.transaction() as session:
            deleted = pruner(session, now, chunk)
        total += deleted
        if deleted < chunk:
            return total


class HousekeepingTask(BackgroundTask):
    """Prunes every ``prune_interval`` seconds from startup until shutdown."""

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services

    async def start(self, app: Litestar) -> None:
        if self.services.settings.prune_interval > 0:
            self.launch(self._run)

    async def _run(self, stop: asyncio.Event) -> None:
        """A pass every interval, the first after a random part of it, so that the
        processes of one server spread their passes."""
        interval = self.services.settings.prune_interval
        delay = random.uniform(0, interval)  # noqa: S311 (timing jitter, not a secret)
        while not await _set_within(stop, delay):
            await self._pass()
            delay = interval

    async def _pass(self) -> None:
        """One pass; a failure (the database away) is logged and the next pass retries."""
        try:
            pruned = await anyio.to_thread.run_sync(prune, self.services)
        except Exception as exc:
            log.warning("housekeeping pass failed", extra={"error": type(exc).__name__})
            return
        if any(pruned.values()):
            log.info("pruned expired rows", extra={"pruned": pruned})


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether `event` is set within `seconds`."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)
    return event.is_set()
