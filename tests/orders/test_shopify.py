"""Shopify inbound orders/create: HMAC over the raw body, de-duplication, parsing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from inventory.crypto.local_keyring import LocalKeyRing
from inventory.errors import BadRequest, Invalid, NotFound, Unauthorized
from licensing.orders.shopify import (
    OrderLine,
    ShippingAddress,
    ShopifyDelivery,
    connect_store,
    parse_orders_create,
    receive_orders_create,
    record_delivery,
    verify_hmac,
)

SECRET = "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"
DOMAIN = "spare-parts-demo.myshopify.com"

# The shape Shopify posts for orders/create (abridged: many more fields exist).
ORDER = {
    "id": 820982911946154508,
    "admin_graphql_api_id": "gid://shopify/Order/820982911946154508",
    "name": "#9999",
    "order_number": 1234,
    "email": "jon@example.com",
    "created_at": "2026-11-23T07:15:47-05:00",
    "currency": "EUR",
    "total_price": "64.90",
    "financial_status": "paid",
    "fulfillment_status": None,
    "customer": {"id": 115310627314723954, "first_name": "John", "last_name": "Smith"},
    "billing_address": {
        "address1": "Chestnut Street 92",
        "city": "Louisville",
        "zip": "40202",
        "country": "United States",
        "country_code": "US",
    },
    "shipping_address": {
        "first_name": "Steve",
        "last_name": "Shipper",
        "address1": "Torstraße 12",
        "address2": "",
        "city": "Berlin",
        "zip": "10119",
        "province": None,
        "country": "Germany",
        "country_code": "DE",
        "company": None,
        "latitude": 52.5291,
        "longitude": 13.4015,
        "name": "Steve Shipper",
        "phone": "555-555-SHIP",
        "province_code": None,
    },
    "line_items": [
        {
            "id": 866550311766439020,
            "variant_id": 808950810,
            "product_id": 632910392,
            "title": "Dishwasher basket wheel",
            "quantity": 4,
            "sku": "PV-WHEEL-01",
            "price": "12.95",
            "grams": 20,
            "requires_shipping": True,
            "properties": [],
            "tax_lines": [],
            "discount_allocations": [],
        },
        {
            "id": 141249953214522974,
            "variant_id": 457924702,
            "product_id": 632910392,
            "title": "Gift card",
            "quantity": 1,
            "sku": "",
            "price": "13.10",
            "requires_shipping": False,
            "properties": [],
        },
    ],
    "shipping_lines": [{"id": 271878346596884015, "title": "Generic Shipping", "price": "10.00"}],
}
BODY = json.dumps(ORDER, ensure_ascii=False, indent=1).encode()


def shopify_hmac(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def headers(
    webhook_id: str = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043", body: bytes = BODY, **changes: str
) -> dict[str, str]:
    base = {
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Hmac-Sha256": shopify_hmac(body),
        "X-Shopify-Shop-Domain": DOMAIN,
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-API-Version": "2025-10",
    }
    return base | changes


@pytest.fixture
def connected(engine: Engine, keyring: LocalKeyRing) -> Engine:
    with Session(engine) as s:
        connect_store(s, keyring, "tok_shop1", DOMAIN.upper(), SECRET)
        s.commit()
    return engine


def test_valid_hmac_is_accepted_and_bad_ones_refused() -> None:
    verify_hmac(SECRET, BODY, shopify_hmac(BODY))
    for bad in (None, "", shopify_hmac(BODY, "other"), shopify_hmac(BODY + b" ")):
        with pytest.raises(Unauthorized) as exc:
            verify_hmac(SECRET, BODY, bad)
        assert exc.value.code == "shopify-hmac-invalid"


def test_hmac_is_over_the_raw_body_not_reserialised_json() -> None:
    compact = json.dumps(ORDER, separators=(",", ":")).encode()
    assert json.loads(compact) == json.loads(BODY)
    with pytest.raises(Unauthorized):
        verify_hmac(SECRET, compact, shopify_hmac(BODY))


def test_realistic_orders_create_payload_is_parsed() -> None:
    order = parse_orders_create(BODY)
    assert order.order_id == 820982911946154508 and order.name == "#9999"
    assert order.currency == "EUR"
    assert order.lines == [
        OrderLine("PV-WHEEL-01", 4, "Dishwasher basket wheel"),
        OrderLine(None, 1, "Gift card"),
    ]
    assert order.shipping_address == ShippingAddress("DE", "10119", 52.5291, 13.4015)


def test_order_without_coordinates_or_shipping_address() -> None:
    data = json.loads(BODY)
    data["shipping_address"] |= {"latitude": None, "longitude": None}
    order = parse_orders_create(json.dumps(data).encode())
    assert order.shipping_address == ShippingAddress("DE", "10119", None, None)
    data["shipping_address"] = None
    assert parse_orders_create(json.dumps(data).encode()).shipping_address is None


def test_malformed_payload_is_a_bad_request() -> None:
    for body in (b"not json", b"{}", b'{"id": 1, "name": "#1", "line_items": "x"}'):
        with pytest.raises(BadRequest) as exc:
            parse_orders_create(body)
        assert exc.value.code == "shopify-payload-invalid"


def test_inbound_route_accepts_once_and_detects_the_duplicate(
    connected: Engine, keyring: LocalKeyRing
) -> None:
    with Session(connected) as s:
        inbound = receive_orders_create(s, keyring, headers(), BODY)
        s.commit()
        assert inbound is not None
        assert (inbound.shop_id, inbound.shop_domain) == ("tok_shop1", DOMAIN)
        assert inbound.order.lines[0].sku == "PV-WHEEL-01"
        assert receive_orders_create(s, keyring, headers(), BODY) is None
        s.commit()
        assert len(list(s.exec(select(ShopifyDelivery)))) == 1


def test_inbound_route_refusals(connected: Engine, keyring: LocalKeyRing) -> None:
    cases = [
        (
            headers(**{"X-Shopify-Hmac-Sha256": shopify_hmac(BODY, "x")}),
            Unauthorized,
            "shopify-hmac-invalid",
        ),
        (
            headers(**{"X-Shopify-Shop-Domain": "evil.myshopify.com"}),
            NotFound,
            "shopify-store-unknown",
        ),
        (headers(**{"X-Shopify-Topic": "orders/paid"}), BadRequest, "shopify-topic-unsupported"),
        (headers(webhook_id=""), BadRequest, "shopify-webhook-id-missing"),
    ]
    with Session(connected) as s:
        for hdrs, error, code in cases:
            with pytest.raises(error) as exc:
                receive_orders_create(s, keyring, hdrs, BODY)
            assert exc.value.code == code
        assert list(s.exec(select(ShopifyDelivery))) == []


def test_rolled_back_delivery_is_accepted_on_shopifys_retry(
    connected: Engine, keyring: LocalKeyRing
) -> None:
    with Session(connected) as s:
        assert receive_orders_create(s, keyring, headers(), BODY) is not None
        s.rollback()  # creating the order failed
        assert receive_orders_create(s, keyring, headers(), BODY) is not None
        s.commit()


def test_store_connection_is_validated(engine: Engine, keyring: LocalKeyRing) -> None:
    with Session(engine) as s:
        for domain, secret in (("shop.example.com", SECRET), (DOMAIN, "")):
            with pytest.raises(Invalid) as exc:
                connect_store(s, keyring, "tok_1", domain, secret)
            assert exc.value.code == "shopify-connection-invalid"


def test_concurrent_duplicate_deliveries_are_recorded_once(engine: Engine) -> None:
    barrier = threading.Barrier(3)
    results: list[bool] = []

    def deliver() -> None:
        with Session(engine) as s:
            barrier.wait()
            results.append(record_delivery(s, "dup-1", DOMAIN, "orders/create"))
            s.commit()

    threads = [threading.Thread(target=deliver) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [False, False, True]
