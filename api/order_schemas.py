"""msgspec Structs for quotes, orders, routing pins, webhook endpoints and Shopify."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from api.schemas import Country, Input, Latitude, Longitude, Output, Reason, Sku
from licensing.orders.orders import Order, Quote, RoutingPin, ShipToIn
from licensing.orders.shopify import ShopifyConnection
from licensing.orders.webhooks import WebhookDeliveryLog, WebhookEndpoint, WebhookOutbox

Quantity = Annotated[int, Meta(ge=1, le=1000)]
Reference = Annotated[str, Meta(min_length=1, max_length=200)]
Postcode = Annotated[str, Meta(min_length=1, max_length=32)]
EntityId = Annotated[str, Meta(min_length=1, max_length=40)]
EventFilter = Annotated[str, Meta(min_length=1, max_length=64)]


def _fields(cls: type[msgspec.Struct], row: Any, **extra: Any) -> dict[str, Any]:
    return {f: getattr(row, f) for f in cls.__struct_fields__ if f not in extra} | extra


# --- quotes and orders -------------------------------------------------------


class ShipTo(Input):
    """Coordinates, or a postcode only (then routed from the country's centre)."""

    country: Country
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    postcode: Postcode | None = None

    def domain(self) -> ShipToIn:
        return ShipToIn(self.country, self.latitude, self.longitude, self.postcode)


class QuoteIn(Input):
    sku: Sku
    ship_to: ShipTo
    quantity: Quantity = 1


class OrderIn(Input):
    sku: Sku
    quantity: Quantity
    ship_to: ShipTo
    shop_reference: Reference


class ShipToOut(Output):
    country: str
    latitude: float
    longitude: float
    postcode: str | None
    source: str


class PriceOut(Output):
    """Integer minor units of `currency`; `total` is the exact sum of the lines."""

    currency: str
    quantity: int
    material: int
    machine: int
    setup: int
    royalty: int
    total: int
    machine_hours: float
    lead_time_days: int


class QuoteOption(Output):
    facility_id: str
    facility_name: str
    facility_country: str
    distance_km: float
    lead_time_days: int
    price: PriceOut


class QuoteOut(Output):
    sku: str
    quantity: int
    ship_to: ShipToOut
    options: list[QuoteOption]

    @classmethod
    def of(cls, quote: Quote, quantity: int, postcode: str | None) -> QuoteOut:
        options = []
        for option in quote.options:
            price = option.candidate.price
            assert price is not None
            options.append(
                QuoteOption(
                    facility_id=option.facility.id,
                    facility_name=option.facility.name,
                    facility_country=option.facility.country,
                    distance_km=option.candidate.distance_km,
                    lead_time_days=price.lead_time_days,
                    price=PriceOut(**_fields(PriceOut, price)),
                )
            )
        ship = quote.ship_to
        return cls(
            sku=quote.part.sku,
            quantity=quantity,
            ship_to=ShipToOut(
                country=ship.country,
                latitude=ship.point.lat,
                longitude=ship.point.lon,
                postcode=postcode,
                source=ship.source,
            ),
            options=options,
        )


class CandidateOut(Output):
    facility_id: str
    distance_km: float
    load: float
    outcome: Literal["chosen", "ranked", "dropped"]
    reason: str
    total: int | None


class RoutingOut(Output):
    pin_status: str
    candidates: list[CandidateOut]


class OrderOut(Output):
    id: str
    status: str
    brand_id: str
    source: str
    shop_reference: str
    sku: str
    quantity: int
    currency: str
    ship_to: ShipToOut
    facility_id: str | None
    licence_jti: str | None
    price: PriceOut | None
    routing: RoutingOut | None
    tracking_reference: str | None
    reason: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Order) -> OrderOut:
        return cls(
            **_fields(
                cls,
                row,
                ship_to=ShipToOut(
                    country=row.ship_country,
                    latitude=row.ship_latitude,
                    longitude=row.ship_longitude,
                    postcode=row.ship_postcode,
                    source=row.ship_source,
                ),
                price=msgspec.convert(row.price, PriceOut) if row.price else None,
                routing=msgspec.convert(row.routing, RoutingOut) if row.routing else None,
            )
        )


class OrderPage(Output):
    items: list[OrderOut]
    next_cursor: str | None


class OrderStatusIn(Input):
    """A step of the lifecycle; shipping needs a tracking reference, failing a reason."""

    status: Literal["in_production", "shipped", "delivered", "cancelled", "failed"]
    tracking_reference: Reference | None = None
    reason: Reason = ""


class RerouteIn(Input):
    """Route again; `facility_id` pins this order to one facility if it is eligible."""

    facility_id: EntityId | None = None


class RoutingPinIn(Input):
    facility_id: EntityId


class RoutingPinOut(Output):
    country: str
    facility_id: str
    created_at: datetime

    @classmethod
    def of(cls, row: RoutingPin) -> RoutingPinOut:
        return cls(**_fields(cls, row))


# --- webhook endpoints -------------------------------------------------------


class WebhookEndpointIn(Input):
    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    event_types: Annotated[list[EventFilter], Meta(max_length=50)] = msgspec.field(
        default_factory=list
    )


class WebhookEndpointUpdate(Input):
    url: Annotated[str, Meta(min_length=1, max_length=2048)] | UnsetType = UNSET
    event_types: Annotated[list[EventFilter], Meta(max_length=50)] | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET


class WebhookEndpointOut(Output):
    id: str
    url: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: WebhookEndpoint) -> WebhookEndpointOut:
        return cls(**_fields(cls, row))


class WebhookEndpointCreated(WebhookEndpointOut):
    """A new endpoint: the only response (with rotation) that carries its secret."""

    secret: str


class WebhookSecretOut(Output):
    secret: str


class DeliveryOut(Output):
    id: str
    message_id: str
    attempt: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int
    outcome: str

    @classmethod
    def of(cls, row: WebhookDeliveryLog) -> DeliveryOut:
        return cls(**_fields(cls, row))


class MessageOut(Output):
    id: str
    event_type: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None

    @classmethod
    def of(cls, row: WebhookOutbox) -> MessageOut:
        return cls(**_fields(cls, row))


# --- Shopify -----------------------------------------------------------------


class ShopifyConnectIn(Input):
    shop_domain: Annotated[str, Meta(min_length=1, max_length=255)]
    secret: Annotated[str, Meta(min_length=1, max_length=500)]


class ShopifyConnectionOut(Output):
    id: str
    shop_domain: str
    created_at: datetime

    @classmethod
    def of(cls, row: ShopifyConnection) -> ShopifyConnectionOut:
        return cls(**_fields(cls, row))


class SkippedLine(Output):
    sku: str | None
    code: str
    detail: str


class ShopifyInboundOut(Output):
    duplicate: bool
    orders: list[OrderOut] = msgspec.field(default_factory=list)
    skipped: list[SkippedLine] = msgspec.field(default_factory=list)
