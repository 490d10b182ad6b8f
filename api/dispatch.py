"""The webhook dispatcher as a background task of the app's lifespan.

Every API process runs one (when ``PARTVAULT_WEBHOOK_DISPATCHER`` is on); the
outbox claims make several dispatchers on one database safe. Shutdown sets the
stop event and waits for the current pass to finish, so no lease is left
behind by a clean stop.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
from litestar import Litestar

from api.background import BackgroundTask
from api.services import Services
from licensing.orders.dispatcher import Dispatcher, RetrySchedule
from licensing.orders.egress import public_only_client

LEASE_PER_TIMEOUT = 6  # a lease outlasts the four HTTP timeout phases with room to spare


def make_dispatcher(services: Services, http: httpx.Client) -> Dispatcher:
    settings = services.settings
    delays = tuple(timedelta(seconds=s) for s in settings.webhook_retry_delays)
    return Dispatcher(
        services.engine,
        http,
        services.keyring,
        RetrySchedule(delays=delays),
        lease=timedelta(seconds=max(1.0, settings.webhook_timeout) * LEASE_PER_TIMEOUT),
        timeout=settings.webhook_timeout,
        turn=services.writer_turn,
    )


def webhook_client(allow_internal: bool) -> httpx.Client:
    """The dispatcher's HTTP client: public addresses only, unless the operator
    allows internal receivers (``PARTVAULT_WEBHOOK_ALLOW_HTTP``, development and tests)."""
    headers = {"user-agent": "partvault-webhooks/1"}
    return httpx.Client(headers=headers) if allow_internal else public_only_client(headers=headers)


class DispatcherTask(BackgroundTask):
    """Starts `Dispatcher.run_forever` on startup and stops it on shutdown."""

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services
        self.http: httpx.Client | None = None

    async def start(self, app: Litestar) -> None:
        if not self.services.settings.webhook_dispatcher:
            return
        self.http = webhook_client(self.services.settings.webhook_allow_http)
        dispatcher = make_dispatcher(self.services, self.http)
        interval = self.services.settings.webhook_poll_interval
        self.launch(lambda stop: dispatcher.run_forever(stop, interval))

    async def stop(self, app: Litestar) -> None:
        await super().stop(app)
        if self.http is not None:
            self.http.close()
            self.http = None
