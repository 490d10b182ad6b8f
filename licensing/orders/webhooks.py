"""Outgoing webhooks in the Standard Webhooks format (standardwebhooks.com).

Signing: ``webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>``
where the key is the base64-decoded part of the ``whsec_…`` secret.

Endpoints belong to a shop or a facility. The signing secret must be
recoverable to sign, so it cannot be hashed: it is wrapped by the key ring
(`inventory.crypto.keyring.KeyRing`) with the endpoint id as context, shown
once on creation or rotation, and never returned afterwards.

`enqueue` writes one outbox row per matching enabled endpoint inside the
caller's transaction (it flushes, never commits), so an event exists if and
only if the state change that caused it committed (transactional outbox). The
row id is the ``webhook-id`` (``msg_…``) and never changes across retries.
Delivery is `licensing.orders.dispatcher.Dispatcher`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec
import sqlalchemy as sa
from sqlmodel import Field, Session, SQLModel, select

from inventory.crypto.keyring import KeyRing
from inventory.db import UTCDateTime, new_id, utcnow
from inventory.errors import BadRequest, Invalid, NotFound, Unauthorized
from licensing.orders.egress import is_public

SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)
SECRET_BYTES = 32
DEFAULT_TOLERANCE_S = 300
OWNER_KINDS = frozenset({"shop", "facility"})
EVENT_TYPES = frozenset(
    {
        "order.placed",
        "order.routed",
        "order.unroutable",
        "order.cancelled",
        "order.in_production",
        "order.completed",
        "order.shipped",
        "order.delivered",
        "order.failed",
        "job.created",
        "job.printed",
        "job.failed",
        "licence.issued",
        "licence.revoked",
    }
)
_ENCODER = msgspec.json.Encoder()


class OutboxStatus:
    pending = "pending"
    failed = "failed"  # a retry is scheduled
    delivered = "delivered"
    dead = "dead"


class WebhookEndpoint(SQLModel, table=True):
    __tablename__ = "webhook_endpoint"

    id: str = Field(primary_key=True, max_length=40)
    owner_kind: str = Field(max_length=16)
    owner_id: str = Field(max_length=40, index=True)
    url: str = Field(max_length=2048)
    secret_wrapped: bytes = Field(sa_type=sa.LargeBinary)
    event_types: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    enabled: bool = True
    disabled_reason: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(sa_type=UTCDateTime)


class WebhookOutbox(SQLModel, table=True):
    __tablename__ = "webhook_outbox"
    __table_args__ = (
        sa.Index("ix_webhook_outbox_endpoint_id_status_seq", "endpoint_id", "status", "seq"),
        sa.Index("ix_webhook_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    )

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(max_length=40, unique=True)  # the webhook-id, "msg_…"
    endpoint_id: str = Field(foreign_key="webhook_endpoint.id", max_length=40)
    event_type: str = Field(max_length=64)
    payload: bytes = Field(sa_type=sa.LargeBinary)
    created_at: datetime = Field(sa_type=UTCDateTime)
    next_attempt_at: datetime = Field(sa_type=UTCDateTime)
    attempts: int = 0
    status: str = Field(default=OutboxStatus.pending, max_length=16)
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=500)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_token: str | None = Field(default=None, max_length=40)


class WebhookDeliveryLog(SQLModel, table=True):
    __tablename__ = "webhook_delivery_log"

    id: str = Field(primary_key=True, max_length=40)
    message_id: str = Field(max_length=40, index=True)
    endpoint_id: str = Field(max_length=40, index=True)
    attempt: int
    attempted_at: datetime = Field(sa_type=UTCDateTime)
    status_code: int | None = None
    error: str | None = Field(default=None, max_length=500)
    duration_ms: int
    outcome: str = Field(max_length=16)


ENDPOINTS: sa.Table = SQLModel.metadata.tables["webhook_endpoint"]
OUTBOX: sa.Table = SQLModel.metadata.tables["webhook_outbox"]
DELIVERY_LOG: sa.Table = SQLModel.metadata.tables["webhook_delivery_log"]


# --- Standard Webhooks signing ---------------------------------------------------


def generate_secret() -> str:
    """A new ``whsec_`` secret carrying 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _secret_key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise BadRequest("webhook secret is not base64", code="webhook-secret-invalid") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value ``v1,<base64>`` for one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: int,
    tolerance: int = DEFAULT_TOLERANCE_S,
) -> None:
    """Check a received webhook; raises `Unauthorized` or `BadRequest`, else returns.

    `now` is Unix seconds. Any one of the space-separated ``v1,`` signatures
    may match (secret rotation); comparison is constant-time.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    stamp = lower.get("webhook-timestamp")
    signatures = lower.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise BadRequest("webhook headers missing", code="webhook-headers-missing")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise BadRequest(
            "webhook-timestamp is not an integer", code="webhook-timestamp-invalid"
        ) from None
    if abs(now - timestamp) > tolerance:
        raise Unauthorized(
            "webhook timestamp outside tolerance", code="webhook-timestamp-out-of-tolerance"
        )
    expected = sign(secret, msg_id, timestamp, body).encode()
    if not any(hmac.compare_digest(expected, s.encode()) for s in signatures.split(" ") if s):
        raise Unauthorized("no webhook signature matches", code="webhook-signature-invalid")


# --- endpoints -------------------------------------------------------------------


def _context(endpoint_id: str) -> bytes:
    return f"webhook-endpoint:{endpoint_id}".encode()


def _check_url(url: str, allow_http: bool) -> None:
    """https only, and no literal internal address (unless `allow_http`, for dev/tests).

    Host names that resolve to internal addresses are refused at connect time
    by `licensing.orders.egress.PublicOnlyBackend`.
    """
    parts = urlsplit(url)
    schemes = {"https", "http"} if allow_http else {"https"}
    if parts.scheme not in schemes or not parts.hostname:
        raise Invalid("webhook URL must be an absolute https URL", code="webhook-url-invalid")
    if not allow_http and _is_internal(parts.hostname):
        raise Invalid("webhook URL points at an internal address", code="webhook-url-internal")


def _is_internal(host: str) -> bool:
    """An internal name, or a literal address the dispatcher would refuse to dial."""
    if host == "localhost" or host.endswith((".localhost", ".internal", ".local")):
        return True
    try:
        return not is_public(host)
    except ValueError:  # a host name: vetted when the dispatcher connects
        return False


def _check_event_types(event_types: Iterable[str]) -> list[str]:
    chosen = sorted(set(event_types))
    for pattern in chosen:
        family = pattern.removesuffix(".*")
        known = pattern in EVENT_TYPES or any(e.startswith(family + ".") for e in EVENT_TYPES)
        if pattern != "*" and not known:
            raise Invalid(f"unknown event type {pattern!r}", code="webhook-event-type-unknown")
    return chosen


def matches(filters: Sequence[str], event_type: str) -> bool:
    """True if an endpoint's filter takes `event_type` (empty or ``*`` = all; ``job.*``)."""
    if not filters:
        return True
    return any(
        f in ("*", event_type) or (f.endswith(".*") and event_type.startswith(f[:-1]))
        for f in filters
    )


