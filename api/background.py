"""Background tasks of the app's lifespan: started on startup, stopped on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from litestar import Litestar


class BackgroundTask:
    """A coroutine that runs until its stop event is set.

    Shutdown sets the event and waits for the coroutine to return, so a pass in
    progress finishes (and leaves nothing half done) before the process exits.
    """

    def __init__(self) -> None:
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def launch(self, run: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(run(self.stop_event))

    async def stop(self, app: Litestar) -> None:
        if self.task is None:
            return
        self.stop_event.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.task = None
