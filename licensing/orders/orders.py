"""Print-on-order: quotes, orders, routing to a facility, and the order lifecycle.

An order is placed by a webshop (or arrives from its Shopify store), routed in
the same transaction to the best eligible facility (`routing.rank_candidates`)
and, once routed, carries a licence for exactly ``quantity`` prints issued to
that facility. Every step appends an audit event (``licensing:order:*``) and
queues webhooks (`webhooks.enqueue`) in the caller's transaction, so the state
change, its audit leaf and its events commit together or not at all.

Lifecycle::

    placed ─┬─> routed ─> in_production ─> printed ─> shipped ─> delivered
            └─> unroutable ─(brand re-routes)─> routed
    placed | routed | unroutable ─(shop or brand)─> cancelled
    routed | in_production ─(facility)─> failed

``in_production`` follows the facility's first redemption (or its explicit
report), ``printed`` follows the report of the last print; cancelling or
failing revokes the licence, so its unused prints cannot be redeemed.

Capacity: a facility's load is its number of orders in ``routed`` or
``in_production`` against its declared ``capacity``. The check is not
serialised across concurrent placements, so a burst may overshoot by a few.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import JSON, Field, Session, SQLModel, select

from inventory import catalog
from inventory.accounts import ApiToken, Principal, TokenKind
from inventory.catalog import Part, PartStatus, Revision
from inventory.crypto.keyring import KeyRing
from inventory.db import UTCDateTime, new_id, utcnow
from inventory.errors import Conflict, Forbidden, Invalid, NotFound
from inventory.pagination import Page, paginate
from licensing import facilities, licences
from licensing.audit import AuditEvent, record_event
from licensing.licences import LicenceTerms, PrintJob, TokenContext
from licensing.orders import routing, shopify, webhooks
from licensing.tokens import current_signer

LICENCE_VALIDITY = timedelta(days=180)
MAX_QUANTITY = 1000


class OrderStatus(StrEnum):
    placed = "placed"
    routed = "routed"
    unroutable = "unroutable"
    in_production = "in_production"
    printed = "printed"
    shipped = "shipped"
    delivered = "delivered"
    cancelled = "cancelled"
    failed = "failed"


ACTIVE = (OrderStatus.routed.value, OrderStatus.in_production.value)


class Order(SQLModel, table=True):
    __tablename__ = "print_order"
    __table_args__ = (sa.Index("ix_print_order_facility_id_status", "facility_id", "status"),)

    id: str = Field(primary_key=True, max_length=40)
    brand_id: str = Field(foreign_key="brand.id", index=True, max_length=40)
    shop_id: str = Field(max_length=40, index=True)  # the shop's API token id
    source: str = Field(default="api", max_length=16)  # api | shopify
    shop_reference: str = Field(max_length=200)
    part_id: str = Field(foreign_key="part.id", max_length=40)
    sku: str = Field(max_length=64)
    revision_id: str = Field(foreign_key="revision.id", max_length=40)
    quantity: int
    currency: str = Field(max_length=3)
    ship_country: str = Field(max_length=2)
    ship_latitude: float
    ship_longitude: float
    ship_postcode: str | None = Field(default=None, max_length=32)
    ship_source: str = Field(max_length=24)
    status: str = Field(default=OrderStatus.placed.value, max_length=16)
    facility_id: str | None = Field(default=None, foreign_key="facility.id", max_length=40)
    licence_jti: str | None = Field(default=None, index=True, max_length=40)
    price: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    routing: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    tracking_reference: str | None = Field(default=None, max_length=200)
    reason: str = Field(default="", max_length=1000)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class RoutingPin(SQLModel, table=True):
    """A brand's standing choice of facility for every order shipping to one country."""

    __tablename__ = "routing_pin"
    __table_args__ = (sa.UniqueConstraint("brand_id", "country"),)

    id: str = Field(primary_key=True, max_length=40)
    brand_id: str = Field(foreign_key="brand.id", index=True, max_length=40)
    country: str = Field(max_length=2)
    facility_id: str = Field(foreign_key="facility.id", max_length=40)
    created_at: datetime = Field(sa_type=UTCDateTime)


