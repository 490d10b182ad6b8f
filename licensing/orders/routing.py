"""Quotes and routing: pure functions over plain dataclasses, no database.

Money is always an integer number of minor units (cents) of one ISO 4217
currency; intermediate products are computed with `Decimal` and rounded half
up once per line item, so a breakdown always adds up exactly.

Machine-time model (documented, deliberately simple): printing one part takes
``volume_cm3 / rates.volume_rate_cm3_per_h + height_mm / rates.z_rate_mm_per_h``
hours: material deposition proportional to the measured volume, plus a
per-layer overhead proportional to the printed height (the bbox z as oriented
by the print profile). Lead time is ``rates.base_lead_days`` plus the machine
time in whole days plus ``load * rates.full_queue_days`` (a full queue adds the
facility's stated backlog).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from itertools import permutations

from inventory.errors import Invalid
from licensing.orders.country_centroids import ALIASES, centroid

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius of the WGS84 ellipsoid
MM3_PER_CM3 = Decimal(1000)

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class GeoPoint:
    """A WGS84 position in decimal degrees."""

    lat: float
    lon: float


@dataclass(frozen=True)
class ShipTo:
    """Where an order ships, and whether the point is exact or a country centroid."""

    country: str
    point: GeoPoint
    source: str  # "coordinates" | "country-centroid"


class CertificationStatus(StrEnum):
    active = "active"
    suspended = "suspended"
    revoked = "revoked"


@dataclass(frozen=True)
class Certification:
    """A brand's certification of one facility for some processes and materials."""

    status: CertificationStatus
    processes: frozenset[str]
    materials: frozenset[str]
    expires_at: datetime | None = None


@dataclass(frozen=True)
class FacilityRates:
    """A facility's price list (minor units of `currency`) and throughput."""

    currency: str
    material_per_cm3: dict[str, int]
    machine_per_hour: int
    setup_fee: int
    volume_rate_cm3_per_h: float = 10.0
    z_rate_mm_per_h: float = 20.0
    base_lead_days: int = 2
    full_queue_days: int = 10


@dataclass(frozen=True)
class Facility:
    """What routing needs to know about one print bureau.

    `certification` is the ordering brand's newest certification of this
    facility (None if it never certified it); `approved` mirrors the operator's
    approval of the facility account.
    """

    id: str
    location: GeoPoint
    certification: Certification | None
    build_volume_mm: Vec3
    capacity: int
    active_jobs: int
    rates: FacilityRates
    approved: bool = True

    @property
    def load(self) -> float:
        """Share of capacity in use (1.0 = full; ≥ 1 when capacity is 0)."""
        return self.active_jobs / self.capacity if self.capacity > 0 else 1.0


@dataclass(frozen=True)
class PartRequirements:
    """What the order needs printed: process, material, measured geometry."""

    process: str
    material: str
    bbox_mm: Vec3
    volume_mm3: float


@dataclass(frozen=True)
class OrderTerms:
    """Quantity and commercial terms that price every candidate alike."""

    quantity: int = 1
    royalty_per_print: int = 0
    currency: str = "EUR"


@dataclass(frozen=True)
class PriceBreakdown:
    """A quote in integer minor units; `total` is the exact sum of the lines."""

    currency: str
    quantity: int
    material: int
    machine: int
    setup: int
    royalty: int
    total: int
    machine_hours: float
    lead_time_days: int


@dataclass(frozen=True)
class Candidate:
    """One facility as seen by routing; ineligible ones say exactly why."""

    facility_id: str
    distance_km: float
    load: float
    eligible: bool
    reason: str
    price: PriceBreakdown | None = None


@dataclass(frozen=True)
class RoutingDecision:
    """The chosen facility (or None: unroutable) and every candidate considered.

    `pin_status` is ``"none"`` without a pin, ``"honoured"`` when the pinned
    facility was eligible and chosen, ``"unknown-facility"``, or the pinned
    facility's ineligibility reason (routing then falls back to ranking).
    """

    chosen: Candidate | None
    candidates: list[Candidate] = field(default_factory=list)
    pin_status: str = "none"


def great_circle_km(a: GeoPoint, b: GeoPoint) -> float:
    """Haversine distance in km on a sphere of the WGS84 mean radius."""
    phi1, phi2 = math.radians(a.lat), math.radians(b.lat)
    dphi = phi2 - phi1
    dlmb = math.radians(b.lon - a.lon)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def fits_build_volume(part_bbox_mm: Vec3, build_volume_mm: Vec3) -> bool:
    """True if the bbox fits the build volume in one of the six axis orientations."""
    return any(
        all(p <= b for p, b in zip(turned, build_volume_mm, strict=True))
        for turned in permutations(part_bbox_mm)
    )


