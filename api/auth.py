"""Bearer-token authentication as Litestar dependencies, one per role.

A handler asks for the principal it needs by parameter name: ``operator``,
``brand``, ``shop``, ``facility``, ``caller`` (any role), ``reader``
(operator or brand) or ``seller`` (brand or its webshop). Authentication
touches the database, so these run in a worker thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Request
from litestar.di import NamedDependency, Provide

from api.services import Services
from inventory.accounts import Principal, TokenKind, authenticate
from inventory.errors import BadRequest, Forbidden, Unauthorized
from licensing import facilities

#: A principal injected by the dependency named like the parameter.
Auth = NamedDependency[Principal]
#: The process-wide services.
Svc = NamedDependency[Services]


def bearer_token(request: Request[Any, Any, Any]) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("an Authorization: Bearer token is required", code="token-missing")
    scheme, _, token = header.partition(" ")
    if scheme.lower() not in ("bearer", "dpop") or not token.strip():
        raise Unauthorized("use Authorization: Bearer <token>", code="token-malformed")
    return token.strip()


def _resolve(request: Request[Any, Any, Any]) -> Principal:
    """Authenticate the bearer token; a facility must also prove possession of its key."""
    services: Services = request.app.state.services
    token = bearer_token(request)
    with services.transaction() as session:
        principal = authenticate(session, token)
        if principal.kind == TokenKind.facility:
            facilities.verify_possession(
                session,
                principal,
                proof=request.headers.get("dpop"),
                htm=request.method,
                htu=services.settings.public_url.rstrip("/") + request.url.path,
                access_token=token,
            )
        return principal


def _requiring(*kinds: TokenKind) -> Callable[[Request[Any, Any, Any]], Principal]:
    def dependency(request: Request[Any, Any, Any]) -> Principal:
        principal = _resolve(request)
        if principal.kind not in kinds:
            allowed = " or ".join(k.value for k in kinds)
            raise Forbidden(f"this call is for {allowed} tokens", code="wrong-role")
        return principal

    return dependency


def provide_services(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


DEPENDENCIES = {
    "services": Provide(provide_services, sync_to_thread=False),
    "caller": Provide(_requiring(*TokenKind), sync_to_thread=True),
    "operator": Provide(_requiring(TokenKind.operator), sync_to_thread=True),
    "brand": Provide(_requiring(TokenKind.brand), sync_to_thread=True),
    "shop": Provide(_requiring(TokenKind.shop), sync_to_thread=True),
    "facility": Provide(_requiring(TokenKind.facility), sync_to_thread=True),
    "reader": Provide(_requiring(TokenKind.operator, TokenKind.brand), sync_to_thread=True),
    "seller": Provide(_requiring(TokenKind.brand, TokenKind.shop), sync_to_thread=True),
}


def tenant_of(principal: Principal, brand_id: str | None) -> str:
    """The brand a call acts on: a brand's own; the operator names one explicitly."""
    if principal.kind == TokenKind.operator:
        if not brand_id:
            raise BadRequest("the operator must name brand_id", code="brand-id-required")
        return brand_id
    assert principal.brand_id is not None
    return principal.brand_id