@dataclass(frozen=True)
class ShipToIn:
    """An address as given: coordinates, or a postcode routed from the country centre."""

    country: str
    latitude: float | None = None
    longitude: float | None = None
    postcode: str | None = None

    def resolve(self) -> routing.ShipTo:
        return routing.resolve_ship_to(self.country, self.latitude, self.longitude, self.postcode)


@dataclass(frozen=True)
class OrderRequest:
    sku: str
    quantity: int
    ship_to: ShipToIn
    shop_reference: str
    source: str = "api"


@dataclass(frozen=True)
class LicenceIssuer:
    """What routing needs to sign a licence: the key ring and this deployment's names."""

    keyring: KeyRing
    context: TokenContext


@dataclass(frozen=True)
class QuoteOption:
    facility: facilities.Facility
    candidate: routing.Candidate


@dataclass(frozen=True)
class Quote:
    part: Part
    ship_to: routing.ShipTo
    options: list[QuoteOption]


# --- what routing sees ---------------------------------------------------------


@dataclass(frozen=True)
class _Sourcing:
    """A part ready to print: its current profile, newest design and commercial terms."""

    part: Part
    revision: Revision
    requirements: routing.PartRequirements
    terms: routing.OrderTerms


def _sourcing(session: Session, brand_id: str, sku: str, quantity: int) -> _Sourcing:
    if not 1 <= quantity <= MAX_QUANTITY:
        raise Invalid(f"quantity must be 1 to {MAX_QUANTITY}", code="quantity-invalid")
    part = catalog.get_part_by_sku(session, brand_id, sku)
    if part.status == PartStatus.withdrawn.value:
        raise Conflict(f"part {sku!r} is withdrawn", code="part-withdrawn")
    profile = catalog.current_profile(session, part)
    if profile is None:
        raise Conflict("the part has no print profile", code="part-has-no-profile")
    revision = _newest_revision(session, part)
    measured = revision.stats.get("report", {}).get("stats", {})
    size, volume = measured.get("size_mm"), measured.get("volume_mm3")
    if not size or not volume:
        raise Conflict("the part's design has no measured volume", code="part-not-measured")
    requirements = routing.PartRequirements(
        process=profile.settings["process"],
        material=profile.settings["material"],
        bbox_mm=(float(size[0]), float(size[1]), float(size[2])),
        volume_mm3=float(volume),
    )
    terms = routing.OrderTerms(quantity, part.royalty_per_print_cents, part.currency)
    return _Sourcing(part, revision, requirements, terms)


def _newest_revision(session: Session, part: Part) -> Revision:
    query = (
        select(Revision)
        .where(Revision.part_id == part.id, sa.column("shredded_at").is_(None))
        .order_by(sa.column("number").desc())
    )
    revision = session.exec(query).first()
    if revision is None:
        raise Conflict("the part has no design to print", code="part-has-no-design")
    return revision


def _candidates(
    session: Session, brand_id: str
) -> tuple[list[routing.Facility], dict[str, facilities.Facility]]:
    """Every facility the brand ever certified, as routing sees it now."""
    certs = facilities.list_certifications(session, brand_id=brand_id)
    by_facility: dict[str, list[facilities.Certification]] = {}
    for cert in certs:
        by_facility.setdefault(cert.facility_id, []).append(cert)
    rows = {fid: facilities.get_facility(session, fid) for fid in by_facility}
    load = _active_orders(session, list(rows))
    views = [_facility_view(rows[fid], by_facility[fid], load.get(fid, 0)) for fid in sorted(rows)]
    return views, rows


