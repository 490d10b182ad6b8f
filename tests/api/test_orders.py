"""Quotes, orders, idempotency, routing and the order lifecycle over the API."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from api_helpers import register_bureau
from sqlmodel import Session

from api.config import Settings
from api.order_schemas import OrderIn
from licensing.orders import idempotency

PARIS = {"country": "FR", "latitude": 48.8566, "longitude": 2.3522}
_keys = itertools.count()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The conftest settings, without the background dispatcher (no endpoints here)."""
    return dataclasses.replace(settings, webhook_dispatcher=False)


def order_body(**overrides: Any) -> dict[str, Any]:
    return {
        "sku": "CUBE-20",
        "quantity": 2,
        "ship_to": PARIS,
        "shop_reference": "web-1001",
    } | overrides


def place(api: Any, shop: str, key: str | None = None, **overrides: Any) -> Any:
    headers = {"Idempotency-Key": key or f"order-{next(_keys)}"}
    return api.call("POST", "/v1/orders", shop, json=order_body(**overrides), headers=headers)


def placed(api: Any, shop: str, **overrides: Any) -> dict[str, Any]:
    response = place(api, shop, **overrides)
    assert response.status_code == 201, response.text
    return response.json()


def certify(world: Any, facility_id: str) -> dict[str, Any]:
    body = {
        "facility_id": facility_id,
        "processes": ["SLA"],
        "materials": ["Tough 2000"],
        "expires_at": "2099-01-01T00:00:00Z",
    }
    return world.api.ok("POST", "/v1/certifications", world.brand, json=body)


def paris_bureau(world: Any, **overrides: Any) -> Any:
    """A certified bureau in Paris, nearer than the world's Lyon bureau to PARIS."""
    fields = {"name": "Paris Print", "latitude": 48.86, "longitude": 2.35} | overrides
    bureau = register_bureau(world.api, **fields)
    certify(world, bureau.id)
    return bureau


def reasons(order: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["facility_id"]: (c["outcome"], c["reason"]) for c in order["routing"]["candidates"]}


def _scalar(api: Any, sql: str, **params: Any) -> Any:
    engine = sa.create_engine(api.settings.database_url)
    with engine.connect() as conn:
        value = conn.execute(sa.text(sql), params).scalar_one()
    engine.dispose()
    return value


# --- quotes ----------------------------------------------------------------------


def test_quote_breaks_down_the_price_per_eligible_facility(world):
    api = world.api
    api.ok(
        "PATCH", f"/v1/parts/{world.part['id']}", world.brand, json={"royalty_per_print_cents": 150}
    )
    shop = api.shop(world.brand)
    body = {"sku": "CUBE-20", "quantity": 2, "ship_to": PARIS}
    quote = api.ok("POST", "/v1/quotes", shop, json=body)
    [option] = quote["options"]
    price = option["price"]
    assert option["facility_id"] == world.bureau.id and option["distance_km"] > 300
    assert price["currency"] == "EUR" and price["quantity"] == 2
    volume_cm3 = world.revision["geometry"]["volume_mm3"] / 1000
    assert price["material"] == round(volume_cm3 * 45 * 2)  # 45 c/cm³ at this bureau
    assert price["royalty"] == 300 and price["setup"] == 500
    assert price["total"] == price["material"] + price["machine"] + 500 + 300
    assert option["lead_time_days"] >= 2 and quote["ship_to"]["source"] == "coordinates"


def test_quote_for_a_missing_or_withdrawn_part_is_a_problem(world):
    api = world.api
    shop = api.shop(world.brand)
    missing = api.call("POST", "/v1/quotes", shop, json={"sku": "NOPE", "ship_to": PARIS})
    assert missing.status_code == 404 and missing.json()["code"] == "part-not-found"
    assert missing.headers["content-type"].startswith("application/problem+json")
    api.ok("PATCH", f"/v1/parts/{world.part['id']}", world.brand, json={"status": "withdrawn"})
    withdrawn = api.call("POST", "/v1/quotes", shop, json={"sku": "CUBE-20", "ship_to": PARIS})
    assert withdrawn.status_code == 409 and withdrawn.json()["code"] == "part-withdrawn"
    order = place(api, shop)
    assert order.status_code == 409 and order.json()["code"] == "part-withdrawn"


# --- orders and idempotency --------------------------------------------------------


