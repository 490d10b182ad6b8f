"""Facilities, certification, licences and redemption over the API."""

from __future__ import annotations

import sqlalchemy as sa
from api_helpers import register_bureau

from inventory.db import utcnow
from licensing.tokens import keys_from_jwks, make_proof, verify_offline, verify_revocation_list


def _count(api, sql: str) -> int:
    engine = sa.create_engine(api.settings.database_url)
    with engine.connect() as conn:
        value = conn.execute(sa.text(sql)).scalar_one()
    engine.dispose()
    return int(value)


def _proof(world, path: str) -> str:
    """One DPoP proof of the bureau for POST `path`, to send (and resend) by hand."""
    return make_proof(
        world.bureau.pop_key,
        htm="POST",
        htu=world.api.settings.public_url + path,
        access_token=world.bureau.token,
        now=utcnow(),
    )


def test_licence_is_signed_and_verifies_offline(world):
    licence = world.licence(prints=2)
    assert licence["prints_remaining"] == 2 and licence["token"].count(".") == 2
    jwks = world.api.ok("GET", "/.well-known/jwks.json")
    claims = verify_offline(licence["token"], jwks, now=utcnow())
    assert claims.jti == licence["jti"] and claims.prints == 2
    assert claims.facility_id == world.bureau.id
    assert claims.design_sha256 == world.revision["sha256"]


def test_redeem_counts_until_exhausted(world):
    licence = world.licence(prints=2)
    path = f"/v1/licences/{licence['jti']}/redeem"
    serials = set()
    for _ in range(2):
        job = world.bureau.ok("POST", path, json={"licence": licence["token"]})
        assert job["status"] == "redeemed" and len(job["serial"]) == 16
        serials.add(job["serial"])
    assert len(serials) == 2
    third = world.bureau.call("POST", path, json={"licence": licence["token"]})
    assert third.status_code == 409 and third.json()["code"] == "licence-exhausted"
    assert world.api.ok("GET", f"/v1/licences/{licence['jti']}", world.brand)["prints_used"] == 2
    assert _count(world.api, "SELECT count(*) FROM print_job") == 2
    redeemed = "SELECT count(*) FROM audit_entry WHERE event_type = 'licensing:print:redeemed'"
    assert _count(world.api, redeemed) == 2