def _facility_view(
    row: facilities.Facility, certs: list[facilities.Certification], active: int
) -> routing.Facility:
    """A facility row as routing's plain input, with the brand's most useful certification.

    That is any certification in force (routing checks process and material),
    else the newest one, whose status then explains the drop.
    """
    now = utcnow()
    in_force = [c for c in certs if c.status == "active" and c.expires_at > now]
    cert = (in_force or sorted(certs, key=lambda c: c.created_at))[-1]
    rates = row.rates
    return routing.Facility(
        id=row.id,
        location=routing.GeoPoint(row.latitude, row.longitude),
        certification=routing.Certification(
            status=routing.CertificationStatus(cert.status),
            processes=frozenset(cert.processes),
            materials=frozenset(cert.materials) & frozenset(row.materials),
            expires_at=cert.expires_at,
        ),
        build_volume_mm=(
            float(row.build_volume_mm[0]),
            float(row.build_volume_mm[1]),
            float(row.build_volume_mm[2]),
        ),
        capacity=row.capacity,
        active_jobs=active,
        rates=routing.FacilityRates(
            currency=rates.get("currency", "EUR"),
            material_per_cm3=dict(rates.get("per_cm3_cents", {})),
            machine_per_hour=int(rates.get("per_hour_cents", 0)),
            setup_fee=int(rates.get("setup_fee_cents", 0)),
        ),
        approved=row.status == facilities.FacilityStatus.approved.value,
    )


def _active_orders(session: Session, facility_ids: Sequence[str]) -> dict[str, int]:
    if not facility_ids:
        return {}
    table = ORDERS
    query = (
        sa.select(table.c.facility_id, sa.func.count())
        .where(table.c.facility_id.in_(facility_ids), table.c.status.in_(ACTIVE))
        .group_by(table.c.facility_id)
    )
    return {fid: int(n) for fid, n in session.execute(query)}


def quote(session: Session, brand_id: str, sku: str, quantity: int, ship_to: ShipToIn) -> Quote:
    """Every eligible facility's price and lead time, best first."""
    sourcing = _sourcing(session, brand_id, sku, quantity)
    point = ship_to.resolve()
    views, rows = _candidates(session, brand_id)
    decision = routing.rank_candidates(
        sourcing.requirements, point.point, views, now=utcnow(), terms=sourcing.terms
    )
    options = [QuoteOption(rows[c.facility_id], c) for c in decision.candidates if c.eligible]
    return Quote(sourcing.part, point, options)


# --- placing and routing -------------------------------------------------------


def place(
    session: Session,
    issuer: LicenceIssuer,
    brand_id: str,
    shop_id: str,
    request: OrderRequest,
    *,
    actor: str,
) -> Order:
    """Accept an order and route it at once (routed, or kept as unroutable)."""
    sourcing = _sourcing(session, brand_id, request.sku, request.quantity)
    point = request.ship_to.resolve()
    now = utcnow()
    order = Order(
        id=new_id("ord"),
        brand_id=brand_id,
        shop_id=shop_id,
        source=request.source,
        shop_reference=request.shop_reference,
        part_id=sourcing.part.id,
        sku=sourcing.part.sku,
        revision_id=sourcing.revision.id,
        quantity=request.quantity,
        currency=sourcing.part.currency,
        ship_country=point.country,
        ship_latitude=point.point.lat,
        ship_longitude=point.point.lon,
        ship_postcode=request.ship_to.postcode,
        ship_source=point.source,
        created_at=now,
        updated_at=now,
    )
    session.add(order)
    session.flush()
    _audit(session, order, "place", actor, quantity=order.quantity, sku=order.sku)
    _notify(session, order, "order.placed", to=("shop",))
    return _route(session, issuer, order, sourcing, pin=None, actor=actor)


def reroute(
    session: Session,
    issuer: LicenceIssuer,
    brand_id: str,
    order_id: str,
    pin: str | None,
    *,
    actor: str,
) -> Order:
    """The brand routes an unroutable or not-yet-started order again, optionally pinned."""
    order = _order_of_brand(session, brand_id, order_id)
    if order.status not in (OrderStatus.unroutable.value, OrderStatus.routed.value):
        raise Conflict(f"a {order.status} order cannot be re-routed", code="order-not-reroutable")
    _revoke_licence(session, order, "re-routed by the brand", actor)
    sourcing = _sourcing(session, brand_id, order.sku, order.quantity)
    order.revision_id = sourcing.revision.id
    return _route(session, issuer, order, sourcing, pin=pin, actor=actor)


