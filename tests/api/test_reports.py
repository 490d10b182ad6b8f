"""Print reports for brands: counts from the audit log equal the licence counters."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

TODAY = datetime.now(UTC).date()
RANGE = {"from": (TODAY - timedelta(days=1)).isoformat(), "to": TODAY.isoformat()}


def _scalar(settings: Any, sql: str, **params: Any) -> Any:
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as conn:
        value = conn.execute(sa.text(sql), params).scalar_one()
    engine.dispose()
    return value


def _print(world: Any, licence: dict[str, Any], outcome: str | None, reason: str = "") -> None:
    job = world.bureau.ok(
        "POST", f"/v1/licences/{licence['jti']}/redeem", json={"licence": licence["token"]}
    )
    if outcome is not None:
        body = {"status": outcome} | ({"reason": reason} if reason else {})
        world.bureau.ok("POST", f"/v1/jobs/{job['serial']}/report", json=body)


@pytest.fixture
def printed(world):
    """Two licences: printed, a refunded failure, a paid failure, printed; one unreported."""
    api = world.api
    api.ok(
        "PATCH", f"/v1/parts/{world.part['id']}", world.brand, json={"royalty_per_print_cents": 150}
    )
    api.ok(
        "POST", f"/v1/brands/{world.brand_id}/policy", world.brand, json={"reprints_per_licence": 1}
    )
    first, second = world.licence(prints=3), world.licence(prints=2)
    _print(world, first, "printed")
    _print(world, first, "failed", "warped")  # refunded: the allowance is 1
    _print(world, first, "failed", "resin leak")  # allowance used: counted and paid
    _print(world, first, "printed")
    _print(world, second, None)  # redeemed, not reported yet
    return world, [first, second]


def _report(world: Any, token: str | None = None, **params: Any) -> Any:
    return world.api.ok("GET", "/v1/reports/prints", token or world.brand, params=RANGE | params)


def test_counts_equal_redemption_leaves_and_licence_counters(printed):
    world, licences = printed
    settings = world.api.settings
    report = _report(world)
    total = report["total"]
    assert (total["redeemed"], total["printed"], total["failed"]) == (5, 2, 2)
    assert total["refunded"] == 1 and total["counted"] == 4
    assert total["failure_reasons"] == {"warped": 1, "resin leak": 1}
    assert total["royalties_cents"] == 4 * 150 and total["currency"] == "EUR"
    leaves = _scalar(
        settings,
        "SELECT count(*) FROM audit_entry WHERE brand_id = :b "
        "AND event_type = 'licensing:print:redeemed'",
        b=world.brand_id,
    )
    assert total["redeemed"] == leaves == 5
    used = [world.api.ok("GET", f"/v1/licences/{lic['jti']}", world.brand) for lic in licences]
    assert total["counted"] == sum(lic["prints_used"] for lic in used) == 3 + 1
    assert report["log_entries"] == 5 + 2 + 2 and report["log_size"] >= report["log_entries"]
    (group,) = report["groups"]
    assert group["key"] == world.part["id"] and group["label"] == "CUBE-20"
    assert {k: v for k, v in group.items() if k not in ("key", "label")} == {
        k: v for k, v in total.items() if k not in ("key", "label")
    }


def test_a_rate_change_does_not_rewrite_past_royalties(printed):
    """Each print earns the rate its licence was issued at, refunds included."""
    world, (first, _) = printed
    api = world.api
    api.ok(
        "PATCH",
        f"/v1/parts/{world.part['id']}",
        world.brand,
        json={"royalty_per_print_cents": 400, "currency": "USD"},
    )
    assert _report(world)["total"]["royalties_cents"] == 4 * 150
    later = world.licence(prints=2)
    _print(world, later, "printed")
    _print(world, later, "failed", "warped")  # refunded at its own licence's rate
    total = _report(world)["total"]
    assert (total["counted"], total["refunded"]) == (5, 2)
    assert total["royalties_cents"] == 4 * 150 + (2 - 1) * 400
    assert total["currency"] == "MIXED"
    rates = _scalar(
        world.api.settings,
        "SELECT count(DISTINCT royalty_per_print_cents) FROM licence WHERE jti IN (:a, :b)",
        a=first["jti"],
        b=later["jti"],
    )
    assert rates == 2


def test_grouping_by_facility_and_month(printed):
    world, _ = printed
    by_facility = _report(world, group_by="facility")
    (facility,) = by_facility["groups"]
    assert facility["key"] == world.bureau.id and facility["label"] == "Print Hub Lyon"
    assert facility["counted"] == 4
    by_month = _report(world, group_by="month")
    assert [g["key"] for g in by_month["groups"]] == [TODAY.strftime("%Y-%m")]
    later = world.api.ok(
        "GET",
        "/v1/reports/prints",
        world.brand,
        params={"from": (TODAY + timedelta(days=1)).isoformat(), "to": "2099-01-01"},
    )
    assert later["groups"] == [] and later["total"]["redeemed"] == 0


def test_csv_matches_json(printed):
    world, _ = printed
    response = world.api.call(
        "GET", "/v1/reports/prints", world.brand, params=RANGE | {"format": "csv"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == [
        "key",
        "label",
        "redeemed",
        "printed",
        "failed",
        "refunded",
        "counted",
        "royalties_cents",
        "currency",
        "failure_reasons",
    ]
    part, total = rows
    assert part["label"] == "CUBE-20" and total["key"] == "total"
    assert (total["redeemed"], total["counted"], total["royalties_cents"]) == ("5", "4", "600")
    assert total["failure_reasons"] == "resin leak=1;warped=1"


def test_tenancy_operator_and_bad_requests(printed):
    world, _ = printed
    api = world.api
    _, other = api.brand("Globex")
    assert _report(world, other)["total"]["redeemed"] == 0
    # a brand cannot read another brand's report by naming it
    assert _report(world, other, brand_id=world.brand_id)["total"]["redeemed"] == 0
    missing = api.call("GET", "/v1/reports/prints", api.admin, params=RANGE)
    assert missing.status_code == 400 and missing.json()["code"] == "brand-id-required"
    as_operator = _report(world, api.admin, brand_id=world.brand_id)
    assert as_operator["total"]["counted"] == 4
    shop = api.shop(world.brand)
    assert api.call("GET", "/v1/reports/prints", shop, params=RANGE).status_code == 403
    backwards = api.call(
        "GET", "/v1/reports/prints", world.brand, params={"from": "2026-02-01", "to": "2026-01-01"}
    )
    assert backwards.status_code == 422 and backwards.json()["code"] == "report-range-invalid"
    bad_group = api.call("GET", "/v1/reports/prints", world.brand, params=RANGE | {"group_by": "x"})
    assert bad_group.status_code in (400, 422)


def test_a_tampered_print_entry_refuses_the_report(printed):
    world, _ = printed
    engine = sa.create_engine(world.api.settings.database_url)
    with engine.begin() as conn:
        index, body = conn.execute(
            sa.text(
                'SELECT "index", body FROM audit_entry WHERE event_type = '
                "'licensing:print:failed' ORDER BY \"index\" LIMIT 1"
            )
        ).one()
        forged = bytes(body).replace(b'"refunded":true', b'"refunded":false')
        conn.execute(
            sa.text('UPDATE audit_entry SET body = :b WHERE "index" = :i'),
            {"b": forged, "i": index},
        )
    engine.dispose()
    response = world.api.call("GET", "/v1/reports/prints", world.brand, params=RANGE)
    assert response.status_code == 500 and response.json()["code"] == "audit-entry-corrupt"


def test_cli_report_prints(printed, monkeypatch):
    from click.testing import CliRunner

    from api import client
    from api.cli import main

    world, _ = printed
    test_client = world.api.client

    class InProcess(client.Client):
        def __init__(self, url: str, token: str | None, **_: Any) -> None:
            self.http = test_client
            self.auth = {"Authorization": f"Bearer {token}"}

        def request(self, method: str, path: str, **kwargs: Any) -> Any:
            kwargs["headers"] = kwargs.get("headers", {}) | self.auth
            return super().request(method, path, **kwargs)

    monkeypatch.setattr(client, "Client", InProcess)
    env = {"PARTVAULT_URL": "http://testserver.local", "PARTVAULT_TOKEN": world.brand}
    args = ["report", "prints", "--from", RANGE["from"], "--to", RANGE["to"]]
    as_json = CliRunner().invoke(main, [*args, "--format", "json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["total"]["counted"] == 4
    as_csv = CliRunner().invoke(main, [*args, "--group", "month", "--format", "csv"], env=env)
    assert as_csv.exit_code == 0
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert rows[0][0] == "key" and rows[1][0] == TODAY.strftime("%Y-%m") and rows[-1][0] == "total"
    refused = CliRunner().invoke(
        main, [*args, "--group", "month"], env=env | {"PARTVAULT_TOKEN": world.api.admin}
    )
    assert refused.exit_code == 1 and "brand-id-required" in refused.stderr