def test_order_is_routed_with_a_licence_and_queued_at_the_facility(world):
    api = world.api
    shop = api.shop(world.brand)
    order = placed(api, shop, quantity=3)
    assert order["status"] == "routed" and order["facility_id"] == world.bureau.id
    assert reasons(order)[world.bureau.id] == ("chosen", "only-eligible")
    licence = api.ok("GET", f"/v1/licences/{order['licence_jti']}", world.brand)
    assert licence["prints_total"] == 3 and licence["order_id"] == order["id"]
    queue = world.bureau.ok("GET", "/v1/orders?status=routed")["items"]
    assert [o["id"] for o in queue] == [order["id"]]
    assert api.ok("GET", f"/v1/orders/{order['id']}", shop)["status"] == "routed"
    other_shop = api.shop(world.brand, name="other shop")
    hidden = api.call("GET", f"/v1/orders/{order['id']}", other_shop)
    assert hidden.status_code == 404
    steps = "SELECT count(*) FROM audit_entry WHERE event_type LIKE 'licensing:order:%'"
    assert _scalar(api, steps) == 2  # place, route
    by_postcode = placed(api, shop, ship_to={"country": "FR", "postcode": "69001"})
    assert by_postcode["ship_to"]["source"] == "country-centroid"
    assert by_postcode["ship_to"]["postcode"] == "69001" and by_postcode["status"] == "routed"


def test_idempotency_key_is_required_and_replays(world):
    api = world.api
    shop = api.shop(world.brand)
    missing = api.call("POST", "/v1/orders", shop, json=order_body())
    assert missing.status_code == 400 and missing.json()["code"] == "idempotency-key-missing"
    for quantity in (0, 1001):
        assert place(api, shop, quantity=quantity).status_code == 422
    first = place(api, shop, key="k-1")
    again = place(api, shop, key="k-1")
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and again.headers["idempotent-replayed"] == "true"
    other = place(api, shop, key="k-1", quantity=5)
    assert other.status_code == 422 and other.json()["code"] == "idempotency-key-reused"
    assert _scalar(api, "SELECT count(*) FROM print_order") == 1
    assert _scalar(api, "SELECT count(*) FROM licence") == 1


def test_same_key_while_the_first_request_runs_is_409(world):
    api = world.api
    shop = api.shop(world.brand)
    token_id = api.ok("GET", "/v1/me", shop)["token_id"]
    payload = msgspec.json.encode(msgspec.convert(order_body(), OrderIn))
    fingerprint = idempotency.fingerprint("POST", "/v1/orders", payload)
    engine = sa.create_engine(api.settings.database_url)
    with Session(engine) as session:
        idempotency.begin(session, token_id, "busy-1", fingerprint)
        session.commit()
    engine.dispose()
    response = place(api, shop, key="busy-1")
    assert response.status_code == 409 and response.json()["code"] == "idempotency-key-in-flight"


# --- routing -----------------------------------------------------------------------


def test_nearest_facility_wins(world):
    paris = paris_bureau(world)
    shop = world.api.shop(world.brand)
    order = placed(world.api, shop)
    assert order["facility_id"] == paris.id
    assert reasons(order) == {
        paris.id: ("chosen", "nearest"),
        world.bureau.id: ("ranked", "farther"),
    }


def test_full_wrong_material_and_too_small_facilities_are_skipped(world):
    api = world.api
    small = paris_bureau(world, build_volume_mm=[15, 15, 300])
    no_resin = paris_bureau(world, materials=["PETG"])
    busy = paris_bureau(world, capacity=1)
    shop = api.shop(world.brand)
    first = placed(api, shop)
    assert first["facility_id"] == busy.id
    second = placed(api, shop)
    assert second["facility_id"] == world.bureau.id
    assert reasons(second) == {
        world.bureau.id: ("chosen", "only-eligible"),
        small.id: ("dropped", "too-small"),
        no_resin.id: ("dropped", "material-not-certified"),
        busy.id: ("dropped", "at-capacity"),
    }


def test_a_cube_fits_a_long_thin_build_volume_in_another_orientation(world):
    long_thin = paris_bureau(world, build_volume_mm=[300, 25, 21])
    order = placed(world.api, world.api.shop(world.brand))
    assert order["facility_id"] == long_thin.id


def test_suspended_certification_removes_the_facility_at_once(world):
    api = world.api
    shop = api.shop(world.brand)
    cert = world.certification["id"]
    api.ok("POST", f"/v1/certifications/{cert}/suspend", world.brand, json={"reason": "audit"})
    order = placed(api, shop)
    assert order["status"] == "unroutable" and order["licence_jti"] is None
    assert reasons(order) == {world.bureau.id: ("dropped", "certification-suspended")}
    quote = api.ok("POST", "/v1/quotes", shop, json={"sku": "CUBE-20", "ship_to": PARIS})
    assert quote["options"] == []
    told = "SELECT count(*) FROM audit_entry WHERE event_type = 'licensing:order:route'"
    assert _scalar(api, told) == 1
    api.ok("POST", f"/v1/certifications/{cert}/reinstate", world.brand, json={})
    rerouted = api.ok("POST", f"/v1/orders/{order['id']}/route", world.brand, json={})
    assert rerouted["status"] == "routed" and rerouted["facility_id"] == world.bureau.id