def _route(
    session: Session,
    issuer: LicenceIssuer,
    order: Order,
    sourcing: _Sourcing,
    *,
    pin: str | None,
    actor: str,
) -> Order:
    views, _ = _candidates(session, order.brand_id)
    pin = pin or _country_pin(session, order.brand_id, order.ship_country)
    decision = routing.rank_candidates(
        sourcing.requirements,
        routing.GeoPoint(order.ship_latitude, order.ship_longitude),
        views,
        now=utcnow(),
        terms=sourcing.terms,
        pinned_facility_id=pin,
    )
    order.routing = explain(decision)
    if decision.chosen is None:
        return _mark_unroutable(session, order, actor)
    return _assign(session, issuer, order, decision.chosen, actor)


def _mark_unroutable(session: Session, order: Order, actor: str) -> Order:
    order.status = OrderStatus.unroutable.value
    order.facility_id, order.price = None, None
    _save(session, order)
    reasons = [f"{c['facility_id']}:{c['reason']}" for c in order.routing["candidates"]]
    _audit(session, order, "route", actor, outcome="unroutable", reasons=reasons)
    _notify(session, order, "order.unroutable", to=("shop",), routing=order.routing)
    return order


def _assign(
    session: Session, issuer: LicenceIssuer, order: Order, chosen: routing.Candidate, actor: str
) -> Order:
    assert chosen.price is not None
    now = utcnow()
    terms = LicenceTerms(
        facility_id=chosen.facility_id,
        revision_id=order.revision_id,
        prints=order.quantity,
        not_before=now,
        expires_at=now + LICENCE_VALIDITY,
        order_id=order.id,
    )
    signer = current_signer(session, issuer.keyring)
    checked = licences.check_issue(
        session, signer, issuer.context, order.brand_id, terms, actor=actor
    )
    (licence,) = licences.record_licences(session, [checked])
    order.status = OrderStatus.routed.value
    order.facility_id, order.licence_jti = chosen.facility_id, licence.jti
    order.price = price_dict(chosen.price)
    _save(session, order)
    _audit(session, order, "route", actor, outcome="routed", total=chosen.price.total)
    _notify(session, order, "order.routed", to=("shop", "facility"))
    _notify(session, order, "job.created", to=("facility",), prints=order.quantity)
    _notify(session, order, "licence.issued", to=("facility",), expires_at=str(licence.expires_at))
    return order


def _country_pin(session: Session, brand_id: str, country: str) -> str | None:
    row = session.exec(
        select(RoutingPin).where(RoutingPin.brand_id == brand_id, RoutingPin.country == country)
    ).first()
    return row.facility_id if row else None


def explain(decision: routing.RoutingDecision) -> dict[str, Any]:
    """The ranked candidates, each with why it was chosen, ranked lower or dropped."""
    chosen = decision.chosen
    rows = []
    for c in decision.candidates:
        outcome = "chosen" if c is chosen else "ranked" if c.eligible else "dropped"
        rows.append(
            {
                "facility_id": c.facility_id,
                "distance_km": c.distance_km,
                "load": round(c.load, 3),
                "outcome": outcome,
                "reason": _why(c, decision) if c.eligible else c.reason,
                "total": c.price.total if c.price else None,
            }
        )
    return {"pin_status": decision.pin_status, "candidates": rows}


def _why(c: routing.Candidate, decision: routing.RoutingDecision) -> str:
    chosen = decision.chosen
    assert chosen is not None and chosen.price is not None and c.price is not None
    if decision.pin_status == "honoured":
        return "pinned" if c is chosen else "not-pinned"
    others = [o for o in decision.candidates if o.eligible and o is not chosen]
    if c is chosen:
        return "only-eligible" if not others else _edge(chosen, others[0])
    return {"nearest": "farther", "cheapest": "dearer", "least-loaded": "busier"}.get(
        _edge(chosen, c), "tie-broken-by-id"
    )


def _edge(better: routing.Candidate, worse: routing.Candidate) -> str:
    """Which ranking rule puts `better` ahead of `worse`."""
    assert better.price is not None and worse.price is not None
    if round(better.distance_km) != round(worse.distance_km):
        return "nearest"
    if better.price.total != worse.price.total:
        return "cheapest"
    if better.load != worse.load:
        return "least-loaded"
    return "first-by-id"


