"""The Litestar application, assembled in one place."""

from __future__ import annotations

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from api.auth import DEPENDENCIES
from api.config import Settings
from api.dispatch import DispatcherTask
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
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    services = services or Services.from_settings(settings)
    dispatcher = DispatcherTask(services)
    app = Litestar(
        route_handlers=ROUTES,
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[request_id_middleware],
        request_max_body_size=settings.max_json_bytes,
        openapi_config=OpenAPIConfig(
            title="partvault",
            version="1",
            description="Encrypted spare-part designs, per-print licences, verifiable audit.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        on_startup=[dispatcher.start],
        on_shutdown=[dispatcher.stop, services.close],
        debug=False,
        logging_config=None,
    )
    app.state.services = services
    return app
