"""Every bad request answers precise problem+json and writes nothing."""

from __future__ import annotations

import pytest


def _problem(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"].endswith("/" + code) and body["title"] and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_malformed_json(api):
    _, token = api.brand("Acme")
    response = api.call(
        "POST",
        "/v1/parts",
        token,
        content=b'{"sku": "A", "name":',
        headers={"content-type": "application/json"},
    )
    _problem(response, 400, "malformed-json")
    assert api.ok("GET", "/v1/parts", token)["items"] == []


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # no backend-specific SQL
@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"sku": "A", "name": "a", "colour": "red"}, "unknown-field"),
        ({"sku": 12, "name": "a"}, "invalid-field"),
        ({"sku": "A"}, "invalid-field"),
        ({"sku": "../etc", "name": "a"}, "invalid-field"),
        ({"sku": "A", "name": "a", "royalty_per_print_cents": -1}, "invalid-field"),
        ({"sku": "A", "name": "a", "currency": "euro"}, "invalid-field"),
        ({"sku": "A", "name": ""}, "invalid-field"),
    ],
)
def test_wrong_shapes_are_422(api, body, code):
    _, token = api.brand("Acme")
    _problem(api.call("POST", "/v1/parts", token, json=body), 422, code)
    assert api.ok("GET", "/v1/parts", token)["items"] == []


def test_oversized_body_is_413(api):
    _, token = api.brand("Acme")
    huge = (
        b'{"sku": "A", "name": "a", "description": "'
        + b"x" * (api.settings.max_json_bytes + 10)
        + b'"}'
    )
    response = api.call(
        "POST", "/v1/parts", token, content=huge, headers={"content-type": "application/json"}
    )
    _problem(response, 413, "payload-too-large")
    assert api.ok("GET", "/v1/parts", token)["items"] == []


def test_unknown_route_and_method(api):
    _problem(api.call("GET", "/v1/nothing-here"), 404, "not-found")
    _problem(api.call("PUT", "/health"), 405, "method-not-allowed")


def test_request_id_is_echoed_when_well_formed(api):
    response = api.call("GET", "/health", headers={"X-Request-ID": "abc12345-req"})
    assert response.headers["x-request-id"] == "abc12345-req"
    injected = api.call("GET", "/health", headers={"X-Request-ID": "bad\nid"})
    assert injected.headers["x-request-id"] != "bad\nid"


def test_health_ready_and_schema(api):
    assert api.ok("GET", "/health") == {"status": "ok", "checks": {}}
    ready = api.ok("GET", "/ready")
    assert ready["status"] == "ok" and ready["checks"]["database"] == "ok"
    schema = api.ok("GET", "/schema/openapi.json")
    assert "/v1/parts" in schema["paths"]
    page = api.call("GET", "/schema")
    assert page.status_code == 200 and "html" in page.headers["content-type"]