def price_dict(price: routing.PriceBreakdown) -> dict[str, Any]:
    return {
        "currency": price.currency,
        "quantity": price.quantity,
        "material": price.material,
        "machine": price.machine,
        "setup": price.setup,
        "royalty": price.royalty,
        "total": price.total,
        "machine_hours": price.machine_hours,
        "lead_time_days": price.lead_time_days,
    }


# --- lifecycle -----------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """A status an actor may set by hand, from which statuses, and the event it sends."""

    sources: frozenset[str]
    actors: frozenset[TokenKind]
    event: str
    to: tuple[str, ...]


def _step(
    sources: Iterable[OrderStatus], actors: Iterable[TokenKind], event: str, *to: str
) -> Step:
    return Step(frozenset(s.value for s in sources), frozenset(actors), event, to)


S, K = OrderStatus, TokenKind
STEPS: dict[str, Step] = {
    S.in_production: _step([S.routed], [K.facility], "order.in_production", "shop"),
    S.shipped: _step([S.printed], [K.facility], "order.shipped", "shop"),
    S.delivered: _step([S.shipped], [K.facility, K.shop], "order.delivered", "shop", "facility"),
    S.cancelled: _step(
        [S.placed, S.routed, S.unroutable], [K.shop, K.brand], "order.cancelled", "shop", "facility"
    ),
    S.failed: _step([S.routed, S.in_production], [K.facility], "order.failed", "shop", "facility"),
}


def change_status(
    session: Session,
    principal: Principal,
    order_id: str,
    target: str,
    *,
    tracking_reference: str | None = None,
    reason: str = "",
) -> Order:
    """Move an order one step, as the actor allowed to take it."""
    order = get_order(session, principal, order_id)
    step = STEPS.get(target)
    if step is None or principal.kind not in step.actors:
        raise Forbidden(
            f"a {principal.kind} cannot set an order {target}", code="order-step-forbidden"
        )
    if order.status not in step.sources:
        raise Conflict(
            f"the order is {order.status}; it cannot become {target}", code="order-step-invalid"
        )
    _check_step_details(target, tracking_reference, reason)
    actor = _actor(principal)
    if target in (S.cancelled, S.failed):
        _revoke_licence(session, order, reason or target, actor)
    order.status, order.reason = target, reason or order.reason
    order.tracking_reference = tracking_reference or order.tracking_reference
    _save(session, order)
    _audit(session, order, _AUDIT_ACTION[target], actor, reason=reason)
    _notify(session, order, step.event, to=step.to)
    return order


_AUDIT_ACTION: dict[str, str] = {
    S.in_production: "start",
    S.shipped: "ship",
    S.delivered: "deliver",
    S.cancelled: "cancel",
    S.failed: "fail",
}


def _check_step_details(target: str, tracking: str | None, reason: str) -> None:
    if target == S.shipped and not tracking:
        raise Invalid("shipping needs a tracking reference", code="tracking-reference-required")
    if target == S.failed and not reason:
        raise Invalid("a failed order needs a reason", code="failure-reason-required")


def _revoke_licence(session: Session, order: Order, reason: str, actor: str) -> None:
    if order.licence_jti is None:
        return
    licence = licences.revoke(session, order.brand_id, order.licence_jti, reason, actor=actor)
    unused = licence.prints_total - licence.prints_used
    _notify(session, order, "licence.revoked", to=("facility",), unused_prints=unused)


def on_print_redeemed(session: Session, job: licences.NewJob) -> None:
    """A facility redeemed a print of an order's licence: the order is in production.

    Runs on every redemption: a licence no order bought costs nothing, the
    others one prepared Core lookup (the order moves on at its first print).
    """
    if job.order_id is None:
        return
    params = {"jti": job.licence_jti, "status": S.routed.value}
    order_id = session.execute(_ORDER_IN_STATUS, params).scalar()
    if order_id is None:
        return
    order = session.get_one(Order, order_id)
    order.status = S.in_production.value
    _save(session, order)
    _audit(session, order, "start", f"facility:{job.facility_id}", serial=f"{job.serial:016x}")
    _notify(session, order, "order.in_production", to=("shop",))