def create_endpoint(
    session: Session,
    keyring: KeyRing,
    owner_kind: str,
    owner_id: str,
    url: str,
    event_types: Iterable[str] = (),
    *,
    allow_http: bool = False,
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint; returns it and its ``whsec_`` secret (shown once)."""
    if owner_kind not in OWNER_KINDS:
        raise Invalid(f"unknown owner kind {owner_kind!r}", code="webhook-owner-invalid")
    _check_url(url, allow_http)
    endpoint_id = new_id("whep")
    secret = generate_secret()
    endpoint = WebhookEndpoint(
        id=endpoint_id,
        owner_kind=owner_kind,
        owner_id=owner_id,
        url=url,
        secret_wrapped=keyring.wrap(secret.encode(), _context(endpoint_id)),
        event_types=_check_event_types(event_types),
        created_at=utcnow(),
    )
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def get_endpoint(
    session: Session,
    endpoint_id: str,
    *,
    owner_kind: str | None = None,
    owner_id: str | None = None,
) -> WebhookEndpoint:
    """One endpoint; another owner's endpoint is reported as missing (404)."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    foreign = (
        endpoint is not None
        and owner_id is not None
        and (endpoint.owner_id != owner_id or endpoint.owner_kind != owner_kind)
    )
    if endpoint is None or foreign:
        raise NotFound("no such webhook endpoint", code="webhook-endpoint-not-found")
    return endpoint


def list_endpoints(session: Session, owner_kind: str, owner_id: str) -> list[WebhookEndpoint]:
    """An owner's endpoints, oldest first."""
    query = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.owner_kind == owner_kind, WebhookEndpoint.owner_id == owner_id)
        .order_by(sa.column("created_at"), sa.column("id"))
    )
    return list(session.exec(query))