def test_idempotent_redeem_counts_once(world):
    licence = world.licence(prints=3)
    path = f"/v1/licences/{licence['jti']}/redeem"
    headers = {"Idempotency-Key": "redeem-once-1"}
    first = world.bureau.call("POST", path, json={"licence": licence["token"]}, headers=headers)
    again = world.bureau.call("POST", path, json={"licence": licence["token"]}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and again.headers["idempotent-replayed"] == "true"
    assert world.api.ok("GET", f"/v1/licences/{licence['jti']}", world.brand)["prints_used"] == 1


def test_idempotent_redeem_refusal_is_stored_and_replayed(world):
    licence = world.licence(prints=1)
    path = f"/v1/licences/{licence['jti']}/redeem"
    body = {"licence": licence["token"]}
    world.bureau.ok("POST", path, json=body)
    headers = {"Idempotency-Key": "redeem-late-1"}
    first = world.bureau.call("POST", path, json=body, headers=headers)
    again = world.bureau.call("POST", path, json=body, headers=headers)
    assert first.status_code == again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert (
        again.headers["idempotent-replayed"] == "true"
        and "idempotent-replayed" not in first.headers
    )
    assert again.content == first.content  # the very document, request id included
    assert first.json()["code"] == "licence-exhausted"
    other = world.bureau.call(
        "POST", path, json={"licence": world.licence(prints=1)["token"]}, headers=headers
    )
    assert other.status_code == 422 and other.json()["code"] == "idempotency-key-reused"


def test_idempotent_issue_signs_once(world):
    body = {
        "facility_id": world.bureau.id,
        "revision_id": world.revision["id"],
        "prints": 2,
        "expires_at": "2099-01-01T00:00:00Z",
    }
    headers = {"Idempotency-Key": "issue-once-1"}
    first = world.api.call("POST", "/v1/licences", world.brand, json=body, headers=headers)
    again = world.api.call("POST", "/v1/licences", world.brand, json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    assert _count(world.api, "SELECT count(*) FROM licence") == 1
    issued = "SELECT count(*) FROM audit_entry WHERE event_type = 'licensing:licence:issued'"
    assert _count(world.api, issued) == 1


def test_revoked_and_expired_licences_are_403(world):
    licence = world.licence(prints=3)
    world.api.ok(
        "POST", f"/v1/licences/{licence['jti']}/revoke", world.brand, json={"reason": "leak"}
    )
    refused = world.bureau.call(
        "POST", f"/v1/licences/{licence['jti']}/redeem", json={"licence": licence["token"]}
    )
    assert refused.status_code == 403 and refused.json()["code"] == "licence-revoked"
    crl = world.api.call("GET", "/v1/licences/revoked")
    keys = keys_from_jwks(world.api.ok("GET", "/.well-known/jwks.json"))
    revoked = verify_revocation_list(
        crl.text,
        key_lookup=keys.get,
        issuer=world.api.settings.public_url.rstrip("/"),
        now=utcnow(),
    )
    assert revoked.is_revoked(licence["jti"])
    assert world.api.ok("GET", f"/v1/licences/{licence['jti']}", world.brand)["prints_used"] == 0


def test_suspended_certification_stops_issue_and_redeem(world):
    licence = world.licence(prints=3)
    cert = world.certification["id"]
    world.api.ok(
        "POST", f"/v1/certifications/{cert}/suspend", world.brand, json={"reason": "audit"}
    )
    refused = world.bureau.call(
        "POST", f"/v1/licences/{licence['jti']}/redeem", json={"licence": licence["token"]}
    )
    assert refused.status_code == 403 and refused.json()["code"] == "certification-suspended"
    body = {
        "facility_id": world.bureau.id,
        "revision_id": world.revision["id"],
        "prints": 1,
        "expires_at": "2099-01-01T00:00:00Z",
    }
    issue = world.api.call("POST", "/v1/licences", world.brand, json=body)
    assert issue.status_code == 403
    world.api.ok("POST", f"/v1/certifications/{cert}/reinstate", world.brand, json={})
    world.bureau.ok(
        "POST", f"/v1/licences/{licence['jti']}/redeem", json={"licence": licence["token"]}
    )


def test_uncertified_facility_gets_no_licence(world):
    other = register_bureau(world.api, name="Uncertified")
    body = {
        "facility_id": other.id,
        "revision_id": world.revision["id"],
        "prints": 1,
        "expires_at": "2099-01-01T00:00:00Z",
    }
    refused = world.api.call("POST", "/v1/licences", world.brand, json=body)
    assert refused.status_code == 403 and refused.json()["code"] == "not-certified"
    assert _count(world.api, "SELECT count(*) FROM licence") == 0


def test_another_facility_cannot_redeem_or_see(world):
    licence = world.licence(prints=3)
    thief = register_bureau(world.api, name="Thief")
    stolen = thief.call(
        "POST", f"/v1/licences/{licence['jti']}/redeem", json={"licence": licence["token"]}
    )
    assert stolen.status_code == 404
    job = world.bureau.ok(
        "POST", f"/v1/licences/{licence['jti']}/redeem", json={"licence": licence["token"]}
    )
    assert thief.call("GET", f"/v1/jobs/{job['serial']}").status_code == 404
    assert thief.ok("GET", "/v1/jobs") == []
    assert world.api.ok("GET", f"/v1/licences/{licence['jti']}", world.brand)["prints_used"] == 1


def test_facility_token_without_proof_is_refused(world):
    licence = world.licence(prints=1)
    path = f"/v1/licences/{licence['jti']}/redeem"
    bare = world.api.call("POST", path, world.bureau.token, json={"licence": licence["token"]})
    assert bare.status_code == 401 and bare.json()["code"] == "dpop-missing"
    headers = {"DPoP": _proof(world, path)}
    first = world.api.call(
        "POST", path, world.bureau.token, json={"licence": licence["token"]}, headers=headers
    )
    assert first.status_code == 201
    replay = world.api.call(
        "POST", path, world.bureau.token, json={"licence": licence["token"]}, headers=headers
    )
    assert replay.status_code == 401 and replay.json()["code"] == "dpop-replayed"


def test_refused_redemption_still_spends_its_proof(world):
    """Authentication and counting share a transaction; a 409 rolls it back, but
    the proof it presented must stay spent (no replay once a reprint is allowed)."""
    licence = world.licence(prints=1)
    path = f"/v1/licences/{licence['jti']}/redeem"
    world.bureau.ok("POST", path, json={"licence": licence["token"]})
    body, headers = {"licence": licence["token"]}, {"DPoP": _proof(world, path)}
    refused = world.api.call("POST", path, world.bureau.token, json=body, headers=headers)
    assert refused.status_code == 409 and refused.json()["code"] == "licence-exhausted"
    replayed = world.api.call("POST", path, world.bureau.token, json=body, headers=headers)
    assert replayed.status_code == 401 and replayed.json()["code"] == "dpop-replayed"
    assert _count(world.api, "SELECT count(*) FROM print_job") == 1


def test_other_brand_cannot_read_revoke_or_count(world):
    licence = world.licence(prints=3)
    _, other = world.api.brand("Globex")
    assert world.api.call("GET", f"/v1/licences/{licence['jti']}", other).status_code == 404
    revoke = world.api.call("POST", f"/v1/licences/{licence['jti']}/revoke", other, json={})
    assert revoke.status_code == 404
    assert world.api.ok("GET", "/v1/licences", other) == []
    assert world.api.ok("GET", "/v1/jobs", other) == []


def test_failed_print_refund_follows_brand_policy(world):
    world.api.ok(
        "POST", f"/v1/brands/{world.brand_id}/policy", world.brand, json={"reprints_per_licence": 1}
    )
    licence = world.licence(prints=1)
    path = f"/v1/licences/{licence['jti']}/redeem"
    job = world.bureau.ok("POST", path, json={"licence": licence["token"]})
    no_reason = world.bureau.call(
        "POST", f"/v1/jobs/{job['serial']}/report", json={"status": "failed"}
    )
    assert no_reason.status_code == 422 and no_reason.json()["code"] == "failure-reason-required"
    failed = world.bureau.ok(
        "POST",
        f"/v1/jobs/{job['serial']}/report",
        json={"status": "failed", "reason": "warped", "measurements": {"warp_mm": 0.8}},
    )
    assert failed["refunded"] is True
    again = world.bureau.call(
        "POST", f"/v1/jobs/{job['serial']}/report", json={"status": "printed"}
    )
    assert again.status_code == 409
    second = world.bureau.ok("POST", path, json={"licence": licence["token"]})
    failed2 = world.bureau.ok(
        "POST",
        f"/v1/jobs/{second['serial']}/report",
        json={"status": "failed", "reason": "support collapse"},
    )
    assert failed2["refunded"] is False
    exhausted = world.bureau.call("POST", path, json={"licence": licence["token"]})
    assert exhausted.status_code == 409


def test_facility_registration_rules(api):
    from api_helpers import facility_body, facility_keys

    _, _, pop_pem, wrap_pem = facility_keys()
    small = facility_keys(rsa_bits=1024)
    bad_rsa = api.call("POST", "/v1/facilities", api.admin, json=facility_body(pop_pem, small[3]))
    assert bad_rsa.status_code == 422 and bad_rsa.json()["code"] == "facility-rsa-too-small"
    swapped = api.call("POST", "/v1/facilities", api.admin, json=facility_body(wrap_pem, pop_pem))
    assert swapped.status_code == 422 and swapped.json()["code"] == "facility-key-type"
    pending = api.ok("POST", "/v1/facilities/applications", json=facility_body(pop_pem, wrap_pem))
    assert pending["status"] == "pending"
    _, brand = api.brand("Acme")
    assert pending["id"] not in [f["id"] for f in api.ok("GET", "/v1/facilities", brand)]
    approved = api.ok("POST", f"/v1/facilities/{pending['id']}/approve", api.admin)
    assert approved["facility"]["status"] == "approved" and approved["token"].startswith("pv_fac_")
    assert _count(api, "SELECT count(*) FROM facility") == 1
