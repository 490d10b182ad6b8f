"""The webhook dispatcher end to end, over real HTTP to a receiver on 127.0.0.1.

The receiver checks every signature independently (HMAC-SHA256 over
``id.timestamp.body`` with the endpoint's secret) and answers from a script per
path. Time is an injected clock that the tests move forward: no sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from inventory.crypto.local_keyring import LocalKeyRing
from inventory.db import utcnow
from licensing.orders.dispatcher import Dispatcher, RetrySchedule
from licensing.orders.egress import public_only_client
from licensing.orders.webhooks import (
    WebhookDeliveryLog,
    WebhookEndpoint,
    WebhookOutbox,
    create_endpoint,
    enqueue,
    list_deliveries,
    purge_history,
)

SHORT = RetrySchedule(
    delays=(timedelta(0), timedelta(seconds=5), timedelta(seconds=30)), max_age=timedelta(minutes=2)
)


@dataclass
class Hit:
    path: str
    msg_id: str
    event: dict[str, object]
    verified: bool


@dataclass
class Receiver:
    """Scripted answers per path (then 200); every request recorded and verified."""

    base_url: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    scripts: dict[str, list[int]] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        msg_id = headers.get("webhook-id", "")
        verified = _verify(self.secrets.get(path, ""), headers, body)
        with self.lock:
            self.hits.append(Hit(path, msg_id, json.loads(body), verified))
            script = self.scripts.get(path, [])
            code = script.pop(0) if script else 200
        if code == 0:  # scripted hang: answer too late
            time.sleep(1.0)
            code = 200
        return code if verified else 401

    def ids(self, path: str) -> list[str]:
        return [h.msg_id for h in self.hits if h.path == path]


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret else b""
    signed = f"{headers.get('webhook-id')}.{headers.get('webhook-timestamp')}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    fresh = abs(time.time() - int(headers.get("webhook-timestamp", "0"))) <= 300
    given = headers.get("webhook-signature", "").split(" ")
    return bool(key) and fresh and any(hmac.compare_digest(expected, g) for g in given)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            code = state.answer(self.path, headers, body)
            self.send_response(code)
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


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def dispatcher(
    engine: Engine,
    http: httpx.Client,
    keyring: LocalKeyRing,
    clock: Clock,
    schedule: RetrySchedule = SHORT,
) -> Dispatcher:
    return Dispatcher(
        engine,
        http,
        keyring,
        schedule,
        clock,
        lease=timedelta(seconds=60),
        timeout=5.0,
        batch_size=4,
    )


def endpoint(
    engine: Engine, keyring: LocalKeyRing, receiver: Receiver, owner: str, path: str
) -> str:
    with Session(engine) as s:
        row, secret = create_endpoint(
            s, keyring, "shop", owner, receiver.base_url + path, allow_http=True
        )
        s.commit()
        receiver.secrets[path] = secret
        return row.id


def emit(engine: Engine, owner: str, n: int = 1, event: str = "order.placed") -> list[str]:
    ids: list[str] = []
    with Session(engine) as s:
        for i in range(n):
            ids += enqueue(s, "shop", owner, event, {"order_id": f"ord_{owner}_{i}"})
        s.commit()
    return ids


def outbox(engine: Engine, msg_id: str) -> WebhookOutbox:
    with Session(engine) as s:
        row = s.exec(select(WebhookOutbox).where(WebhookOutbox.id == msg_id)).one()
        s.expunge(row)
        return row


def drain(d: Dispatcher, passes: int = 20) -> int:
    total = 0
    for _ in range(passes):
        handled = d.run_once()
        total += handled
        if handled == 0:
            return total
    raise AssertionError("dispatcher never ran dry")


def test_failing_receiver_gets_the_event_later_with_the_same_id(
    engine: Engine, keyring: LocalKeyRing, receiver: Receiver, clock: Clock, http: httpx.Client
) -> None:
    ep = endpoint(engine, keyring, receiver, "tok_1", "/flaky")
    receiver.scripts["/flaky"] = [500, 503]
    (msg,) = emit(engine, "tok_1")
    d = dispatcher(engine, http, keyring, clock)
    assert d.run_once() == 1
    row = outbox(engine, msg)
    assert (row.status, row.attempts, row.last_status_code) == ("failed", 1, 500)
    assert d.run_once() == 0  # not due before the 5 s back-off
    clock.advance(5)
    assert d.run_once() == 1
    assert outbox(engine, msg).status == "failed"
    clock.advance(30)
    assert d.run_once() == 1
    assert outbox(engine, msg).status == "delivered"
    assert receiver.ids("/flaky") == [msg, msg, msg]
    assert all(h.verified for h in receiver.hits)
    with Session(engine) as s:
        log = list_deliveries(s, ep)
    assert [(e.attempt, e.status_code, e.outcome) for e in reversed(log)] == [
        (1, 500, "failed"),
        (2, 503, "failed"),
        (3, 200, "delivered"),
    ]


def test_event_is_dead_after_max_age_and_stops_blocking(
    engine: Engine, keyring: LocalKeyRing, receiver: Receiver, clock: Clock, http: httpx.Client
) -> None:
    endpoint(engine, keyring, receiver, "tok_1", "/down")
    receiver.scripts["/down"] = [500] * 5
    first, second = emit(engine, "tok_1", 2)
    d = dispatcher(engine, http, keyring, clock)
    for _ in range(4):
        d.run_once()
        clock.advance(30)
    row = outbox(engine, first)
    assert row.status == "dead" and row.attempts == 4  # 0 + 5 + 30 + 30 s, next > 2 min
    assert receiver.ids("/down") == [first] * 4
    assert outbox(engine, second).status == "pending"
    receiver.scripts["/down"] = []
    drain(d)
    assert outbox(engine, second).status == "delivered"


def test_410_disables_the_endpoint_and_kills_its_messages(
    engine: Engine, keyring: LocalKeyRing, receiver: Receiver, clock: Clock, http: httpx.Client
) -> None:
    ep = endpoint(engine, keyring, receiver, "tok_1", "/gone")
    receiver.scripts["/gone"] = [410]
    first, second = emit(engine, "tok_1", 2)
    d = dispatcher(engine, http, keyring, clock)
    drain(d)
    assert receiver.ids("/gone") == [first]  # the second is never sent
    assert outbox(engine, first).status == "dead"
    second_row = outbox(engine, second)
    assert second_row.status == "dead" and second_row.last_error == "endpoint-disabled"
    with Session(engine) as s:
        endpoint_row = s.get(WebhookEndpoint, ep)
        assert endpoint_row is not None and not endpoint_row.enabled
        assert endpoint_row.disabled_reason == "endpoint answered 410 Gone"
    assert emit(engine, "tok_1") == []  # disabled endpoints get no new events


def test_crash_after_claim_loses_nothing_and_duplicates_nothing(
    engine: Engine, keyring: LocalKeyRing, receiver: Receiver, clock: Clock, http: httpx.Client
) -> None:
    endpoint(engine, keyring, receiver, "tok_1", "/crash")
    first, second = emit(engine, "tok_1", 2)
    crashed = dispatcher(engine, http, keyring, clock)
    claimed = crashed.claim()  # ... and the process dies before sending
    assert [c.msg_id for c in claimed] == [first]
    survivor = dispatcher(engine, http, keyring, clock)
    assert survivor.run_once() == 0  # leased, and the second must wait behind it
    clock.advance(61)
    drain(survivor)
    assert receiver.ids("/crash") == [first, second]
    assert outbox(engine, first).status == outbox(engine, second).status == "delivered"
    # the dead process's stale lease cannot overwrite what the survivor recorded
    crashed.deliver(claimed[0])
    assert outbox(engine, first).status == "delivered"


def test_events_for_one_endpoint_arrive_in_order(
    engine: Engine, keyring: LocalKeyRing, receiver: Receiver, clock: Clock, http: httpx.Client
) -> None:
    endpoint(engine, keyring, receiver, "tok_1", "/ordered")
    endpoint(engine, keyring, receiver, "tok_2", "/other")
    receiver.scripts["/ordered"] = [500]
    e1, e2, e3 = emit(engine, "tok_1", 3)
    (other,) = emit(engine, "tok_2")
    d = dispatcher(engine, http, keyring, clock)
    drain(d)
    assert receiver.ids("/ordered") == [e1]  # e2, e3 wait while e1 is retried
    assert receiver.ids("/other") == [other]  # another endpoint is not held up
    clock.advance(5)
    drain(d)
    assert receiver.ids("/ordered") == [e1, e1, e2, e3]


def test_two_dispatchers_share_the_work_without_duplicates(
    engine: Engine, keyring: LocalKeyRing, receiver: Receiver, clock: Clock, http: httpx.Client
) -> None:
    owners = [f"tok_{i}" for i in range(4)]
    sent = {
        o: (endpoint(engine, keyring, receiver, o, f"/{o}"), emit(engine, o, 5))[1] for o in owners
    }
    workers = [dispatcher(engine, http, keyring, clock) for _ in range(2)]
    threads = [threading.Thread(target=drain, args=(w, 50)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    drain(workers[0])
    for owner, ids in sent.items():
        assert receiver.ids(f"/{owner}") == ids
    assert all(h.verified for h in receiver.hits)


def test_run_forever_delivers_in_the_background_and_stops(
    engine: Engine, keyring: LocalKeyRing, receiver: Receiver, clock: Clock, http: httpx.Client
) -> None:
    endpoint(engine, keyring, receiver, "tok_1", "/bg")
    (msg,) = emit(engine, "tok_1")
    d = dispatcher(engine, http, keyring, clock)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(d.run_forever(stop, interval=0.05))
        for _ in range(200):
            if receiver.ids("/bg"):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert receiver.ids("/bg") == [msg]
    with Session(engine) as s:
        assert len(list(s.exec(select(WebhookDeliveryLog)))) == 1


def test_timeout_and_internal_errors_are_counted_as_failed_attempts(
    engine: Engine, keyring: LocalKeyRing, receiver: Receiver, clock: Clock, http: httpx.Client
) -> None:
    endpoint(engine, keyring, receiver, "tok_1", "/slow")
    receiver.scripts["/slow"] = [0]
    broken = endpoint(engine, keyring, receiver, "tok_2", "/broken")
    with Session(engine) as s:
        row = s.get(WebhookEndpoint, broken)
        assert row is not None
        row.secret_wrapped = row.secret_wrapped[:-1] + bytes([row.secret_wrapped[-1] ^ 1])
        s.commit()
    (slow,) = emit(engine, "tok_1")
    (bad,) = emit(engine, "tok_2")
    d = Dispatcher(engine, http, keyring, SHORT, clock, lease=timedelta(seconds=5), timeout=0.3)
    assert d.run_once() == 2
    slow_row, bad_row = outbox(engine, slow), outbox(engine, bad)
    assert slow_row.status == "failed" and (slow_row.last_error or "").startswith("ReadTimeout")
    assert bad_row.status == "failed" and bad_row.last_error == "internal error: KeyRingError"
    assert receiver.ids("/broken") == []
    with pytest.raises(ValueError):
        Dispatcher(engine, http, keyring, lease=timedelta(seconds=30), timeout=10.0)


def test_history_purge_keeps_open_messages(
    engine: Engine, keyring: LocalKeyRing, receiver: Receiver, clock: Clock, http: httpx.Client
) -> None:
    endpoint(engine, keyring, receiver, "tok_1", "/p")
    receiver.scripts["/p"] = [500]
    sent = emit(engine, "tok_1", 2)
    d = dispatcher(engine, http, keyring, clock)
    drain(d)
    clock.advance(5)
    drain(d)  # the first: 500 then 200; the second: 200
    assert [outbox(engine, m).status for m in sent] == ["delivered", "delivered"]
    emit(engine, "tok_1")  # still pending
    with Session(engine) as s:
        assert purge_history(s, utcnow() + timedelta(minutes=1)) == 2 + 3
        s.commit()
        left = list(s.exec(select(WebhookOutbox)))
    assert [r.status for r in left] == ["pending"]


def test_guarded_dispatcher_never_reaches_an_internal_receiver(
    engine: Engine, keyring: LocalKeyRing, receiver: Receiver, clock: Clock
) -> None:
    """The production client resolves each host itself: a name (or a literal
    registered in development mode) that leads to 127.0.0.1 is never dialled."""
    literal = endpoint(engine, keyring, receiver, "tok_g", "/hook")
    (msg,) = emit(engine, "tok_g")
    port = receiver.base_url.rsplit(":", 1)[1]
    with Session(engine) as s:
        row, _ = create_endpoint(
            s, keyring, "shop", "tok_n", f"http://hooks.example:{port}/hook", allow_http=True
        )
        named = row.id
        s.commit()
    (named_msg,) = emit(engine, "tok_n")
    rebinding = {"hooks.example": ["93.184.216.34", "127.0.0.1"]}
    with public_only_client(resolver=lambda host, _port: rebinding.get(host) or [host]) as http:
        drain(dispatcher(engine, http, keyring, clock))
    assert receiver.hits == []
    for msg_id, ep in ((msg, literal), (named_msg, named)):
        row = outbox(engine, msg_id)
        assert row.attempts == 1 and row.status != "delivered"
        assert row.last_error is not None and "not a public address" in row.last_error
        with Session(engine) as s:
            (attempt,) = list_deliveries(s, ep)
            assert attempt.status_code is None
