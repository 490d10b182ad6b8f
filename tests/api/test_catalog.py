"""Parts, print profiles and the public catalog."""

from __future__ import annotations

PROFILE = {
    "process": "SLA",
    "material": "Tough 2000",
    "layer_height_mm": 0.05,
    "orientation": "45deg on XZ",
    "supports": "auto",
    "post_processing": ["IPA wash", "UV cure 60 min"],
    "tolerance_mm": 0.1,
    "notes": "clip faces up",
}


def test_part_lifecycle_and_profiles(api):
    _, token = api.brand("Acme")
    part = api.ok(
        "POST",
        "/v1/parts",
        token,
        json={"sku": "HNG-01", "name": "Hinge", "royalty_per_print_cents": 150},
    )
    assert part["status"] == "active" and part["current_profile_id"] is None
    profile = api.ok("POST", f"/v1/parts/{part['id']}/profiles", token, json=PROFILE)
    assert len(profile["profile_hash"]) == 64 and profile["process"] == "SLA"
    second = api.ok(
        "POST", f"/v1/parts/{part['id']}/profiles", token, json={**PROFILE, "layer_height_mm": 0.1}
    )
    assert second["profile_hash"] != profile["profile_hash"]
    assert api.ok("GET", f"/v1/parts/{part['id']}", token)["current_profile_id"] == second["id"]
    assert len(api.ok("GET", f"/v1/parts/{part['id']}/profiles", token)) == 2
    updated = api.ok("PATCH", f"/v1/parts/{part['id']}", token, json={"status": "discontinued"})
    assert updated["status"] == "discontinued" and updated["name"] == "Hinge"


def test_duplicate_sku_is_409_per_brand_only(api):
    _, token_a = api.brand("Acme")
    _, token_b = api.brand("Globex")
    api.ok("POST", "/v1/parts", token_a, json={"sku": "X1", "name": "x"})
    dup = api.call("POST", "/v1/parts", token_a, json={"sku": "X1", "name": "other"})
    assert dup.status_code == 409 and dup.json()["code"] == "sku-taken"
    api.ok("POST", "/v1/parts", token_b, json={"sku": "X1", "name": "x"})
    assert len(api.ok("GET", "/v1/parts", token_a)["items"]) == 1


def test_cross_tenant_reads_and_writes_are_404(api):
    _, token_a = api.brand("Acme")
    _, token_b = api.brand("Globex")
    part = api.ok("POST", "/v1/parts", token_a, json={"sku": "X1", "name": "x"})
    for method, path, body in [
        ("GET", f"/v1/parts/{part['id']}", None),
        ("PATCH", f"/v1/parts/{part['id']}", {"name": "stolen"}),
        ("GET", f"/v1/parts/{part['id']}/profiles", None),
        ("POST", f"/v1/parts/{part['id']}/profiles", PROFILE),
    ]:
        response = api.call(method, path, token_b, json=body)
        assert response.status_code == 404, (method, path)
        assert response.json()["code"] == "part-not-found"
    assert api.ok("GET", f"/v1/parts/{part['id']}", token_a)["name"] == "x"
    assert api.ok("GET", "/v1/parts", token_b)["items"] == []


def test_server_owned_fields_cannot_be_set(api):
    _, token = api.brand("Acme")
    for field, value in [
        ("id", "part_mine"),
        ("brand_id", "brand_x"),
        ("created_at", "2020-01-01T00:00:00Z"),
    ]:
        response = api.call(
            "POST", "/v1/parts", token, json={"sku": "A", "name": "a", field: value}
        )
        assert response.status_code == 422 and response.json()["code"] == "unknown-field"
    assert api.ok("GET", "/v1/parts", token)["items"] == []


def test_profile_validation(api):
    _, token = api.brand("Acme")
    part = api.ok("POST", "/v1/parts", token, json={"sku": "A", "name": "a"})
    path = f"/v1/parts/{part['id']}/profiles"
    cases = [
        ({**PROFILE, "process": "CNC"}, "invalid-field"),
        ({**PROFILE, "layer_height_mm": 5}, "invalid-field"),
        ({**PROFILE, "layer_height_mm": "thin"}, "invalid-field"),
        ({**PROFILE, "infill_percent": 20}, "profile-setting-not-for-process"),
        ({**PROFILE, "process": "FDM", "infill_percent": 101}, "invalid-field"),
    ]
    for body, code in cases:
        response = api.call("POST", path, token, json=body)
        assert response.status_code == 422, body
        assert response.json()["code"] == code
    assert api.ok("GET", path, token) == []
    fdm = api.ok(
        "POST",
        path,
        token,
        json={
            **PROFILE,
            "process": "FDM",
            "material": "PETG",
            "infill_percent": 40,
            "wall_count": 3,
            "layer_height_mm": 0.2,
        },
    )
    assert fdm["infill_percent"] == 40


def test_pagination_walks_every_part_once(api):
    _, token = api.brand("Acme")
    skus = {f"P-{i:02d}" for i in range(7)}
    for sku in skus:
        api.ok("POST", "/v1/parts", token, json={"sku": sku, "name": sku})
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = api.ok("GET", "/v1/parts", token, params=params)
        seen += [p["sku"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(skus)
    bad = api.call("GET", "/v1/parts", token, params={"cursor": "!!notacursor"})
    assert bad.status_code == 400 and bad.json()["code"] == "bad-cursor"


def test_public_catalog_shows_metadata_only(api):
    _, brand_token = api.brand("Acme")
    _, other_token = api.brand("Globex")
    shop = api.shop(brand_token)
    part = api.ok(
        "POST",
        "/v1/parts",
        brand_token,
        json={"sku": "HNG", "name": "Hinge", "royalty_per_print_cents": 99},
    )
    api.ok("POST", f"/v1/parts/{part['id']}/profiles", brand_token, json=PROFILE)
    api.ok(
        "POST", "/v1/parts", brand_token, json={"sku": "OLD", "name": "Old", "status": "withdrawn"}
    )
    api.ok("POST", "/v1/parts", other_token, json={"sku": "OTHER", "name": "Theirs"})
    page = api.ok("GET", "/v1/catalog", shop)
    assert [i["sku"] for i in page["items"]] == ["HNG"]
    item = page["items"][0]
    assert set(item) == {"sku", "name", "description", "status", "currency", "process", "material"}
    assert item["process"] == "SLA"
    assert api.ok("GET", "/v1/catalog/HNG", shop)["name"] == "Hinge"
    assert api.call("GET", "/v1/catalog/OLD", shop).status_code == 404
    assert api.call("GET", "/v1/catalog/OTHER", shop).status_code == 404
    assert api.call("GET", "/v1/parts", shop).status_code == 403