def test_brand_pins_a_country_or_an_order(world):
    api = world.api
    paris = paris_bureau(world)
    pin = {"facility_id": world.bureau.id}
    assert api.ok("PUT", "/v1/routing-pins/FR", world.brand, json=pin)["country"] == "FR"
    shop = api.shop(world.brand)
    order = placed(api, shop)
    assert order["facility_id"] == world.bureau.id
    assert order["routing"]["pin_status"] == "honoured"
    assert reasons(order)[paris.id] == ("ranked", "not-pinned")
    body = {"facility_id": paris.id}
    moved = api.ok("POST", f"/v1/orders/{order['id']}/route", world.brand, json=body)
    assert moved["facility_id"] == paris.id and moved["licence_jti"] != order["licence_jti"]
    old = api.ok("GET", f"/v1/licences/{order['licence_jti']}", world.brand)
    assert old["revoked_at"] is not None
    assert api.call("DELETE", "/v1/routing-pins/FR", world.brand).status_code == 204
    assert api.ok("GET", "/v1/routing-pins", world.brand) == []


# --- lifecycle ---------------------------------------------------------------------


def _step(actor: Any, order_id: str, status: str, **extra: Any) -> Any:
    body = {"status": status} | extra
    return actor.call("POST", f"/v1/orders/{order_id}/status", json=body)


class ShopActor:
    def __init__(self, api: Any, token: str) -> None:
        self.api, self.token = api, token

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.api.call(method, path, self.token, **kwargs)


def test_lifecycle_from_redemption_to_delivery(world):
    api = world.api
    shop = ShopActor(api, api.shop(world.brand))
    order = placed(api, shop.token, quantity=2)
    licence = world.bureau.ok("GET", f"/v1/licences/{order['licence_jti']}")
    assert _step(shop, order["id"], "shipped", tracking_reference="x").status_code == 403
    premature = _step(world.bureau, order["id"], "shipped", tracking_reference="x")
    assert premature.status_code == 409 and premature.json()["code"] == "order-step-invalid"
    serials = []
    for _ in range(2):
        job = world.bureau.ok(
            "POST", f"/v1/licences/{licence['jti']}/redeem", json={"licence": licence["token"]}
        )
        serials.append(job["serial"])
    assert api.ok("GET", f"/v1/orders/{order['id']}", shop.token)["status"] == "in_production"
    assert _step(shop, order["id"], "cancelled").status_code == 409
    for serial in serials:
        world.bureau.ok("POST", f"/v1/jobs/{serial}/report", json={"status": "printed"})
    assert api.ok("GET", f"/v1/orders/{order['id']}", shop.token)["status"] == "printed"
    untracked = _step(world.bureau, order["id"], "shipped")
    assert (
        untracked.status_code == 422 and untracked.json()["code"] == "tracking-reference-required"
    )
    shipped = _step(world.bureau, order["id"], "shipped", tracking_reference="DHL-123")
    assert (
        shipped.json()["status"] == "shipped" and shipped.json()["tracking_reference"] == "DHL-123"
    )
    assert _step(shop, order["id"], "delivered").json()["status"] == "delivered"


def test_cancel_or_failure_revokes_the_licence(world):
    api = world.api
    shop = ShopActor(api, api.shop(world.brand))
    order = placed(api, shop.token)
    assert _step(world.bureau, order["id"], "cancelled").status_code == 403
    cancelled = _step(shop, order["id"], "cancelled", reason="customer changed mind")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    licence = world.bureau.ok("GET", f"/v1/licences/{order['licence_jti']}")
    assert licence["revoked_at"] is not None
    refused = world.bureau.call(
        "POST", f"/v1/licences/{licence['jti']}/redeem", json={"licence": licence["token"]}
    )
    assert refused.status_code == 403 and refused.json()["code"] == "licence-revoked"
    second = placed(api, shop.token)
    assert _step(world.bureau, second["id"], "in_production").json()["status"] == "in_production"
    assert _step(world.bureau, second["id"], "failed").status_code == 422
    failed = _step(world.bureau, second["id"], "failed", reason="resin tank cracked")
    assert failed.json()["status"] == "failed" and failed.json()["reason"] == "resin tank cracked"
