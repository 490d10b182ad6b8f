"""Object store in any S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2).

`put` buffers at most one part: objects smaller than `part_size` go up in a
single PutObject, larger ones as a multipart upload of `part_size` parts.
Both are conditional creates (``If-None-Match: *``), so concurrent writers
can never overwrite an object. On any failure, including an exception raised
by the chunk source, the multipart upload is aborted so no partial object or
billable orphan parts remain (best effort when the store itself is down:
configure a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` too).
Store failures become `Unavailable` (503, code ``object-store-unavailable``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from inventory.errors import NotFound, PayloadTooLarge, Unavailable
from inventory.storage.base import ObjectInfo, object_exists, validate_key

DEFAULT_PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20
MAX_PARTS = 10_000  # S3's limit: 78 GiB with 8 MiB parts
READ_CHUNK = 1 << 20
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class S3Store:
    """`ObjectStore` on `bucket`, with every key below `prefix`."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        max_attempts: int = 3,
        connect_timeout: float = 5,
        read_timeout: float = 60,
        client: Any | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError("S3 parts must be at least 5 MiB")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = part_size
        config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._s3 = client or boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        name = self._name(key)
        parts = _parts(chunks, self.part_size)
        first = next(parts)
        if len(first) < self.part_size:
            with self._errors(key):
                self._s3.put_object(Bucket=self.bucket, Key=name, Body=first, IfNoneMatch="*")
            return len(first)
        return self._multipart(key, name, first, parts)

    def get(self, key: str) -> Iterator[bytes]:
        with self._errors(key):
            body = self._s3.get_object(Bucket=self.bucket, Key=self._name(key))["Body"]
        return self._stream(key, body)

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._s3.delete_object(Bucket=self.bucket, Key=self._name(key))

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self._s3.head_object(Bucket=self.bucket, Key=self._name(key))
        except NotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        with self._errors(prefix):
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self.prefix) :]
                    yield ObjectInfo(key, int(obj["Size"]), obj["LastModified"])

    def check(self) -> None:
        try:
            with self._errors(""):
                self._s3.head_bucket(Bucket=self.bucket)
        except NotFound:
            raise Unavailable(
                f"bucket {self.bucket!r} does not exist", code="object-store-bucket-missing"
            ) from None

    def _multipart(self, key: str, name: str, first: bytes, rest: Iterator[bytes]) -> int:
        with self._errors(key):
            upload_id = self._s3.create_multipart_upload(Bucket=self.bucket, Key=name)["UploadId"]
        try:
            return self._upload_parts(key, name, upload_id, first, rest)
        except BaseException:
            self._abort(name, upload_id)
            raise

    def _upload_parts(
        self, key: str, name: str, upload_id: str, first: bytes, rest: Iterator[bytes]
    ) -> int:
        done: list[dict[str, Any]] = []
        size = 0
        for number, body in enumerate(_prepend(first, rest), start=1):
            if number > MAX_PARTS:
                raise PayloadTooLarge(
                    f"object exceeds {MAX_PARTS} parts of {self.part_size} bytes",
                    code="object-too-large",
                )
            with self._errors(key):
                resp = self._s3.upload_part(
                    Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=body
                )
            done.append({"PartNumber": number, "ETag": resp["ETag"]})
            size += len(body)
        with self._errors(key):
            self._s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": done},
                IfNoneMatch="*",
            )
        return size

    def _abort(self, name: str, upload_id: str) -> None:
        """Best effort: the store may be the thing that failed."""
        with contextlib.suppress(ClientError, BotoCoreError):
            self._s3.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)

    def _stream(self, key: str, body: Any) -> Iterator[bytes]:
        with contextlib.closing(body), self._errors(key):
            yield from body.iter_chunks(READ_CHUNK)

    def _name(self, key: str) -> str:
        return self.prefix + validate_key(key)

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Map S3 errors: 412 → `ObjectExists`, missing → `NotFound`, rest → `Unavailable`."""
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _CONFLICT_CODES:
                raise object_exists(key) from None
            if code in _MISSING_CODES:
                raise NotFound(f"object {key!r} not found", code="object-not-found") from None
            raise Unavailable(
                f"object store request failed ({code})", code="object-store-unavailable"
            ) from None
        except BotoCoreError as exc:
            raise Unavailable(
                f"object store unreachable ({type(exc).__name__})", code="object-store-unavailable"
            ) from None


def _parts(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Re-cut the stream into `size`-byte parts (the last may be shorter, even empty)."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    yield bytes(buf)


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    for part in rest:
        if part:
            yield part