def on_print_reported(session: Session, job: PrintJob) -> None:
    """A print of an order was reported: tell both sides; the last print completes it."""
    order = _order_for_licence(session, job.licence_jti)
    if order is None:
        return
    event = "job.printed" if job.status == licences.JobStatus.printed else "job.failed"
    extra = {"serial": f"{job.serial:016x}", "failure_reason": job.failure_reason}
    _notify(session, order, event, to=("shop", "facility"), **extra)
    if order.status == S.in_production and _printed(session, job.licence_jti) >= order.quantity:
        order.status = S.printed.value
        _save(session, order)
        _audit(session, order, "complete", f"facility:{job.facility_id}")
        _notify(session, order, "order.completed", to=("shop",))


def _printed(session: Session, jti: str) -> int:
    table = PrintJob.__table__  # type: ignore[attr-defined]
    query = sa.select(sa.func.count()).where(
        table.c.licence_jti == jti, table.c.status == licences.JobStatus.printed.value
    )
    return int(session.execute(query).scalar_one())


def _order_for_licence(session: Session, jti: str) -> Order | None:
    return session.exec(select(Order).where(Order.licence_jti == jti)).first()


_orders = Order.__table__  # type: ignore[attr-defined]
_ORDER_IN_STATUS = sa.select(_orders.c.id).where(
    _orders.c.licence_jti == sa.bindparam("jti"), _orders.c.status == sa.bindparam("status")
)


# --- reading -------------------------------------------------------------------


def get_order(session: Session, principal: Principal, order_id: str) -> Order:
    """An order its shop, brand, facility or the operator may see; others get 404."""
    order = session.get(Order, order_id)
    if order is None or not _may_read(principal, order):
        raise NotFound("no such order", code="order-not-found")
    return order


def _may_read(principal: Principal, order: Order) -> bool:
    if principal.kind == K.operator:
        return True
    if principal.kind == K.facility:
        return order.facility_id is not None and principal.facility_id == order.facility_id
    if principal.kind == K.shop:
        return principal.token_id == order.shop_id
    return principal.brand_id == order.brand_id


def _order_of_brand(session: Session, brand_id: str, order_id: str) -> Order:
    order = session.get(Order, order_id)
    if order is None or order.brand_id != brand_id:
        raise NotFound("no such order", code="order-not-found")
    return order


def list_orders(
    session: Session, principal: Principal, *, status: str | None, cursor: str | None, limit: int
) -> Page[Order]:
    """The caller's orders, oldest first; a facility's list is its job queue."""
    query = select(Order)
    if principal.kind == K.facility:
        query = query.where(Order.facility_id == principal.facility_id)
    elif principal.kind == K.shop:
        query = query.where(Order.shop_id == principal.token_id)
    elif principal.kind == K.brand:
        query = query.where(Order.brand_id == principal.brand_id)
    if status is not None:
        query = query.where(Order.status == status)
    return paginate(session, query, Order, cursor=cursor, limit=limit)


# --- country pins --------------------------------------------------------------


def set_country_pin(session: Session, brand_id: str, country: str, facility_id: str) -> RoutingPin:
    """Route every order of the brand shipping to `country` to one facility (if eligible)."""
    facilities.get_facility(session, facility_id)
    code = routing.resolve_ship_to(country).country
    row = session.exec(
        select(RoutingPin).where(RoutingPin.brand_id == brand_id, RoutingPin.country == code)
    ).first()
    row = row or RoutingPin(
        id=new_id("pin"), brand_id=brand_id, country=code, facility_id="", created_at=utcnow()
    )
    row.facility_id = facility_id
    session.add(row)
    session.flush()
    return row


def list_country_pins(session: Session, brand_id: str) -> list[RoutingPin]:
    query = select(RoutingPin).where(RoutingPin.brand_id == brand_id).order_by(sa.column("country"))
    return list(session.exec(query))


