"""Quotes, orders and their lifecycle, and brands' per-country routing pins."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Response, delete, get, post, put
from litestar.params import FromPath, JSONBody, QueryParameter

from api.auth import Auth, Creds, Svc
from api.idempotency import CreatingPost, IdempotencyKey, run_creating
from api.order_schemas import (
    OrderIn,
    OrderOut,
    OrderPage,
    OrderStatusIn,
    QuoteIn,
    QuoteOut,
    RerouteIn,
    RoutingPinIn,
    RoutingPinOut,
)
from api.services import Services
from inventory.accounts import Principal, TokenKind
from licensing.orders import orders as domain
from licensing.orders.orders import LicenceIssuer, OrderRequest

Limit = Annotated[int, QueryParameter(ge=1, le=200)]
Cursor = Annotated[str | None, QueryParameter(max_length=200)]
StatusFilter = Annotated[str | None, QueryParameter(max_length=16)]


def issuer(services: Services) -> LicenceIssuer:
    return LicenceIssuer(services.keyring, services.tokens)


@post("/v1/quotes", sync_to_thread=True, status_code=200, tags=["orders"])
def create_quote(data: JSONBody[QuoteIn], shop: Auth, services: Svc) -> QuoteOut:
    """Price and lead time at every eligible facility for the part, best first."""
    assert shop.brand_id is not None
    with services.transaction() as session:
        found = domain.quote(session, shop.brand_id, data.sku, data.quantity, data.ship_to.domain())
        return QuoteOut.of(found, data.quantity, data.ship_to.postcode)


@post("/v1/orders", tags=["orders"])
async def place_order(
    data: JSONBody[OrderIn],
    credentials: Creds,
    services: Svc,
    idempotency_key: IdempotencyKey = None,
) -> Response[bytes]:
    """Place an order and route it at once. The Idempotency-Key header is required."""
    request = OrderRequest(data.sku, data.quantity, data.ship_to.domain(), data.shop_reference)

    def work(session: Any, shop: Principal) -> OrderOut:
        order = domain.place(
            session,
            issuer(services),
            shop.brand_id or "",
            shop.token_id,
            request,
            actor=f"shop:{shop.token_id}",
        )
        return OrderOut.of(order)

    post = CreatingPost(
        credentials=credentials,
        kinds=(TokenKind.shop,),
        key=idempotency_key,
        key_required=True,
        path="/v1/orders",
        payload=data,
        work=work,
    )
    return await run_creating(services, post)


@get("/v1/orders", sync_to_thread=True, tags=["orders"])
def list_orders(
    caller: Auth,
    services: Svc,
    status: StatusFilter = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> OrderPage:
    """A shop's orders, a brand's orders, or a facility's job queue (``status=routed``)."""
    with services.transaction() as session:
        page = domain.list_orders(session, caller, status=status, cursor=cursor, limit=limit)
        return OrderPage(items=[OrderOut.of(o) for o in page.items], next_cursor=page.next_cursor)


@get("/v1/orders/{order_id:str}", sync_to_thread=True, tags=["orders"])
def get_order(order_id: FromPath[str], caller: Auth, services: Svc) -> OrderOut:
    with services.transaction() as session:
        return OrderOut.of(domain.get_order(session, caller, order_id))


@post("/v1/orders/{order_id:str}/status", sync_to_thread=True, status_code=200, tags=["orders"])
def change_order_status(
    order_id: FromPath[str], data: JSONBody[OrderStatusIn], caller: Auth, services: Svc
) -> OrderOut:
    """One lifecycle step, by the actor allowed to take it (see docs/webhooks.md)."""
    with services.transaction() as session:
        order = domain.change_status(
            session,
            caller,
            order_id,
            data.status,
            tracking_reference=data.tracking_reference,
            reason=data.reason,
        )
        return OrderOut.of(order)


@post("/v1/orders/{order_id:str}/route", sync_to_thread=True, status_code=200, tags=["orders"])
def reroute_order(
    order_id: FromPath[str], data: JSONBody[RerouteIn], brand: Auth, services: Svc
) -> OrderOut:
    """The brand routes an unroutable or not yet started order again, optionally pinned."""
    assert brand.brand_id is not None
    with services.transaction() as session:
        order = domain.reroute(
            session,
            issuer(services),
            brand.brand_id,
            order_id,
            data.facility_id,
            actor=f"brand:{brand.brand_id}",
        )
        return OrderOut.of(order)


@get("/v1/routing-pins", sync_to_thread=True, tags=["orders"])
def list_routing_pins(brand: Auth, services: Svc) -> list[RoutingPinOut]:
    assert brand.brand_id is not None
    with services.transaction() as session:
        return [RoutingPinOut.of(p) for p in domain.list_country_pins(session, brand.brand_id)]


@put("/v1/routing-pins/{country:str}", sync_to_thread=True, tags=["orders"])
def set_routing_pin(
    country: FromPath[str], data: JSONBody[RoutingPinIn], brand: Auth, services: Svc
) -> RoutingPinOut:
    """Send the brand's orders shipping to `country` to one facility while it is eligible."""
    assert brand.brand_id is not None
    with services.transaction() as session:
        pin = domain.set_country_pin(session, brand.brand_id, country, data.facility_id)
        return RoutingPinOut.of(pin)


@delete("/v1/routing-pins/{country:str}", sync_to_thread=True, tags=["orders"])
def delete_routing_pin(country: FromPath[str], brand: Auth, services: Svc) -> None:
    assert brand.brand_id is not None
    with services.transaction() as session:
        domain.delete_country_pin(session, brand.brand_id, country)


ROUTES = [
    create_quote,
    place_order,
    list_orders,
    get_order,
    change_order_status,
    reroute_order,
    list_routing_pins,
    set_routing_pin,
    delete_routing_pin,
]
