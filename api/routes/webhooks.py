"""Webhook endpoints of shops and facilities, their delivery logs, and Shopify inbound."""

from __future__ import annotations

from typing import Any

from litestar import Request, delete, get, patch, post
from litestar.params import FromPath, JSONBody
from msgspec import UNSET
from sqlmodel import Session

from api.auth import Auth, Svc
from api.idempotency import in_thread
from api.order_schemas import (
    DeliveryOut,
    MessageOut,
    OrderOut,
    ShopifyConnectIn,
    ShopifyConnectionOut,
    ShopifyInboundOut,
    SkippedLine,
    WebhookEndpointCreated,
    WebhookEndpointIn,
    WebhookEndpointOut,
    WebhookEndpointUpdate,
    WebhookSecretOut,
)
from api.routes.orders import issuer
from api.services import Services
from inventory.accounts import Principal, TokenKind
from inventory.errors import Forbidden
from licensing.orders import orders, shopify, webhooks


def owner_of(principal: Principal) -> tuple[str, str]:
    """Endpoints belong to a shop (its token) or a facility."""
    if principal.kind == TokenKind.shop:
        return "shop", principal.token_id
    if principal.kind == TokenKind.facility and principal.facility_id:
        return "facility", principal.facility_id
    raise Forbidden("webhook endpoints are for shop and facility tokens", code="wrong-role")


def _owned(session: Session, caller: Principal, endpoint_id: str) -> webhooks.WebhookEndpoint:
    kind, owner = owner_of(caller)
    return webhooks.get_endpoint(session, endpoint_id, owner_kind=kind, owner_id=owner)


@post("/v1/webhooks", sync_to_thread=True, tags=["webhooks"])
def create_endpoint(
    data: JSONBody[WebhookEndpointIn], caller: Auth, services: Svc
) -> WebhookEndpointCreated:
    """Register an endpoint; its ``whsec_`` signing secret is returned only now."""
    kind, owner = owner_of(caller)
    with services.transaction() as session:
        row, secret = webhooks.create_endpoint(
            session,
            services.keyring,
            kind,
            owner,
            data.url,
            data.event_types,
            allow_http=services.settings.webhook_allow_http,
        )
        out = WebhookEndpointOut.of(row)
        return WebhookEndpointCreated(
            secret=secret, **{f: getattr(out, f) for f in out.__struct_fields__}
        )


@get("/v1/webhooks", sync_to_thread=True, tags=["webhooks"])
def list_endpoints(caller: Auth, services: Svc) -> list[WebhookEndpointOut]:
    kind, owner = owner_of(caller)
    with services.transaction() as session:
        return [WebhookEndpointOut.of(e) for e in webhooks.list_endpoints(session, kind, owner)]


@get("/v1/webhooks/{endpoint_id:str}", tags=["webhooks"])
async def get_endpoint(
    endpoint_id: FromPath[str], caller: Auth, services: Svc
) -> WebhookEndpointOut:
    """One endpoint, with `enabled` and `disabled_reason` (e.g. after a 410).

    Async on purpose: Litestar 2.25 double-wraps the first ``sync_to_thread``
    handler of a path that has GET, PATCH and DELETE, and it then returns a coroutine.
    """
    return await in_thread(_get_endpoint, services, caller, endpoint_id)


def _get_endpoint(services: Services, caller: Principal, endpoint_id: str) -> WebhookEndpointOut:
    with services.transaction() as session:
        return WebhookEndpointOut.of(_owned(session, caller, endpoint_id))


@patch("/v1/webhooks/{endpoint_id:str}", sync_to_thread=True, tags=["webhooks"])
def update_endpoint(
    endpoint_id: FromPath[str], data: JSONBody[WebhookEndpointUpdate], caller: Auth, services: Svc
) -> WebhookEndpointOut:
    """Change the URL or event filter; ``enabled: true`` re-enables after a 410."""
    changes: dict[str, Any] = {
        f: getattr(data, f) for f in data.__struct_fields__ if getattr(data, f) is not UNSET
    }
    with services.transaction() as session:
        row = webhooks.update_endpoint(
            session,
            _owned(session, caller, endpoint_id),
            allow_http=services.settings.webhook_allow_http,
            **changes,
        )
        return WebhookEndpointOut.of(row)


