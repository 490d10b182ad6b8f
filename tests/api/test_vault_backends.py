"""The upload → download path on S3 (moto over HTTP) with a KMS key ring, and faults."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from api_helpers import Api
from litestar.testing import TestClient

from api.app import create_app
from api.bootstrap import prepare
from inventory.errors import Unavailable


@pytest.fixture
def s3_api(settings, moto_server) -> Iterator[Api]:
    bucket = f"pv-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    s3_settings = dataclasses.replace(
        settings,
        object_store_url=f"s3://{bucket}/vault?endpoint_url={moto_server}&region=us-east-1",
        keyring_url=f"kms://?alias=pv-{bucket}&region=us-east-1&endpoint_url={moto_server}",
    )
    admin = prepare(s3_settings)
    assert admin is not None
    with TestClient(app=create_app(s3_settings)) as client:
        yield Api(client=client, admin=admin, settings=s3_settings)


def _upload(api: Api, token: str, part_id: str, data: bytes) -> Any:
    return api.call(
        "POST",
        f"/v1/parts/{part_id}/revisions",
        token,
        params={"filename": "cube.stl"},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )


def _revisions(api: Api) -> int:
    engine = sa.create_engine(api.settings.database_url)
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM revision")).scalar_one()
    engine.dispose()
    return int(count)


def test_s3_and_kms_round_trip(s3_api, cube_stl, moto_server):
    _, token = s3_api.brand("Acme")
    part = s3_api.ok("POST", "/v1/parts", token, json={"sku": "C", "name": "cube"})
    revision = _upload(s3_api, token, part["id"], cube_stl).json()
    assert s3_api.ok("GET", "/ready")["checks"] == {
        "database": "ok",
        "object_store": "ok",
        "keyring": "ok",
    }
    store = s3_api.client.app.state.services.store
    [stored] = list(store.list("designs/"))
    ciphertext = b"".join(store.get(stored.key))
    assert cube_stl[100:140] not in ciphertext and len(ciphertext) > len(cube_stl)
    download = s3_api.call("GET", f"/v1/revisions/{revision['id']}/design", token)
    assert download.content == cube_stl


class FailingStore:
    """An object store that breaks after the first chunk of a write."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def put(self, key: str, chunks: Any) -> int:
        def broken() -> Iterator[bytes]:
            for index, chunk in enumerate(chunks):
                if index == 1:
                    raise Unavailable("the object store went away", code="object-store-unavailable")
                yield chunk

        return int(self.inner.put(key, broken()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_store_failure_mid_upload_is_503_and_leaves_nothing(api):
    _, token = api.brand("Acme")
    part = api.ok("POST", "/v1/parts", token, json={"sku": "C", "name": "big"})
    big = api.settings.data_dir.parent / "big.stl"
    import trimesh

    trimesh.creation.icosphere(subdivisions=6).export(big)  # ~80k faces, several MiB
    services = api.client.app.state.services
    services.store = FailingStore(services.store)
    response = _upload(api, token, part["id"], big.read_bytes())
    assert response.status_code == 503 and response.json()["code"] == "object-store-unavailable"
    assert _revisions(api) == 0
    assert list(services.store.inner.list("")) == []
    assert list((api.settings.data_dir / "spool").iterdir()) == []


def test_commit_failure_leaves_an_orphan_the_reconciler_removes(api, cube_stl):
    from datetime import timedelta

    from sqlalchemy.orm import Session

    from inventory.designs import reconcile

    _, token = api.brand("Acme")
    part = api.ok("POST", "/v1/parts", token, json={"sku": "C", "name": "cube"})

    def fail_revision_commits(session: Session) -> None:
        if session.in_nested_transaction():
            return  # only the outer COMMIT fails, after the object was written
        if any(type(obj).__name__ == "Revision" for obj in session.identity_map.values()):
            raise sa.exc.OperationalError("COMMIT", {}, Exception("connection lost"))

    sa.event.listen(Session, "before_commit", fail_revision_commits)
    try:
        response = _upload(api, token, part["id"], cube_stl)
    finally:
        sa.event.remove(Session, "before_commit", fail_revision_commits)
    assert response.status_code == 503 and response.json()["code"] == "database-unavailable"
    assert _revisions(api) == 0
    services = api.client.app.state.services
    assert len(list(services.store.list("designs/"))) == 1  # the orphan
    with services.transaction() as session:
        report = reconcile(session, services.store, grace=timedelta(0))
    assert len(report.orphans_removed) == 1 and report.missing_objects == []
    assert list(services.store.list("designs/")) == []
