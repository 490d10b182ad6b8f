"""The object store interface shared by the local-folder and S3 backends.

Keys are relative, ``/``-separated paths of safe characters (see `validate_key`).
Objects are write-once: `put` is a conditional create, so two processes can
never overwrite each other's objects, and a failed `put` leaves nothing behind.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from inventory.errors import Conflict, Invalid

MAX_KEY_LENGTH = 512
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime  # timezone-aware (UTC)


class ObjectStore(Protocol):
    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Create `key` from `chunks`; return bytes stored.

        Raises `ObjectExists` if the key exists, `Unavailable` if the store
        fails; any exception raised by `chunks` propagates unchanged. In every
        failure case no object and no temporary data remain.
        """
        ...

    def get(self, key: str) -> Iterator[bytes]:
        """Stream an object's bytes; `NotFound` (raised at call time) if missing."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key`; deleting a missing key is not an error."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order."""
        ...

    def check(self) -> None:
        """Readiness: return if the store is usable, else raise `Unavailable`."""
        ...


class ObjectExists(Conflict):
    """Conditional create lost: the key already holds an object (409)."""


def object_exists(key: str) -> ObjectExists:
    return ObjectExists(f"object {key!r} already exists", code="object-exists")


def new_object_key(prefix: str = "designs") -> str:
    """A fresh unguessable key, fanned out by its first byte: ``designs/3f/3fa9…``."""
    token = secrets.token_hex(16)
    return validate_key(f"{prefix}/{token[:2]}/{token}")


def validate_key(key: str) -> str:
    """Accept only keys that are safe as both S3 keys and relative file paths.

    Segments are ``[A-Za-z0-9._-]`` and may not start with a dot, so ``.``,
    ``..``, hidden and temporary names are impossible; no leading, trailing or
    doubled slash.
    """
    segments = key.split("/")
    if len(key) > MAX_KEY_LENGTH or not all(_SEGMENT.fullmatch(s) for s in segments):
        raise Invalid(f"invalid object key {key[:80]!r}", code="object-key-invalid")
    return key
