"""Tokens, roles and tenancy over the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from inventory.accounts import hash_token


def test_tokens_are_prefixed_shown_once_and_stored_hashed(api):
    _, token = api.brand("Acme")
    assert token.startswith("pv_brand_") and len(token) > 40
    listed = api.ok("GET", "/v1/tokens", token)
    assert all("token" not in row for row in listed)
    assert {row["display_prefix"] for row in listed} == {token[:13]}
    engine = sa.create_engine(api.settings.database_url)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT token_hash FROM api_token")).scalars().all()
    engine.dispose()
    assert hash_token(token) in stored
    assert token not in stored


def test_missing_malformed_unknown_and_revoked_tokens_are_401(api):
    _, token = api.brand("Acme")
    assert api.call("GET", "/v1/parts").json()["code"] == "token-missing"
    bad = api.call("GET", "/v1/parts", headers={"Authorization": "Basic abc"})
    assert bad.status_code == 401 and bad.json()["code"] == "token-malformed"
    unknown = api.call("GET", "/v1/parts", "pv_brand_" + "x" * 43)
    assert unknown.status_code == 401 and unknown.json()["code"] == "token-invalid"
    assert unknown.headers["content-type"].startswith("application/problem+json")
    token_id = api.ok("GET", "/v1/me", token)["token_id"]
    revoked = api.ok("DELETE", f"/v1/tokens/{token_id}", token)
    assert revoked["revoked_at"] is not None
    after = api.call("GET", "/v1/parts", token)
    assert after.status_code == 401 and after.json()["code"] == "token-revoked"


def test_last_used_is_recorded(api):
    _, token = api.brand("Acme")
    assert api.ok("GET", "/v1/tokens", api.admin)[-1]["last_used_at"] is None
    api.ok("GET", "/v1/parts", token)
    rows = {r["display_prefix"]: r for r in api.ok("GET", "/v1/tokens", api.admin)}
    assert rows[token[:13]]["last_used_at"] is not None


def test_roles_are_enforced(api):
    _, brand_token = api.brand("Acme")
    shop_token = api.shop(brand_token)
    assert shop_token.startswith("pv_shop_")
    forbidden = api.call("POST", "/v1/brands", brand_token, json={"name": "Evil"})
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "wrong-role"
    assert (
        api.call("POST", "/v1/parts", shop_token, json={"sku": "A", "name": "a"}).status_code == 403
    )
    facility = api.call(
        "POST",
        "/v1/tokens",
        brand_token,
        json={"kind": "facility", "name": "f", "facility_id": "x"},
    )
    assert facility.status_code == 403


def test_brand_cannot_touch_another_brands_tokens_or_brand(api):
    brand_a, token_a = api.brand("Acme")
    brand_b, token_b = api.brand("Globex")
    b_token_id = api.ok("GET", "/v1/me", token_b)["token_id"]
    attempt = api.call("DELETE", f"/v1/tokens/{b_token_id}", token_a)
    assert attempt.status_code == 404
    assert api.call("GET", f"/v1/brands/{brand_b}", token_a).status_code == 404
    assert api.ok("GET", f"/v1/brands/{brand_a}", token_a)["name"] == "Acme"
    foreign = api.call(
        "POST", "/v1/tokens", token_a, json={"kind": "shop", "name": "s", "brand_id": brand_b}
    )
    assert foreign.status_code == 403
    assert api.call("GET", "/v1/parts", token_b).status_code == 200


def test_duplicate_brand_name_is_409_and_writes_nothing(api):
    api.brand("Acme")
    again = api.call("POST", "/v1/brands", api.admin, json={"name": "Acme"})
    assert again.status_code == 409 and again.json()["code"] == "brand-name-taken"
    assert [b["name"] for b in api.ok("GET", "/v1/brands", api.admin)] == ["Acme"]


def test_operator_token_for_unknown_brand_is_404(api):
    response = api.call(
        "POST",
        "/v1/tokens",
        api.admin,
        json={"kind": "brand", "name": "x", "brand_id": "brand_nope"},
    )
    assert response.status_code == 404
    assert len(api.ok("GET", "/v1/tokens", api.admin)) == 1