def _money(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def machine_hours(rates: FacilityRates, volume_mm3: float, height_mm: float) -> float:
    """Estimated hours to print one part (see the module docstring)."""
    volume_cm3 = volume_mm3 / 1000.0
    return volume_cm3 / rates.volume_rate_cm3_per_h + height_mm / rates.z_rate_mm_per_h


def quote_for(
    facility_rates: FacilityRates,
    part_volume_mm3: float,
    bbox: Vec3,
    material: str,
    quantity: int,
    royalty_per_print: int,
    currency: str,
    *,
    load: float = 0.0,
) -> PriceBreakdown:
    """Price `quantity` prints at one facility; raises `Invalid` if it cannot."""
    rates = facility_rates
    _check_quote_inputs(rates, part_volume_mm3, material, quantity, royalty_per_print, currency)
    hours = machine_hours(rates, part_volume_mm3, bbox[2])
    volume_cm3 = Decimal(str(part_volume_mm3)) / MM3_PER_CM3
    material_cost = _money(volume_cm3 * rates.material_per_cm3[material] * quantity)
    machine_cost = _money(Decimal(str(hours)) * rates.machine_per_hour * quantity)
    royalty = royalty_per_print * quantity
    total = material_cost + machine_cost + rates.setup_fee + royalty
    return PriceBreakdown(
        currency=currency,
        quantity=quantity,
        material=material_cost,
        machine=machine_cost,
        setup=rates.setup_fee,
        royalty=royalty,
        total=total,
        machine_hours=round(hours * quantity, 3),
        lead_time_days=_lead_time_days(rates, hours * quantity, load),
    )


def _check_quote_inputs(
    rates: FacilityRates,
    volume_mm3: float,
    material: str,
    quantity: int,
    royalty_per_print: int,
    currency: str,
) -> None:
    if quantity < 1:
        raise Invalid("quantity must be at least 1", code="quantity-invalid")
    if volume_mm3 <= 0:
        raise Invalid("the part has no measured volume", code="part-volume-invalid")
    if royalty_per_print < 0:
        raise Invalid("royalty cannot be negative", code="royalty-invalid")
    if rates.currency != currency:
        raise Invalid(
            f"facility prices in {rates.currency}, not {currency}", code="currency-mismatch"
        )
    if material not in rates.material_per_cm3:
        raise Invalid(f"no price for material {material!r}", code="material-not-priced")


def _lead_time_days(rates: FacilityRates, total_hours: float, load: float) -> int:
    queue_days = math.ceil(min(max(load, 0.0), 1.0) * rates.full_queue_days)
    return rates.base_lead_days + math.ceil(total_hours / 24) + queue_days


def ineligibility(facility: Facility, part: PartRequirements, now: datetime) -> str | None:
    """The first rule `facility` breaks for `part`, as a reason slug, or None."""
    cert = facility.certification
    if not facility.approved:
        return "facility-not-approved"
    if cert is None:
        return "not-certified"
    if cert.status is CertificationStatus.revoked:
        return "certification-revoked"
    if cert.status is CertificationStatus.suspended:
        return "certification-suspended"
    if cert.expires_at is not None and cert.expires_at <= now:
        return "certification-expired"
    if part.process not in cert.processes:
        return "process-not-certified"
    if part.material not in cert.materials:
        return "material-not-certified"
    if not fits_build_volume(part.bbox_mm, facility.build_volume_mm):
        return "too-small"
    if facility.active_jobs >= facility.capacity:
        return "at-capacity"
    return None


def _assess(
    facility: Facility,
    part: PartRequirements,
    terms: OrderTerms,
    ship_to: GeoPoint,
    now: datetime,
) -> Candidate:
    distance = round(great_circle_km(ship_to, facility.location), 3)
    reason = ineligibility(facility, part, now)
    if reason is not None:
        return Candidate(facility.id, distance, facility.load, False, reason)
    try:
        price = quote_for(
            facility.rates,
            part.volume_mm3,
            part.bbox_mm,
            part.material,
            terms.quantity,
            terms.royalty_per_print,
            terms.currency,
            load=facility.load,
        )
    except Invalid as exc:
        return Candidate(facility.id, distance, facility.load, False, exc.code)
    return Candidate(facility.id, distance, facility.load, True, "eligible", price)


def _rank_key(c: Candidate) -> tuple[int, int, float, str]:
    """Nearest (whole km), then cheapest total, then least loaded, then id."""
    assert c.price is not None
    return (round(c.distance_km), c.price.total, c.load, c.facility_id)


def rank_candidates(
    part: PartRequirements,
    ship_to: GeoPoint,
    facilities: Sequence[Facility],
    *,
    now: datetime,
    terms: OrderTerms | None = None,
    pinned_facility_id: str | None = None,
) -> RoutingDecision:
    """Assess every facility and choose one; see `RoutingDecision` for pinning.

    Eligible candidates come first in rank order, then ineligible ones nearest
    first. Distances are compared in whole kilometres, so two bureaus in the
    same town tie on distance and are separated by price, then by load.
    """
    terms = terms or OrderTerms()
    assessed = [_assess(f, part, terms, ship_to, now) for f in facilities]
    eligible = sorted((c for c in assessed if c.eligible), key=_rank_key)
    dropped = sorted((c for c in assessed if not c.eligible), key=lambda c: c.distance_km)
    candidates = eligible + dropped
    chosen = eligible[0] if eligible else None
    if pinned_facility_id is None:
        return RoutingDecision(chosen, candidates)
    pinned = next((c for c in assessed if c.facility_id == pinned_facility_id), None)
    if pinned is None:
        return RoutingDecision(chosen, candidates, "unknown-facility")
    if not pinned.eligible:
        return RoutingDecision(chosen, candidates, pinned.reason)
    return RoutingDecision(pinned, candidates, "honoured")


def resolve_ship_to(
    country: str,
    lat: float | None = None,
    lon: float | None = None,
    postcode: str | None = None,
) -> ShipTo:
    """Coordinates when given, else the country centroid (postcode-only address).

    The postcode is accepted for the record but not geocoded: there is no
    postcode database, so a postcode-only address routes from its country's
    centre. Unknown country → `Invalid` ``unknown-country``.
    """
    code = country.strip().upper()
    code = ALIASES.get(code, code)
    fallback = centroid(code)
    if fallback is None:
        raise Invalid(f"unknown country code {country!r}", code="unknown-country")
    if lat is None and lon is None:
        return ShipTo(code, GeoPoint(*fallback), "country-centroid")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise Invalid("latitude and longitude must both be valid", code="coordinates-invalid")
    return ShipTo(code, GeoPoint(lat, lon), "coordinates")
