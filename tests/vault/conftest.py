"""Vault fixtures: object stores on both backends, S3 buckets on moto over HTTP."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from inventory.storage import ObjectStore
from inventory.storage.local import LocalStore
from inventory.storage.s3 import MIN_PART_SIZE, S3Store

REGION = "us-east-1"
PART = MIN_PART_SIZE  # smallest legal part: multipart tests stay fast


@pytest.fixture(scope="session")
def s3_client(moto_server: str) -> Any:
    """One boto3 client for the session (creating clients costs ~0.3 s each)."""
    return boto3.client("s3", region_name=REGION, endpoint_url=moto_server)


@pytest.fixture
def bucket(s3_client: Any) -> str:
    name = f"pv-test-{secrets.token_hex(6)}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same contract runs against a folder and against S3 (moto over HTTP)."""
    if request.param == "local":
        return LocalStore(tmp_path / "objects")
    client = request.getfixturevalue("s3_client")
    return S3Store(request.getfixturevalue("bucket"), "designs", part_size=PART, client=client)


def _leftovers(store: ObjectStore) -> list[str]:
    if isinstance(store, LocalStore):
        return [str(p) for p in store.root.rglob("*") if p.is_file()] if store.root.exists() else []
    assert isinstance(store, S3Store)
    client = store._s3
    uploads = client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    objects = client.list_objects_v2(Bucket=store.bucket).get("Contents", [])
    return [u["Key"] for u in uploads] + [o["Key"] for o in objects]


def _failing_after(chunks: Iterable[bytes], count: int, exc: Exception) -> Iterator[bytes]:
    """Yield `count` chunks, then raise `exc` (a source dying mid-upload)."""
    for i, chunk in enumerate(chunks):
        if i == count:
            raise exc
        yield chunk


@pytest.fixture
def leftovers() -> Callable[[ObjectStore], list[str]]:
    """Anything a failed put could have left: files (incl. temp files), objects, or
    pending multipart uploads."""
    return _leftovers


@pytest.fixture
def failing_after() -> Callable[[Iterable[bytes], int, Exception], Iterator[bytes]]:
    return _failing_after


class FaultyS3:
    """A second HTTP front on the same in-process moto backend that fails UploadPart
    from part `fail_from_part` on with HTTP 500, while every other call works."""

    def __init__(self, fail_from_part: int) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)
        self.fail_from_part = fail_from_part
        self.failures = 0
        self._server = make_server(
            "127.0.0.1", 0, self._wrap(app), threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"

    def _wrap(self, app: Callable[..., Any]) -> Callable[..., Any]:
        def faulty(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            query = environ.get("QUERY_STRING", "")
            part = [
                int(v)
                for k, _, v in (p.partition("=") for p in query.split("&"))
                if k == "partNumber" and v.isdigit()
            ]
            if environ["REQUEST_METHOD"] == "PUT" and part and part[0] >= self.fail_from_part:
                self.failures += 1
                environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                start_response("500 Internal Server Error", [("Content-Type", "application/xml")])
                return [b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"]
            return app(environ, start_response)

        return faulty

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join()


@pytest.fixture
def faulty_s3(moto_server: str) -> Iterator[FaultyS3]:
    server = FaultyS3(fail_from_part=2)
    try:
        yield server
    finally:
        server.close()
