"""Liveness and readiness."""

from __future__ import annotations

from litestar import Response, get
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from api.auth import Svc
from api.schemas import Health


@get("/health", sync_to_thread=False, tags=["system"])
def health() -> Health:
    """The process is up (no dependency is checked)."""
    return Health(status="ok")


@get("/ready", sync_to_thread=True, tags=["system"])
def ready(services: Svc) -> Response[Health]:
    """Every dependency answers: the database and the object store."""
    checks = services.readiness()
    healthy = all(v == "ok" for v in checks.values())
    status = HTTP_200_OK if healthy else HTTP_503_SERVICE_UNAVAILABLE
    return Response(
        Health(status="ok" if healthy else "unavailable", checks=checks), status_code=status
    )


ROUTES = [
    health,
    ready,
]
