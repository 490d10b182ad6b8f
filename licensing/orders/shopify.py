"""Shopify inbound: a store posts its ``orders/create`` webhook straight to partvault.

A shop connects its Shopify store once (`connect_store`: the store's
``*.myshopify.com`` domain and the webhook signing secret Shopify shows in
Settings → Notifications → Webhooks, or the app's client secret). The secret
must be recoverable to verify, so it is wrapped by the key ring with the
connection id as context and never returned.

`receive_orders_create` is the whole inbound route: look the store up by
``X-Shopify-Shop-Domain``, verify ``X-Shopify-Hmac-SHA256`` over the RAW body
in constant time, de-duplicate on ``X-Shopify-Webhook-Id`` and parse the
order. The de-duplication row is flushed in the caller's transaction: commit
it together with the order it creates, so that a failure lets Shopify's retry
through and a success is never processed twice (the unique key makes two
concurrent deliveries of one webhook collide; the loser sees a duplicate).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import datetime

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, select

from inventory.crypto.keyring import KeyRing
from inventory.db import UTCDateTime, new_id, utcnow
from inventory.errors import BadRequest, Invalid, NotFound, Unauthorized

SHOP_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9-]*\.myshopify\.com$")
TOPIC_ORDERS_CREATE = "orders/create"


class ShopifyConnection(SQLModel, table=True):
    __tablename__ = "shopify_connection"

    id: str = Field(primary_key=True, max_length=40)
    shop_id: str = Field(max_length=40, index=True)  # the partvault shop (actor) id
    shop_domain: str = Field(max_length=255, unique=True)
    secret_wrapped: bytes = Field(sa_type=sa.LargeBinary)
    created_at: datetime = Field(sa_type=UTCDateTime)


class ShopifyDelivery(SQLModel, table=True):
    __tablename__ = "shopify_delivery"

    webhook_id: str = Field(primary_key=True, max_length=80)
    shop_domain: str = Field(max_length=255)
    topic: str = Field(max_length=64)
    received_at: datetime = Field(sa_type=UTCDateTime)


class OrderLine(msgspec.Struct, frozen=True):
    sku: str | None
    quantity: int
    title: str = ""


class ShippingAddress(msgspec.Struct, frozen=True):
    country_code: str
    zip: str | None = None
    latitude: float | None = None
    longitude: float | None = None


class ShopifyOrder(msgspec.Struct, frozen=True):
    """What partvault needs from an orders/create payload."""

    order_id: int
    name: str
    lines: list[OrderLine]
    shipping_address: ShippingAddress | None
    currency: str | None = None


class InboundOrder(msgspec.Struct, frozen=True):
    """A verified, first-time orders/create delivery for one partvault shop."""

    shop_id: str
    shop_domain: str
    webhook_id: str
    order: ShopifyOrder


class _Line(msgspec.Struct):
    quantity: int
    sku: str | None = None
    title: str = ""


class _Address(msgspec.Struct):
    country_code: str | None = None
    zip: str | None = None
    latitude: float | None = None
    longitude: float | None = None


class _Order(msgspec.Struct):
    id: int
    name: str
    line_items: list[_Line]
    shipping_address: _Address | None = None
    currency: str | None = None


_DECODER = msgspec.json.Decoder(_Order)


def _context(connection_id: str) -> bytes:
    return f"shopify-connection:{connection_id}".encode()


def connect_store(
    session: Session, keyring: KeyRing, shop_id: str, shop_domain: str, secret: str
) -> ShopifyConnection:
    """Register a Shopify store for a partvault shop (one shop per store domain)."""
    domain = shop_domain.strip().lower()
    if not SHOP_DOMAIN.match(domain) or not secret:
        raise Invalid(
            "need a *.myshopify.com domain and the webhook secret",
            code="shopify-connection-invalid",
        )
    row = ShopifyConnection(
        id=new_id("shpc"),
        shop_id=shop_id,
        shop_domain=domain,
        secret_wrapped=b"",
        created_at=utcnow(),
    )
    row.secret_wrapped = keyring.wrap(secret.encode(), _context(row.id))
    session.add(row)
    session.flush()
    return row


def verify_hmac(secret: str, raw_body: bytes, header_value: str | None) -> None:
    """Check ``X-Shopify-Hmac-SHA256`` (base64 HMAC-SHA256 of the raw body)."""
    expected = base64.b64encode(hmac.new(secret.encode(), raw_body, hashlib.sha256).digest())
    if not header_value or not hmac.compare_digest(expected, header_value.strip().encode()):
        raise Unauthorized("Shopify HMAC does not match", code="shopify-hmac-invalid")


def record_delivery(session: Session, webhook_id: str, shop_domain: str, topic: str) -> bool:
    """Remember a webhook id; False if it was already received (a duplicate)."""
    row = ShopifyDelivery(
        webhook_id=webhook_id, shop_domain=shop_domain, topic=topic, received_at=utcnow()
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return False
    return True


def parse_orders_create(body: bytes) -> ShopifyOrder:
    """Extract lines, shipping address and order reference from a Shopify order."""
    try:
        raw = _DECODER.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"not a Shopify order: {exc}", code="shopify-payload-invalid") from None
    address = raw.shipping_address
    shipping = None
    if address is not None and address.country_code:
        shipping = ShippingAddress(
            address.country_code.upper(), address.zip, address.latitude, address.longitude
        )
    lines = [OrderLine(li.sku or None, li.quantity, li.title) for li in raw.line_items]
    return ShopifyOrder(raw.id, raw.name, lines, shipping, raw.currency)


def receive_orders_create(
    session: Session, keyring: KeyRing, headers: Mapping[str, str], raw_body: bytes
) -> InboundOrder | None:
    """Verify, de-duplicate and parse one delivery; None means a duplicate (answer 200)."""
    lower = {k.lower(): v for k, v in headers.items()}
    domain = lower.get("x-shopify-shop-domain", "").strip().lower()
    connection = session.exec(
        select(ShopifyConnection).where(ShopifyConnection.shop_domain == domain)
    ).first()
    if connection is None:
        raise NotFound("this Shopify store is not connected", code="shopify-store-unknown")
    secret = keyring.unwrap(connection.secret_wrapped, _context(connection.id)).decode()
    verify_hmac(secret, raw_body, lower.get("x-shopify-hmac-sha256"))
    topic = lower.get("x-shopify-topic", "")
    if topic != TOPIC_ORDERS_CREATE:
        raise BadRequest(f"unsupported Shopify topic {topic!r}", code="shopify-topic-unsupported")
    webhook_id = lower.get("x-shopify-webhook-id", "").strip()
    if not webhook_id:
        raise BadRequest("X-Shopify-Webhook-Id missing", code="shopify-webhook-id-missing")
    order = parse_orders_create(raw_body)
    if not record_delivery(session, webhook_id, domain, topic):
        return None
    return InboundOrder(connection.shop_id, domain, webhook_id, order)
