"""Standard Webhooks signing, verification, endpoints and the transactional outbox."""

from __future__ import annotations

import base64
import json

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from inventory.crypto.local_keyring import LocalKeyRing
from inventory.errors import BadRequest, Invalid, NotFound, Unauthorized
from licensing.orders.webhooks import (
    WebhookOutbox,
    create_endpoint,
    enqueue,
    generate_secret,
    get_endpoint,
    list_endpoints,
    matches,
    rotate_secret,
    sign,
    unwrap_secret,
    update_endpoint,
    verify,
)

# The test vector published with the Standard Webhooks reference libraries.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def spec_headers(signature: str = SPEC_SIG, ts: int = SPEC_TS) -> dict[str, str]:
    return {"Webhook-Id": SPEC_ID, "Webhook-Timestamp": str(ts), "Webhook-Signature": signature}


def test_sign_reproduces_the_spec_vector() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIG


def test_verify_accepts_the_spec_vector_and_any_of_several_signatures() -> None:
    verify(SPEC_SECRET, spec_headers(), SPEC_BODY, now=SPEC_TS + 10)
    verify(SPEC_SECRET, spec_headers("v1,bm9wZQ== " + SPEC_SIG), SPEC_BODY, now=SPEC_TS)


@pytest.mark.parametrize(
    ("headers", "body", "now", "code"),
    [
        (spec_headers(), b'{"test": 2432232315}', SPEC_TS, "webhook-signature-invalid"),
        (spec_headers(), SPEC_BODY, SPEC_TS + 301, "webhook-timestamp-out-of-tolerance"),
        (spec_headers(), SPEC_BODY, SPEC_TS - 301, "webhook-timestamp-out-of-tolerance"),
        (spec_headers(ts=SPEC_TS + 1), SPEC_BODY, SPEC_TS, "webhook-signature-invalid"),
        (spec_headers("v1,bm9wZQ=="), SPEC_BODY, SPEC_TS, "webhook-signature-invalid"),
        (spec_headers("v2," + SPEC_SIG[3:]), SPEC_BODY, SPEC_TS, "webhook-signature-invalid"),
    ],
)
def test_verify_refuses_tampering_and_stale_messages(
    headers: dict[str, str], body: bytes, now: int, code: str
) -> None:
    with pytest.raises(Unauthorized) as exc:
        verify(SPEC_SECRET, headers, body, now=now)
    assert exc.value.code == code


def test_verify_requires_the_three_headers() -> None:
    headers = spec_headers()
    del headers["Webhook-Id"]
    with pytest.raises(BadRequest) as exc:
        verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TS)
    assert exc.value.code == "webhook-headers-missing"


def test_generated_secret_has_the_whsec_format() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    assert generate_secret() != secret


@pytest.mark.parametrize(
    ("filters", "event", "expected"),
    [
        ([], "order.placed", True),
        (["*"], "job.printed", True),
        (["order.placed"], "order.placed", True),
        (["order.placed"], "order.routed", False),
        (["job.*"], "job.failed", True),
        (["job.*"], "order.placed", False),
    ],
)
def test_event_filter(filters: list[str], event: str, expected: bool) -> None:
    assert matches(filters, event) is expected


def test_endpoint_secret_is_wrapped_and_recoverable(engine: Engine, keyring: LocalKeyRing) -> None:
    with Session(engine) as s:
        endpoint, secret = create_endpoint(
            s, keyring, "shop", "tok_shop1", "https://shop.example/hooks", ["order.*"]
        )
        s.commit()
        assert secret.encode() not in endpoint.secret_wrapped
        assert unwrap_secret(keyring, endpoint.id, endpoint.secret_wrapped) == secret
        new = rotate_secret(s, keyring, endpoint)
        s.commit()
        assert new != secret
        assert unwrap_secret(keyring, endpoint.id, endpoint.secret_wrapped) == new


def test_endpoint_crud_and_owner_isolation(engine: Engine, keyring: LocalKeyRing) -> None:
    with Session(engine) as s:
        mine, _ = create_endpoint(s, keyring, "facility", "fac_1", "https://fab.example/h")
        create_endpoint(s, keyring, "facility", "fac_2", "https://other.example/h")
        s.commit()
        assert [e.id for e in list_endpoints(s, "facility", "fac_1")] == [mine.id]
        with pytest.raises(NotFound):
            get_endpoint(s, mine.id, owner_kind="facility", owner_id="fac_2")
        update_endpoint(s, mine, enabled=False)
        assert mine.disabled_reason == "disabled by owner"
        update_endpoint(s, mine, enabled=True, url="https://fab.example/v2")
        assert mine.enabled and mine.disabled_reason is None and mine.url.endswith("/v2")


ENDPOINT_CASES = [
    ("shop", "http://shop.example/h", [], "webhook-url-invalid"),
    ("shop", "ftp://shop.example/h", [], "webhook-url-invalid"),
    ("shop", "https://127.0.0.1/h", [], "webhook-url-internal"),
    ("shop", "https://[::1]/h", [], "webhook-url-internal"),
    ("shop", "https://10.1.2.3/h", [], "webhook-url-internal"),
    ("shop", "https://169.254.169.254/latest/meta-data", [], "webhook-url-internal"),
    ("shop", "https://localhost/h", [], "webhook-url-internal"),
    ("brand", "https://shop.example/h", [], "webhook-owner-invalid"),
    ("shop", "https://shop.example/h", ["order.exploded"], "webhook-event-type-unknown"),
]


def test_endpoint_validation(engine: Engine, keyring: LocalKeyRing) -> None:
    with Session(engine) as s:
        for kind, url, events, code in ENDPOINT_CASES:
            with pytest.raises(Invalid) as exc:
                create_endpoint(s, keyring, kind, "tok_1", url, events)
            assert exc.value.code == code
        assert list_endpoints(s, "shop", "tok_1") == []


def test_enqueue_fans_out_to_matching_enabled_endpoints_in_the_callers_transaction(
    engine: Engine, keyring: LocalKeyRing
) -> None:
    with Session(engine) as s:
        every, _ = create_endpoint(s, keyring, "shop", "tok_1", "https://a.example/h")
        orders, _ = create_endpoint(s, keyring, "shop", "tok_1", "https://b.example/h", ["order.*"])
        jobs, _ = create_endpoint(s, keyring, "shop", "tok_1", "https://c.example/h", ["job.*"])
        off, _ = create_endpoint(s, keyring, "shop", "tok_1", "https://d.example/h")
        update_endpoint(s, off, enabled=False)
        create_endpoint(s, keyring, "shop", "tok_2", "https://e.example/h")
        s.commit()
        ids = enqueue(s, "shop", "tok_1", "order.placed", {"order_id": "ord_1"})
        s.rollback()  # the state change failed: no event may survive it
        assert list(s.exec(select(WebhookOutbox))) == []
        ids = enqueue(s, "shop", "tok_1", "order.placed", {"order_id": "ord_1"})
        s.commit()
        rows = list(s.exec(select(WebhookOutbox)))
        wanted, unwanted = {every.id, orders.id}, jobs.id
    assert len(ids) == 2 and all(i.startswith("msg_") for i in ids)
    assert {r.endpoint_id for r in rows} == wanted
    assert unwanted not in {r.endpoint_id for r in rows}
    event = json.loads(rows[0].payload)
    assert event["type"] == "order.placed" and event["data"] == {"order_id": "ord_1"}
    assert "timestamp" in event
    with Session(engine) as s, pytest.raises(Invalid):
        enqueue(s, "shop", "tok_1", "order.exploded", {})
