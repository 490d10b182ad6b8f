"""Routing and quotes: eligibility rules with precise reasons, ranking, pinning, money."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from inventory.errors import Invalid
from licensing.orders.country_centroids import CENTROIDS
from licensing.orders.routing import (
    Certification,
    CertificationStatus,
    Facility,
    FacilityRates,
    GeoPoint,
    OrderTerms,
    PartRequirements,
    fits_build_volume,
    great_circle_km,
    quote_for,
    rank_candidates,
    resolve_ship_to,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BERLIN = GeoPoint(52.5200, 13.4050)
HAMBURG = GeoPoint(53.5511, 9.9937)
MUNICH = GeoPoint(48.1351, 11.5820)
PARIS = GeoPoint(48.8566, 2.3522)
RATES = FacilityRates(
    currency="EUR",
    material_per_cm3={"PA12": 30, "PLA": 5},
    machine_per_hour=1200,
    setup_fee=500,
    volume_rate_cm3_per_h=10.0,
    z_rate_mm_per_h=20.0,
    base_lead_days=2,
    full_queue_days=10,
)
CERT = Certification(
    CertificationStatus.active,
    frozenset({"SLS", "FDM"}),
    frozenset({"PA12", "PLA"}),
    expires_at=NOW + timedelta(days=365),
)
PART = PartRequirements(
    process="SLS", material="PA12", bbox_mm=(300.0, 40.0, 20.0), volume_mm3=12_000.0
)


def facility(fid: str, where: GeoPoint, **changes: object) -> Facility:
    base = Facility(
        id=fid,
        location=where,
        certification=CERT,
        build_volume_mm=(350.0, 350.0, 350.0),
        capacity=10,
        active_jobs=2,
        rates=RATES,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def reasons(decision: object) -> dict[str, str]:
    return {c.facility_id: c.reason for c in decision.candidates}  # type: ignore[attr-defined]


def test_great_circle_known_distances() -> None:
    assert great_circle_km(BERLIN, PARIS) == pytest.approx(878, abs=3)
    assert great_circle_km(BERLIN, BERLIN) == 0.0
    # a quarter of the meridian on the mean sphere
    assert great_circle_km(GeoPoint(0, 0), GeoPoint(90, 0)) == pytest.approx(10007.5, abs=0.5)


def test_build_volume_tries_all_six_orientations() -> None:
    assert fits_build_volume((300, 40, 20), (350, 350, 350))
    assert fits_build_volume((300, 40, 20), (50, 30, 310))  # only as (40, 20, 300)
    assert not fits_build_volume((300, 40, 20), (290, 290, 290))
    assert not fits_build_volume((60, 60, 60), (50, 400, 400))


def test_nearest_certified_facility_wins() -> None:
    shops = [
        facility("fac_paris", PARIS),
        facility("fac_hamburg", HAMBURG),
        facility("fac_munich", MUNICH),
    ]
    decision = rank_candidates(PART, BERLIN, shops, now=NOW)
    assert decision.chosen is not None and decision.chosen.facility_id == "fac_hamburg"
    assert [c.facility_id for c in decision.candidates] == [
        "fac_hamburg",
        "fac_munich",
        "fac_paris",
    ]
    assert decision.chosen.distance_km == pytest.approx(255, abs=3)
    assert decision.pin_status == "none"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"active_jobs": 10}, "at-capacity"),
        ({"certification": None}, "not-certified"),
        (
            {"certification": replace(CERT, status=CertificationStatus.revoked)},
            "certification-revoked",
        ),
        ({"approved": False}, "facility-not-approved"),
        (
            {"certification": replace(CERT, status=CertificationStatus.suspended)},
            "certification-suspended",
        ),
        (
            {"certification": replace(CERT, expires_at=NOW - timedelta(seconds=1))},
            "certification-expired",
        ),
        ({"certification": replace(CERT, processes=frozenset({"FDM"}))}, "process-not-certified"),
        ({"certification": replace(CERT, materials=frozenset({"PLA"}))}, "material-not-certified"),
        ({"build_volume_mm": (250.0, 250.0, 250.0)}, "too-small"),
        ({"rates": replace(RATES, material_per_cm3={"PLA": 5})}, "material-not-priced"),
        ({"rates": replace(RATES, currency="USD")}, "currency-mismatch"),
    ],
)
def test_each_ineligible_facility_is_skipped_with_its_reason(
    changes: dict[str, object], reason: str
) -> None:
    near = facility("fac_near", HAMBURG, **changes)
    far = facility("fac_far", PARIS)
    decision = rank_candidates(PART, BERLIN, [near, far], now=NOW)
    assert decision.chosen is not None and decision.chosen.facility_id == "fac_far"
    assert reasons(decision) == {"fac_far": "eligible", "fac_near": reason}
    dropped = decision.candidates[1]
    assert not dropped.eligible and dropped.price is None


def test_part_that_fits_only_rotated_is_eligible() -> None:
    narrow = facility("fac_narrow", HAMBURG, build_volume_mm=(50.0, 30.0, 310.0))
    decision = rank_candidates(PART, BERLIN, [narrow], now=NOW)
    assert decision.chosen is not None and decision.chosen.facility_id == "fac_narrow"


def test_nobody_eligible_means_unroutable_with_all_reasons() -> None:
    shops = [
        facility("fac_a", HAMBURG, active_jobs=10),
        facility("fac_b", MUNICH, build_volume_mm=(100.0, 100.0, 100.0)),
    ]
    decision = rank_candidates(PART, BERLIN, shops, now=NOW)
    assert decision.chosen is None
    assert reasons(decision) == {"fac_a": "at-capacity", "fac_b": "too-small"}


def test_tie_on_distance_breaks_on_price_then_load() -> None:
    cheap = facility("fac_cheap", HAMBURG, rates=replace(RATES, setup_fee=100), active_jobs=8)
    dear = facility("fac_dear", HAMBURG, active_jobs=0)
    decision = rank_candidates(PART, BERLIN, [dear, cheap], now=NOW)
    assert decision.chosen is not None and decision.chosen.facility_id == "fac_cheap"

    busy = facility("fac_busy", HAMBURG, active_jobs=7)
    idle = facility("fac_idle", GeoPoint(HAMBURG.lat + 0.001, HAMBURG.lon), active_jobs=1)
    decision = rank_candidates(PART, BERLIN, [busy, idle], now=NOW)
    assert decision.chosen is not None and decision.chosen.facility_id == "fac_idle"
    first, second = (c.price for c in decision.candidates)
    assert first is not None and second is not None and first.total == second.total
    assert first.lead_time_days < second.lead_time_days  # the idle one is also quicker


def test_eligible_pin_wins_over_nearest() -> None:
    shops = [facility("fac_hamburg", HAMBURG), facility("fac_paris", PARIS)]
    decision = rank_candidates(PART, BERLIN, shops, now=NOW, pinned_facility_id="fac_paris")
    assert decision.chosen is not None and decision.chosen.facility_id == "fac_paris"
    assert decision.pin_status == "honoured"


def test_ineligible_or_unknown_pin_is_reported_and_routing_falls_back() -> None:
    shops = [facility("fac_hamburg", HAMBURG), facility("fac_paris", PARIS, active_jobs=10)]
    decision = rank_candidates(PART, BERLIN, shops, now=NOW, pinned_facility_id="fac_paris")
    assert decision.chosen is not None and decision.chosen.facility_id == "fac_hamburg"
    assert decision.pin_status == "at-capacity"
    decision = rank_candidates(PART, BERLIN, shops, now=NOW, pinned_facility_id="fac_nope")
    assert decision.pin_status == "unknown-facility"


def test_postcode_only_address_routes_from_country_centroid() -> None:
    ship_to = resolve_ship_to("fr", postcode="75001")
    assert ship_to.source == "country-centroid" and ship_to.country == "FR"
    assert ship_to.point == GeoPoint(*CENTROIDS["FR"])
    shops = [facility("fac_paris", PARIS), facility("fac_hamburg", HAMBURG)]
    decision = rank_candidates(PART, ship_to.point, shops, now=NOW)
    assert decision.chosen is not None and decision.chosen.facility_id == "fac_paris"

    exact = resolve_ship_to("DE", lat=52.52, lon=13.405, postcode="10117")
    assert exact.source == "coordinates" and exact.point == GeoPoint(52.52, 13.405)


def test_ship_to_rejects_unknown_country_and_bad_coordinates() -> None:
    with pytest.raises(Invalid) as exc:
        resolve_ship_to("XX", postcode="123")
    assert exc.value.code == "unknown-country"
    with pytest.raises(Invalid) as exc:
        resolve_ship_to("DE", lat=52.5)
    assert exc.value.code == "coordinates-invalid"
    with pytest.raises(Invalid) as exc:
        resolve_ship_to("DE", lat=95.0, lon=10.0)
    assert exc.value.code == "coordinates-invalid"


def test_centroid_table_covers_required_countries() -> None:
    eu_eea = {
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
        "IS",
        "LI",
        "NO",
    }
    others = {"GB", "CH", "US", "CA", "MX", "BR", "AR", "JP", "KR", "CN", "IN", "AU", "NZ", "ZA"}
    assert len(eu_eea) == 30
    for code in eu_eea | others:
        lat, lon = CENTROIDS[code]
        assert -90 <= lat <= 90 and -180 <= lon <= 180
    assert resolve_ship_to("UK").point == GeoPoint(*CENTROIDS["GB"])


def test_quote_arithmetic_in_minor_units() -> None:
    # 12 cm³ * 30 ct = 360 ct per print; hours = 12/10 + 20/20 = 2.2 h * 1200 ct = 2640 ct
    quote = quote_for(RATES, 12_000.0, (300.0, 40.0, 20.0), "PA12", 3, 250, "EUR", load=0.2)
    assert quote.material == 3 * 360
    assert quote.machine == 3 * 2640
    assert quote.setup == 500
    assert quote.royalty == 750
    assert quote.total == 1080 + 7920 + 500 + 750 == 10_250
    assert quote.machine_hours == pytest.approx(6.6)
    assert quote.lead_time_days == 2 + 1 + 2  # base + ceil(6.6 h / 24) + ceil(0.2 * 10)
    assert all(isinstance(v, int) for v in (quote.material, quote.machine, quote.total))


def test_quote_rounds_half_up_once_per_line() -> None:
    rates = replace(RATES, material_per_cm3={"PA12": 7})
    quote = quote_for(rates, 1_500.0, (10.0, 10.0, 10.0), "PA12", 1, 0, "EUR")
    assert quote.material == 11  # 1.5 cm³ * 7 = 10.5 → 11
    assert quote.total == quote.material + quote.machine + quote.setup + quote.royalty


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ((12_000.0, "PA12", 0, 0, "EUR"), "quantity-invalid"),
        ((0.0, "PA12", 1, 0, "EUR"), "part-volume-invalid"),
        ((12_000.0, "PA12", 1, -1, "EUR"), "royalty-invalid"),
        ((12_000.0, "PA12", 1, 0, "USD"), "currency-mismatch"),
        ((12_000.0, "ABS", 1, 0, "EUR"), "material-not-priced"),
    ],
)
def test_quote_rejects_bad_inputs(args: tuple[float, str, int, int, str], code: str) -> None:
    volume, material, quantity, royalty, currency = args
    with pytest.raises(Invalid) as exc:
        quote_for(RATES, volume, (1.0, 1.0, 1.0), material, quantity, royalty, currency)
    assert exc.value.code == code


def test_terms_price_every_candidate() -> None:
    terms = OrderTerms(quantity=2, royalty_per_print=100, currency="EUR")
    decision = rank_candidates(PART, BERLIN, [facility("fac_h", HAMBURG)], now=NOW, terms=terms)
    assert decision.chosen is not None and decision.chosen.price is not None
    assert decision.chosen.price.quantity == 2 and decision.chosen.price.royalty == 200
