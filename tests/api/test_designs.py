"""Upload, measure, store encrypted, download, shred — over the API on both databases."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import BAD, mesh_files


def _upload(api, token, part_id, data: bytes, filename: str, **params):
    return api.call(
        "POST",
        f"/v1/parts/{part_id}/revisions",
        token,
        params={"filename": filename, **params},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )


def _stored_objects(api) -> list[Path]:
    root = api.settings.data_dir / "objects"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _row_count(api, table: str) -> int:
    engine = sa.create_engine(api.settings.database_url)
    with engine.connect() as conn:
        count = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    engine.dispose()
    return int(count)


def test_upload_measures_encrypts_and_round_trips(api, cube_stl):
    _, token = api.brand("Acme")
    part = api.ok("POST", "/v1/parts", token, json={"sku": "CUBE", "name": "cube"})
    response = _upload(api, token, part["id"], cube_stl, "20mm-xyz-cube.stl")
    assert response.status_code == 201, response.text
    revision = response.json()
    assert revision["number"] == 1 and revision["format"] == "stl"
    assert revision["sha256"] == hashlib.sha256(cube_stl).hexdigest()
    geometry = revision["geometry"]
    assert geometry["triangles"] == 260 and geometry["watertight"] is True
    assert geometry["size_mm"] == pytest.approx([20, 20, 20], abs=0.01)
    objects = _stored_objects(api)
    assert len(objects) == 1
    stored = objects[0].read_bytes()
    assert all(cube_stl[i : i + 16] not in stored for i in range(0, len(cube_stl) - 16, 97))
    download = api.call("GET", f"/v1/revisions/{revision['id']}/design", token)
    assert download.status_code == 200
    assert download.content == cube_stl
    assert download.headers["x-content-sha256"] == revision["sha256"]
    second = _upload(api, token, part["id"], cube_stl, "cube.stl").json()
    assert second["number"] == 2
    listed = api.ok("GET", f"/v1/parts/{part['id']}/revisions", token)
    assert [r["number"] for r in listed] == [1, 2]


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # no backend-specific SQL
@pytest.mark.parametrize("path", mesh_files(), ids=lambda p: p.name)
def test_every_fixture_mesh_ingests(api, path):
    _, token = api.brand("Acme")
    part = api.ok("POST", "/v1/parts", token, json={"sku": "P", "name": "p"})
    response = _upload(api, token, part["id"], path.read_bytes(), path.name)
    assert response.status_code == 201, response.text
    assert response.json()["geometry"]["triangles"] > 0


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # no backend-specific SQL
@pytest.mark.parametrize("path", sorted(BAD.iterdir()), ids=lambda p: p.name)
def test_bad_fixtures_are_refused_and_leave_nothing(api, path):
    _, token = api.brand("Acme")
    part = api.ok("POST", "/v1/parts", token, json={"sku": "P", "name": "p"})
    response = _upload(api, token, part["id"], path.read_bytes(), path.name)
    assert response.status_code == 422, response.text
    body = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert body["code"] not in ("invalid-field", "unprocessable-content")
    assert _stored_objects(api) == []
    assert _row_count(api, "revision") == 0
    assert list((api.settings.data_dir / "spool").iterdir()) == []


def test_oversized_upload_is_413_and_leaves_nothing(api, settings, cube_stl):
    _, token = api.brand("Acme")
    part = api.ok("POST", "/v1/parts", token, json={"sku": "P", "name": "p"})
    big = cube_stl * 3
    limited = api.settings.__class__(**{**api.settings.__dict__, "max_upload_bytes": len(big) - 1})
    api.client.app.state.services.settings = limited
    response = _upload(api, token, part["id"], big, "big.stl")
    assert response.status_code == 413 and response.json()["code"] == "design-too-large"
    assert _stored_objects(api) == [] and _row_count(api, "revision") == 0


def test_other_brands_cannot_see_upload_or_download(api, cube_stl):
    _, token_a = api.brand("Acme")
    _, token_b = api.brand("Globex")
    part = api.ok("POST", "/v1/parts", token_a, json={"sku": "P", "name": "p"})
    revision = _upload(api, token_a, part["id"], cube_stl, "c.stl").json()
    assert _upload(api, token_b, part["id"], cube_stl, "c.stl").status_code == 404
    for path in (f"/v1/revisions/{revision['id']}", f"/v1/revisions/{revision['id']}/design"):
        assert api.call("GET", path, token_b).status_code == 404
    assert api.call("DELETE", f"/v1/revisions/{revision['id']}", token_b).status_code == 404
    shop = api.shop(token_a)
    assert api.call("GET", f"/v1/revisions/{revision['id']}/design", shop).status_code == 403


def test_shredding_destroys_the_key_and_download_is_410(api, cube_stl):
    _, token = api.brand("Acme")
    part = api.ok("POST", "/v1/parts", token, json={"sku": "P", "name": "p"})
    revision = _upload(api, token, part["id"], cube_stl, "c.stl").json()
    shredded = api.ok("DELETE", f"/v1/revisions/{revision['id']}", token)
    assert shredded["shredded_at"] is not None
    gone = api.call("GET", f"/v1/revisions/{revision['id']}/design", token)
    assert gone.status_code == 410 and gone.json()["code"] == "revision-shredded"
    engine = sa.create_engine(api.settings.database_url)
    with engine.connect() as conn:
        key = conn.execute(sa.text("SELECT wrapped_key FROM revision")).scalar_one()
        events = (
            conn.execute(sa.text('SELECT event_type FROM audit_entry ORDER BY "index"'))
            .scalars()
            .all()
        )
    engine.dispose()
    assert key is None
    assert events == [
        "inventory:part:created",
        "inventory:revision:uploaded",
        "inventory:revision:shredded",
    ]
    assert _stored_objects(api) == []