@delete("/v1/webhooks/{endpoint_id:str}", sync_to_thread=True, tags=["webhooks"])
def delete_endpoint(endpoint_id: FromPath[str], caller: Auth, services: Svc) -> None:
    with services.transaction() as session:
        webhooks.delete_endpoint(session, _owned(session, caller, endpoint_id))


@post("/v1/webhooks/{endpoint_id:str}/rotate-secret", sync_to_thread=True, tags=["webhooks"])
def rotate_secret(endpoint_id: FromPath[str], caller: Auth, services: Svc) -> WebhookSecretOut:
    """A new signing secret, returned once; the old one stops signing at once."""
    with services.transaction() as session:
        endpoint = _owned(session, caller, endpoint_id)
        return WebhookSecretOut(secret=webhooks.rotate_secret(session, services.keyring, endpoint))


@get("/v1/webhooks/{endpoint_id:str}/deliveries", sync_to_thread=True, tags=["webhooks"])
def list_deliveries(endpoint_id: FromPath[str], caller: Auth, services: Svc) -> list[DeliveryOut]:
    """Every delivery attempt to the endpoint (status, error, duration), newest first."""
    with services.transaction() as session:
        endpoint = _owned(session, caller, endpoint_id)
        return [DeliveryOut.of(d) for d in webhooks.list_deliveries(session, endpoint.id)]


@get("/v1/webhooks/{endpoint_id:str}/messages", sync_to_thread=True, tags=["webhooks"])
def list_messages(endpoint_id: FromPath[str], caller: Auth, services: Svc) -> list[MessageOut]:
    """The endpoint's queued and finished events, newest first."""
    with services.transaction() as session:
        endpoint = _owned(session, caller, endpoint_id)
        return [MessageOut.of(m) for m in webhooks.list_messages(session, endpoint.id)]


@post("/v1/shopify/connections", sync_to_thread=True, tags=["shopify"])
def connect_shopify(
    data: JSONBody[ShopifyConnectIn], shop: Auth, services: Svc
) -> ShopifyConnectionOut:
    """Connect a Shopify store to this shop; its orders/create webhooks then place orders."""
    with services.transaction() as session:
        row = shopify.connect_store(
            session, services.keyring, shop.token_id, data.shop_domain, data.secret
        )
        return ShopifyConnectionOut.of(row)


@post("/v1/shopify/orders-create", tags=["shopify"], status_code=200)
async def shopify_orders_create(
    request: Request[Any, Any, Any], services: Svc
) -> ShopifyInboundOut:
    """Shopify's ``orders/create`` webhook, authenticated by its HMAC over the raw body."""
    raw = await request.body()
    return await in_thread(_receive_shopify, services, dict(request.headers), raw)


def _receive_shopify(services: Services, headers: dict[str, str], raw: bytes) -> ShopifyInboundOut:
    with services.transaction() as session:
        inbound = shopify.receive_orders_create(session, services.keyring, headers, raw)
        if inbound is None:
            return ShopifyInboundOut(duplicate=True)
        outcome = orders.place_from_shopify(session, issuer(services), inbound)
        return ShopifyInboundOut(
            duplicate=False,
            orders=[OrderOut.of(o) for o in outcome.orders],
            skipped=[SkippedLine(sku=s.sku, code=s.code, detail=s.detail) for s in outcome.skipped],
        )


ROUTES = [
    create_endpoint,
    list_endpoints,
    get_endpoint,
    update_endpoint,
    delete_endpoint,
    rotate_secret,
    list_deliveries,
    list_messages,
    connect_shopify,
    shopify_orders_create,
]
