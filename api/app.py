"""The Litestar application, assembled in one place."""

from __future__ import annotations

import gc
import importlib

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from api.auth import DEPENDENCIES
from api.config import Settings
from api.dispatch import DispatcherTask
from api.groupcommit import start_committing, stop_committing
from api.housekeeping import HousekeepingTask
from api.logs import configure_logging, request_id_middleware
from api.problems import EXCEPTION_HANDLERS
from api.routes import (
    accounts,
    audit,
    catalog,
    delivery,
    designs,
    facilities,
    licences,
    orders,
    reports,
    system,
    webhooks,
)
from api.services import Services

ROUTE_MODULES = [
    system,
    accounts,
    catalog,
    designs,
    facilities,
    licences,
    delivery,
    orders,
    webhooks,
    audit,
    reports,
]
ROUTES = [handler for module in ROUTE_MODULES for handler in module.ROUTES]


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> Litestar:
    """The app for `settings`: its routes plus the process-wide services."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    app = build_app(max_json_bytes=settings.max_json_bytes)
    app.state.services = services or Services.from_settings(settings)
    return app


def build_app(*, max_json_bytes: int) -> Litestar:
    """The routes and hooks alone; the caller sets ``app.state.services`` before startup.

    Building is the costly part (handler signatures, OpenAPI), so tests build one
    app per process and give it fresh services per test.
    """
    return Litestar(
        route_handlers=ROUTES,
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[request_id_middleware],
        request_max_body_size=max_json_bytes,
        openapi_config=OpenAPIConfig(
            title="partvault",
            version="1",
            description="Encrypted spare-part designs, per-print licences, verifiable audit.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        on_startup=[
            _load_mesh_stack,
            _start_committing,
            _start_dispatcher,
            _start_housekeeping,
            _freeze_heap,
        ],
        on_shutdown=[_stop_housekeeping, _stop_dispatcher, _stop_committing, _close_services],
        debug=False,
        logging_config=None,
    )


def _load_mesh_stack(app: Litestar) -> None:
    """Import trimesh and scipy before the worker takes requests.

    They load lazily (the CLI rarely needs them), but a worker that loaded them
    on its first upload would hold the event loop for about a second mid-traffic.
    """
    importlib.import_module("inventory.ingest.service")
    importlib.import_module("watermark.core")


def _freeze_heap(app: Litestar) -> None:
    """Leave what the process built before its first request (modules, the app,
    SQLAlchemy's metadata, the mesh stack) out of every later garbage collection.

    Those objects live as long as the process, yet each full collection walked
    them all again: about 50 ms per collection under load (5-7 ms once frozen),
    holding the GIL, and with it every request. Once per process: an app
    started again in the same process (tests) adds nothing to the frozen heap.
    """
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


def _start_committing(app: Litestar) -> None:
    """Start the process's committing process (`api.committer`) before the first request."""
    start_committing(app.state.services)


def _stop_committing(app: Litestar) -> None:
    stop_committing(app.state.services)


async def _start_dispatcher(app: Litestar) -> None:
    app.state.dispatcher = DispatcherTask(app.state.services)
    await app.state.dispatcher.start(app)


async def _stop_dispatcher(app: Litestar) -> None:
    await app.state.dispatcher.stop(app)


async def _start_housekeeping(app: Litestar) -> None:
    app.state.housekeeping = HousekeepingTask(app.state.services)
    await app.state.housekeeping.start(app)


async def _stop_housekeeping(app: Litestar) -> None:
    await app.state.housekeeping.stop(app)


def _close_services(app: Litestar) -> None:
    app.state.services.close()