def update_endpoint(
    session: Session,
    endpoint: WebhookEndpoint,
    *,
    url: str | None = None,
    event_types: Iterable[str] | None = None,
    enabled: bool | None = None,
    allow_http: bool = False,
) -> WebhookEndpoint:
    """Change URL, filter or enabled flag; re-enabling clears `disabled_reason`."""
    if url is not None:
        _check_url(url, allow_http)
        endpoint.url = url
    if event_types is not None:
        endpoint.event_types = _check_event_types(event_types)
    if enabled is not None:
        endpoint.enabled = enabled
        endpoint.disabled_reason = None if enabled else "disabled by owner"
    session.add(endpoint)
    session.flush()
    return endpoint


def rotate_secret(session: Session, keyring: KeyRing, endpoint: WebhookEndpoint) -> str:
    """Replace the signing secret; the new one is returned once."""
    secret = generate_secret()
    endpoint.secret_wrapped = keyring.wrap(secret.encode(), _context(endpoint.id))
    session.add(endpoint)
    session.flush()
    return secret


def unwrap_secret(keyring: KeyRing, endpoint_id: str, secret_wrapped: bytes) -> str:
    """Unwrap a signing secret (for the dispatcher only; never return it to clients)."""
    return keyring.unwrap(secret_wrapped, _context(endpoint_id)).decode()


def delete_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    """Delete an endpoint with its outbox rows; the delivery log is kept."""
    outbox = OUTBOX
    session.execute(sa.delete(outbox).where(outbox.c.endpoint_id == endpoint.id))
    session.delete(endpoint)
    session.flush()


# --- outbox ----------------------------------------------------------------------


def encode_event(event_type: str, data: Any, at: datetime) -> bytes:
    """The JSON body: ``{"type", "timestamp", "data"}`` as Standard Webhooks suggests."""
    return _ENCODER.encode({"type": event_type, "timestamp": at.isoformat(), "data": data})


def enqueue(
    session: Session, owner_kind: str, owner_id: str, event_type: str, data: Any
) -> list[str]:
    """Queue `event_type` for every enabled matching endpoint of one owner.

    Runs in the caller's transaction and flushes (never commits). Returns the
    message ids (``webhook-id``), one per endpoint.
    """
    if event_type not in EVENT_TYPES:
        raise Invalid(f"unknown event type {event_type!r}", code="webhook-event-type-unknown")
    now = utcnow()
    body = encode_event(event_type, data, now)
    endpoints = session.exec(
        select(WebhookEndpoint)
        .where(
            WebhookEndpoint.owner_kind == owner_kind,
            WebhookEndpoint.owner_id == owner_id,
            WebhookEndpoint.enabled == sa.true(),
        )
        .order_by(sa.column("id"))
    )
    rows = [
        WebhookOutbox(
            id=new_id("msg"),
            endpoint_id=e.id,
            event_type=event_type,
            payload=body,
            created_at=now,
            next_attempt_at=now,
        )
        for e in endpoints
        if matches(e.event_types, event_type)
    ]
    session.add_all(rows)
    session.flush()
    return [r.id for r in rows]


def list_deliveries(
    session: Session, endpoint_id: str, *, limit: int = 100
) -> list[WebhookDeliveryLog]:
    """The latest delivery attempts to one endpoint, newest first."""
    query = (
        select(WebhookDeliveryLog)
        .where(WebhookDeliveryLog.endpoint_id == endpoint_id)
        .order_by(sa.column("attempted_at").desc(), sa.column("id"))
        .limit(limit)
    )
    return list(session.exec(query))


def list_messages(session: Session, endpoint_id: str, *, limit: int = 100) -> list[WebhookOutbox]:
    """An endpoint's outbox rows (status, attempts, last error), newest first."""
    query = (
        select(WebhookOutbox)
        .where(WebhookOutbox.endpoint_id == endpoint_id)
        .order_by(sa.column("seq").desc())
        .limit(limit)
    )
    return list(session.exec(query))


def purge_history(session: Session, before: datetime) -> int:
    """Delete finished messages (delivered or dead) and log entries older than `before`."""
    finished = (OutboxStatus.delivered, OutboxStatus.dead)
    messages = session.execute(
        sa.delete(OUTBOX).where(OUTBOX.c.status.in_(finished), OUTBOX.c.created_at < before)
    )
    log = session.execute(sa.delete(DELIVERY_LOG).where(DELIVERY_LOG.c.attempted_at < before))
    return int(getattr(messages, "rowcount", 0)) + int(getattr(log, "rowcount", 0))