def delete_country_pin(session: Session, brand_id: str, country: str) -> None:
    table = PINS
    result = session.execute(
        sa.delete(table).where(table.c.brand_id == brand_id, table.c.country == country.upper())
    )
    if not getattr(result, "rowcount", 0):
        raise NotFound("no pin for this country", code="routing-pin-not-found")


# --- helpers -------------------------------------------------------------------


def _save(session: Session, order: Order) -> None:
    order.updated_at = utcnow()
    session.add(order)
    session.flush()


def _actor(principal: Principal) -> str:
    if principal.kind == K.facility:
        return f"facility:{principal.facility_id}"
    return f"{principal.kind.value}:{principal.token_id}"


def _audit(session: Session, order: Order, action: str, actor: str, **facts: Any) -> None:
    subject = {"order": order.id, "part": order.part_id}
    if order.facility_id:
        subject["facility"] = order.facility_id
    record_event(
        session,
        AuditEvent(
            type=f"licensing:order:{action}",
            actor=actor,
            brand_id=order.brand_id,
            subject=subject,
            facts={"status": order.status, **facts},
        ),
    )


def event_data(order: Order) -> dict[str, Any]:
    """What every order event carries (never prices of other facilities)."""
    return {
        "order_id": order.id,
        "status": order.status,
        "shop_reference": order.shop_reference,
        "sku": order.sku,
        "quantity": order.quantity,
        "facility_id": order.facility_id,
        "licence_jti": order.licence_jti,
        "tracking_reference": order.tracking_reference,
    }


def _notify(session: Session, order: Order, event: str, *, to: Sequence[str], **extra: Any) -> None:
    data = event_data(order) | extra
    for owner_kind in to:
        owner_id = order.shop_id if owner_kind == "shop" else order.facility_id
        if owner_id is not None:
            webhooks.enqueue(session, owner_kind, owner_id, event, data)


ORDERS: sa.Table = SQLModel.metadata.tables["print_order"]
PINS: sa.Table = SQLModel.metadata.tables["routing_pin"]


# --- Shopify -------------------------------------------------------------------


@dataclass(frozen=True)
class SkippedLine:
    sku: str | None
    code: str
    detail: str


@dataclass(frozen=True)
class ShopifyOutcome:
    orders: list[Order]
    skipped: list[SkippedLine]


def place_from_shopify(
    session: Session, issuer: LicenceIssuer, inbound: shopify.InboundOrder
) -> ShopifyOutcome:
    """Place one order per line item whose SKU is a part; other lines are reported skipped.

    Each line is placed in its own savepoint, so a line that cannot be printed
    (unknown SKU, withdrawn part, bad quantity) never blocks the others.
    """
    brand_id = _shop_brand(session, inbound.shop_id)
    address = inbound.order.shipping_address
    outcome = ShopifyOutcome([], [])
    for index, line in enumerate(inbound.order.lines, start=1):
        if address is None or not line.sku:
            code = "ship-to-missing" if address is None else "sku-missing"
            outcome.skipped.append(SkippedLine(line.sku, code, "line not printable"))
            continue
        request = OrderRequest(
            sku=line.sku,
            quantity=line.quantity,
            ship_to=ShipToIn(
                address.country_code, address.latitude, address.longitude, address.zip
            ),
            shop_reference=f"shopify:{inbound.order.name}#{index}",
            source="shopify",
        )
        try:
            with session.begin_nested():
                order = place(
                    session,
                    issuer,
                    brand_id,
                    inbound.shop_id,
                    request,
                    actor=f"shop:{inbound.shop_id}",
                )
        except (NotFound, Conflict, Invalid) as exc:
            outcome.skipped.append(SkippedLine(line.sku, exc.code, exc.detail))
            continue
        outcome.orders.append(order)
    return outcome


def _shop_brand(session: Session, shop_id: str) -> str:
    token = session.get(ApiToken, shop_id)
    if token is None or token.revoked_at is not None or token.brand_id is None:
        raise Forbidden("the shop connected to this store is revoked", code="shop-revoked")
    return token.brand_id
