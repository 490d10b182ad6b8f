"""Orders end to end over HTTP, with a real webhook receiver on 127.0.0.1.

The receiver verifies every Standard Webhooks signature on its own (HMAC-SHA256
over ``id.timestamp.body`` keyed with the endpoint's ``whsec_`` secret) and
answers from a per-path script (then 200). The app runs its own background
dispatcher with short retry delays; the restart test runs the real server as a
subprocess and kills it while the receiver is failing.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from api_helpers import PROFILE, facility_body, facility_keys
from tests_support import wait_ready

from api.config import Settings

PARIS = {"country": "FR", "latitude": 48.8566, "longitude": 2.3522}


@dataclass
class Hit:
    path: str
    msg_id: str
    event: dict[str, Any]
    verified: bool
    answered: int


@dataclass
class Receiver:
    """Scripted answers per path (then 200); every request recorded and verified."""

    base_url: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    scripts: dict[str, list[int]] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        verified = _verify(self.secrets.get(path, ""), headers, body)
        with self.lock:
            script = self.scripts.get(path, [])
            code = script.pop(0) if script else 500 if path in self.failing else 200
            code = code if verified else 401
            hit = Hit(path, headers.get("webhook-id", ""), json.loads(body), verified, code)
            self.hits.append(hit)
        return code

    def delivered(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path and h.answered == 200]

    def types(self, path: str) -> list[str]:
        return [str(h.event["type"]) for h in self.delivered(path)]


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """An independent Standard Webhooks check (not partvault's code)."""
    if not secret:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "0")
    if abs(time.time() - int(stamp)) > 300:
        return False
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split())


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            self.send_response(state.answer(self.path, headers, body))
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A fast dispatcher: poll every 50 ms, retry after 0.2 s, http to 127.0.0.1 allowed."""
    return dataclasses.replace(
        settings,
        webhook_allow_http=True,
        webhook_retry_delays=(0.0, 0.2),
        webhook_poll_interval=0.05,
        webhook_timeout=2.0,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for webhooks")
        time.sleep(0.05)


def subscribe(actor: Any, receiver: Receiver, path: str) -> dict[str, Any]:
    endpoint = actor.ok("POST", "/v1/webhooks", json={"url": receiver.base_url + path})
    assert endpoint["secret"].startswith("whsec_")
    receiver.secrets[path] = endpoint["secret"]
    return dict(endpoint)


class Shop:
    def __init__(self, api: Any, token: str) -> None:
        self.api, self.token = api, token

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.api.call(method, path, self.token, **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.api.ok(method, path, self.token, **kwargs)

    def order(self, key: str, quantity: int = 1) -> dict[str, Any]:
        body = {"sku": "CUBE-20", "quantity": quantity, "ship_to": PARIS, "shop_reference": key}
        return dict(self.ok("POST", "/v1/orders", json=body, headers={"Idempotency-Key": key}))


def test_order_to_delivery_with_signed_events_in_order(world, receiver):
    shop = Shop(world.api, world.api.shop(world.brand))
    shop_endpoint = subscribe(shop, receiver, "/shop")
    subscribe(world.bureau, receiver, "/facility")
    order = shop.order("e2e-1", quantity=2)
    licence = world.bureau.ok("GET", f"/v1/licences/{order['licence_jti']}")
    redeem = f"/v1/licences/{licence['jti']}/redeem"
    for _ in range(2):
        job = world.bureau.ok("POST", redeem, json={"licence": licence["token"]})
        world.bureau.ok("POST", f"/v1/jobs/{job['serial']}/report", json={"status": "printed"})
    body = {"status": "shipped", "tracking_reference": "DHL-42"}
    world.bureau.ok("POST", f"/v1/orders/{order['id']}/status", json=body)
    shop_events = [
        "order.placed",
        "order.routed",
        "order.in_production",
        "job.printed",
        "job.printed",
        "order.completed",
        "order.shipped",
    ]
    facility_events = [
        "order.routed",
        "job.created",
        "licence.issued",
        "job.printed",
        "job.printed",
    ]
    wait_for(lambda: len(receiver.types("/shop")) == 7 and len(receiver.types("/facility")) == 5)
    assert receiver.types("/shop") == shop_events
    assert receiver.types("/facility") == facility_events
    assert all(h.verified for h in receiver.hits)
    assert {h.event["data"]["order_id"] for h in receiver.hits} == {order["id"]}
    assert len({h.msg_id for h in receiver.hits}) == len(receiver.hits)
    shipped = receiver.delivered("/shop")[-1].event["data"]
    assert shipped["tracking_reference"] == "DHL-42" and shipped["status"] == "shipped"
    path = f"/v1/webhooks/{shop_endpoint['id']}/deliveries"
    wait_for(lambda: len(shop.ok("GET", path)) == 7)  # the log follows the answer
    assert {d["outcome"] for d in shop.ok("GET", path)} == {"delivered"}
    stranger = Shop(world.api, world.api.shop(world.brand, name="stranger"))
    hidden = stranger.call("GET", f"/v1/webhooks/{shop_endpoint['id']}/deliveries")
    assert hidden.status_code == 404


def test_a_failing_receiver_gets_the_event_later_and_410_disables(world, receiver):
    shop = Shop(world.api, world.api.shop(world.brand))
    endpoint = subscribe(shop, receiver, "/shop")
    receiver.scripts["/shop"] = [500, 503]
    order = shop.order("retry-1")
    wait_for(lambda: receiver.types("/shop") == ["order.placed", "order.routed"])
    placed_ids = [h.msg_id for h in receiver.hits if h.event["type"] == "order.placed"]
    assert len(placed_ids) == 3 and len(set(placed_ids)) == 1  # two failures, same id
    deliveries = f"/v1/webhooks/{endpoint['id']}/deliveries"
    wait_for(lambda: len(shop.ok("GET", deliveries)) == 4)  # the log follows the answer
    assert sorted(d["status_code"] for d in shop.ok("GET", deliveries)) == [200, 200, 500, 503]

    receiver.scripts["/shop"] = [410]
    shop.ok("POST", f"/v1/orders/{order['id']}/status", json={"status": "cancelled"})
    wait_for(lambda: not shop.ok("GET", f"/v1/webhooks/{endpoint['id']}")["enabled"])
    gone = shop.ok("GET", f"/v1/webhooks/{endpoint['id']}")
    assert gone["disabled_reason"] == "endpoint answered 410 Gone"
    shop.order("retry-2")
    time.sleep(0.3)
    assert receiver.types("/shop") == ["order.placed", "order.routed"]


def test_http_urls_are_refused_unless_allowed(api):
    _, brand = api.brand("Strict")
    shop = api.shop(brand)
    strict = dataclasses.replace(api.settings, webhook_allow_http=False)
    api.client.app.state.services.settings = strict
    refused = api.call("POST", "/v1/webhooks", shop, json={"url": "http://127.0.0.1:9/x"})
    assert refused.status_code == 422 and refused.json()["code"] == "webhook-url-invalid"
    operator = api.call("POST", "/v1/webhooks", api.admin, json={"url": "https://example.com/x"})
    assert operator.status_code == 403


# --- Shopify ---------------------------------------------------------------------


def _shopify_headers(secret: str, body: bytes, webhook_id: str) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {
        "X-Shopify-Hmac-SHA256": base64.b64encode(digest).decode(),
        "X-Shopify-Shop-Domain": "acme-parts.myshopify.com",
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Webhook-Id": webhook_id,
        "content-type": "application/json",
    }


def test_shopify_orders_create_places_orders_once(world, receiver):
    shop = Shop(world.api, world.api.shop(world.brand))
    subscribe(shop, receiver, "/shop")
    connect = {"shop_domain": "acme-parts.myshopify.com", "secret": "shpss_test_secret"}
    assert shop.ok("POST", "/v1/shopify/connections", json=connect)["id"].startswith("shpc_")
    payload = {
        "id": 820982911946154508,
        "name": "#1001",
        "currency": "EUR",
        "line_items": [
            {"quantity": 2, "sku": "CUBE-20", "title": "Cube"},
            {"quantity": 1, "sku": "GIFT-CARD", "title": "Gift card"},
            {"quantity": 1, "sku": None, "title": "Shipping insurance"},
        ],
        "shipping_address": {"country_code": "FR", "zip": "75001"},
    }
    body = json.dumps(payload).encode()
    path = "/v1/shopify/orders-create"
    forged = world.api.call(
        "POST", path, content=body, headers=_shopify_headers("wrong", body, "wh-1")
    )
    assert forged.status_code == 401 and forged.json()["code"] == "shopify-hmac-invalid"
    headers = _shopify_headers("shpss_test_secret", body, "wh-1")
    first = world.api.ok("POST", path, content=body, headers=headers)
    assert not first["duplicate"] and len(first["orders"]) == 1
    [order] = first["orders"]
    assert order["status"] == "routed" and order["quantity"] == 2 and order["source"] == "shopify"
    assert order["shop_reference"] == "shopify:#1001#1"
    assert order["ship_to"]["source"] == "country-centroid"
    assert {s["code"] for s in first["skipped"]} == {"part-not-found", "sku-missing"}
    again = world.api.ok("POST", path, content=body, headers=headers)
    assert again == {"duplicate": True, "orders": [], "skipped": []}
    assert len(shop.ok("GET", "/v1/orders")["items"]) == 1
    wait_for(lambda: receiver.types("/shop") == ["order.placed", "order.routed"])


# --- restart ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """The real `partvault serve` in a subprocess on a temp data dir, fast webhook retries."""

    def __init__(self, data_dir: Path) -> None:
        self.log = data_dir.parent / "server.log"
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.args = [sys.executable, "-m", "api.cli", "serve", "--port", str(port)]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PARTVAULT_")} | {
            "PARTVAULT_DATA_DIR": str(data_dir),
            "PARTVAULT_PUBLIC_URL": self.url,
            "PARTVAULT_WEBHOOK_ALLOW_HTTP": "on",
            "PARTVAULT_WEBHOOK_RETRY_DELAYS": "0,0.3",
            "PARTVAULT_WEBHOOK_POLL_INTERVAL": "0.1",
            "PARTVAULT_WEBHOOK_TIMEOUT": "1",
            "PARTVAULT_LOG_LEVEL": "WARNING",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def admin_token(self) -> str:
        rotate = [sys.executable, "-m", "api.cli", "admin", "token", "--rotate"]
        done = subprocess.run(rotate, env=self.env, capture_output=True, text=True, check=True)
        return done.stdout.strip().splitlines()[-1]

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=log)
        wait_ready(self.url, self.proc, self.log.read_text)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


def _ok(client: httpx.Client, method: str, path: str, token: str, **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", {}) | {"Authorization": f"Bearer {token}"}
    response = client.request(method, path, headers=headers, **kwargs)
    assert response.status_code < 300, response.text
    return response.json()


def _shop_with_endpoint(
    client: httpx.Client, admin: str, cube_stl: bytes, url: str
) -> tuple[str, str]:
    """Brand, part, design, certified bureau and a shop subscribed to `url`: (shop, secret)."""
    brand = _ok(client, "POST", "/v1/brands", admin, json={"name": "Restart"})
    token = {"kind": "brand", "name": "ci", "brand_id": brand["id"]}
    brand_token = _ok(client, "POST", "/v1/tokens", admin, json=token)["token"]
    part = _ok(client, "POST", "/v1/parts", brand_token, json={"sku": "CUBE-20", "name": "Cube"})
    _ok(client, "POST", f"/v1/parts/{part['id']}/profiles", brand_token, json=PROFILE)
    upload = {"params": {"filename": "cube.stl"}, "content": cube_stl}
    _ok(client, "POST", f"/v1/parts/{part['id']}/revisions", brand_token, **upload)
    _, _, pop_pem, wrap_pem = facility_keys()
    body = facility_body(pop_pem, wrap_pem)
    bureau = _ok(client, "POST", "/v1/facilities", admin, json=body)["facility"]
    cert = {
        "facility_id": bureau["id"],
        "processes": ["SLA"],
        "materials": ["Tough 2000"],
        "expires_at": "2099-01-01T00:00:00Z",
    }
    _ok(client, "POST", "/v1/certifications", brand_token, json=cert)
    shop = _ok(client, "POST", "/v1/tokens", brand_token, json={"kind": "shop", "name": "s"})
    endpoint = _ok(client, "POST", "/v1/webhooks", shop["token"], json={"url": url})
    return shop["token"], endpoint["secret"]


def _place(client: httpx.Client, shop: str, key: str) -> str:
    body = {"sku": "CUBE-20", "quantity": 1, "ship_to": PARIS, "shop_reference": key}
    order = _ok(client, "POST", "/v1/orders", shop, json=body, headers={"Idempotency-Key": key})
    return str(order["id"])


def test_killing_the_service_during_retries_loses_no_event_and_renames_none(
    tmp_path: Path, receiver: Receiver, cube_stl: bytes
) -> None:
    server = Server(tmp_path / "data")
    admin = server.admin_token()
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            shop, secret = _shop_with_endpoint(client, admin, cube_stl, receiver.base_url + "/shop")
            receiver.secrets["/shop"] = secret
            receiver.failing.add("/shop")
            orders = [_place(client, shop, f"restart-{n}") for n in range(2)]
        wait_for(lambda: len(receiver.hits) >= 2)
        server.stop(signal.SIGKILL)
        failed_before = len(receiver.hits)
        server.start()
        wait_for(lambda: len(receiver.hits) > failed_before)
        receiver.failing.discard("/shop")
        wait_for(lambda: len(receiver.delivered("/shop")) == 4, timeout=30)
    finally:
        server.stop()
    delivered = receiver.delivered("/shop")
    expected = [(t, o) for o in orders for t in ("order.placed", "order.routed")]
    assert [(h.event["type"], h.event["data"]["order_id"]) for h in delivered] == expected
    assert all(h.verified for h in receiver.hits)
    ids_per_event: dict[tuple[str, str], set[str]] = {}
    for hit in receiver.hits:
        key = (str(hit.event["type"]), str(hit.event["data"]["order_id"]))
        ids_per_event.setdefault(key, set()).add(hit.msg_id)
    assert all(len(ids) == 1 for ids in ids_per_event.values())  # retries keep their id
    assert len({h.msg_id for h in delivered}) == 4
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'data' / 'partvault.db'}")
    with engine.connect() as conn:
        statuses = conn.execute(sa.text("SELECT status FROM webhook_outbox")).scalars().all()
    engine.dispose()
    assert statuses == ["delivered"] * 4
