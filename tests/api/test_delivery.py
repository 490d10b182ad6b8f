"""A facility's copy: watermarked, Secure Content for its key only; limits; tracing leaks."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import sqlalchemy as sa
import trimesh
from api_helpers import register_bureau
from cryptography.hazmat.primitives.asymmetric import rsa
from lib3mf_driver import Lib3mfDriver

import watermark
from inventory.accounts import Brand, watermark_key
from inventory.errors import PartvaultError
from licensing.delivery import extract_mesh, open_secure_3mf


def _redeemed(world) -> dict:
    licence = world.licence(prints=2)
    return world.bureau.ok(
        "POST", f"/v1/licences/{licence['jti']}/redeem", json={"licence": licence["token"]}
    )


def _brand_key(world) -> bytes:
    services = world.api.client.app.state.services
    with services.transaction() as session:
        brand = session.get(Brand, world.brand_id)
        return watermark_key(services.keyring, brand)


def _download(world, serial: str):
    return world.bureau.call("GET", f"/v1/jobs/{serial}/design")


def _events(api, kind: str) -> int:
    engine = sa.create_engine(api.settings.database_url)
    with engine.connect() as conn:
        query = sa.text("SELECT count(*) FROM audit_entry WHERE event_type = :kind")
        count = conn.execute(query, {"kind": kind}).scalar_one()
    engine.dispose()
    return int(count)


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # no backend-specific SQL
def test_delivered_copy_carries_the_serial_and_opens_in_lib3mf(world, tmp_path, meshes_dir):
    job = _redeemed(world)
    response = _download(world, job["serial"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("model/3mf")
    opened = open_secure_3mf(io.BytesIO(response.content), world.bureau.wrap_key)
    vertices, faces, unit = extract_mesh(opened.model_xml)
    assert unit == "millimeter" and len(faces) >= 260
    marked = trimesh.Trimesh(vertices, faces, process=False)
    original = trimesh.load(meshes_dir / "20mm-xyz-cube.stl", force="mesh")
    assert np.allclose(marked.bounds, original.bounds, atol=0.02)
    found = watermark.detect(marked, _brand_key(world))
    assert found.found and found.serial == int(job["serial"], 16)
    profile = json.loads(opened.attachments["/Metadata/print_profile.json"])
    assert profile["process"] == "SLA" and profile["material"] == "Tough 2000"
    path = tmp_path / "delivered.3mf"
    path.write_bytes(response.content)
    lib_vertices, lib_faces, warnings = Lib3mfDriver().read_secure(
        path, world.bureau.id, world.bureau.wrap_key
    )
    assert warnings == 0
    assert np.allclose(lib_vertices, vertices, atol=1e-5) and np.array_equal(lib_faces, faces)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(PartvaultError):
        open_secure_3mf(io.BytesIO(response.content), stranger)


def test_download_limit_and_audit(world):
    job = _redeemed(world)
    limit = world.api.settings.max_downloads
    for _ in range(limit):
        assert _download(world, job["serial"]).status_code == 200
    refused = _download(world, job["serial"])
    assert refused.status_code == 403 and refused.json()["code"] == "download-limit-reached"
    assert _events(world.api, "licensing:print:downloaded") == limit
    assert world.bureau.ok("GET", f"/v1/jobs/{job['serial']}")["downloads"] == limit


def test_revocation_suspension_and_shredding_stop_downloads(world):
    job = _redeemed(world)
    licence = job["licence_jti"]
    world.api.ok("POST", f"/v1/licences/{licence}/revoke", world.brand, json={"reason": "leak"})
    revoked = _download(world, job["serial"])
    assert revoked.status_code == 403 and revoked.json()["code"] == "licence-revoked"
    job2 = _redeemed(world)
    cert = world.certification["id"]
    world.api.ok("POST", f"/v1/certifications/{cert}/suspend", world.brand, json={})
    suspended = _download(world, job2["serial"])
    assert suspended.status_code == 403 and suspended.json()["code"] == "certification-suspended"
    world.api.ok("POST", f"/v1/certifications/{cert}/reinstate", world.brand, json={})
    world.api.ok("DELETE", f"/v1/revisions/{world.revision['id']}", world.brand)
    gone = _download(world, job2["serial"])
    assert gone.status_code == 410 and gone.json()["code"] == "revision-shredded"
    assert world.bureau.ok("GET", f"/v1/jobs/{job2['serial']}")["downloads"] == 0


def test_other_facility_cannot_download(world):
    job = _redeemed(world)
    other = register_bureau(world.api, name="Other")
    assert other.call("GET", f"/v1/jobs/{job['serial']}/design").status_code == 404
    assert world.api.call("GET", f"/v1/jobs/{job['serial']}/design", world.brand).status_code == 403


def _stl_bytes(mesh: trimesh.Trimesh) -> bytes:
    return trimesh.exchange.stl.export_stl(mesh)


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # no backend-specific SQL
def test_trace_names_the_job_and_never_a_wrong_one(world, meshes_dir):
    job = _redeemed(world)
    response = _download(world, job["serial"])
    vertices, faces, _ = extract_mesh(
        open_secure_3mf(io.BytesIO(response.content), world.bureau.wrap_key).model_xml
    )
    leaked = trimesh.Trimesh(vertices, faces, process=False)
    leaked.apply_translation([12.5, -3, 7])  # a casual edit
    headers = {"content-type": "application/octet-stream"}
    traced = world.api.ok(
        "POST",
        "/v1/trace",
        world.brand,
        params={"filename": "leak.stl"},
        content=_stl_bytes(leaked),
        headers=headers,
    )
    assert traced["found"] is True and traced["serial"] == job["serial"]
    assert traced["facility_id"] == world.bureau.id and traced["licence_jti"] == job["licence_jti"]
    assert traced["p_value"] < 1e-9
    original = (meshes_dir / "20mm-xyz-cube.stl").read_bytes()
    clean = world.api.ok(
        "POST",
        "/v1/trace",
        world.brand,
        params={"filename": "cube.stl"},
        content=original,
        headers=headers,
    )
    assert clean["found"] is False and clean["serial"] is None
    _, other_brand = world.api.brand("Globex")
    foreign = world.api.ok(
        "POST",
        "/v1/trace",
        other_brand,
        params={"filename": "leak.stl"},
        content=_stl_bytes(leaked),
        headers=headers,
    )
    assert foreign["found"] is False
    assert _events(world.api, "watermark:trace:performed") == 3
