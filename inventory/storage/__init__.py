"""Object storage for sealed designs: a local folder or an S3-compatible bucket.

`open_store(url)` picks the backend:

* ``file:///abs/path``: `LocalStore` in that folder.
* ``s3://bucket/optional/prefix?endpoint_url=http://minio:9000&region=eu-central-1&part_size=8388608``:
  `S3Store`; credentials come from the usual AWS environment/profile chain.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from inventory.storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectStore,
    new_object_key,
    validate_key,
)
from inventory.storage.local import LocalStore

__all__ = [
    "LocalStore",
    "ObjectExists",
    "ObjectInfo",
    "ObjectStore",
    "new_object_key",
    "open_store",
    "validate_key",
]

_S3_OPTIONS = {"endpoint_url", "region", "part_size"}


def open_store(url: str) -> ObjectStore:
    """Build the object store named by `url` (see module docstring)."""
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path.startswith("/"):
        return LocalStore(unquote(parts.path))
    if parts.scheme == "s3" and parts.netloc:
        from inventory.storage.s3 import DEFAULT_PART_SIZE, S3Store

        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if set(query) - _S3_OPTIONS:
            raise ValueError(f"unknown s3:// options {sorted(set(query) - _S3_OPTIONS)}")
        return S3Store(
            parts.netloc,
            parts.path,
            endpoint_url=query.get("endpoint_url"),
            region=query.get("region"),
            part_size=int(query.get("part_size", DEFAULT_PART_SIZE)),
        )
    raise ValueError("object store URL must be file:///abs/path or s3://bucket/prefix")
