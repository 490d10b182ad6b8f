"""Key-encryption keys (KEK): the interface every key ring provider implements.

A key ring wraps small secrets (per-revision data keys, signing private keys)
under its current KEK version and unwraps anything wrapped by any version it
still holds. `context` is bound as associated data: a blob wrapped for one
context never unwraps for another.

Providers: `local_keyring.LocalKeyRing` (a key file, the default) and
`kms_keyring.KmsKeyRing` (AWS KMS). `open_keyring(url)` picks one by URL:

* ``file:///abs/path/keyring.json``: a local key file, created on first use.
* ``kms://?alias=partvault-kek&key_id=...&region=...&endpoint_url=...``: AWS
  KMS; every parameter is optional (see `kms_keyring` for their meaning).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from inventory.errors import PartvaultError, Unavailable

T = TypeVar("T")


class KeyRingError(PartvaultError):
    """A blob could not be unwrapped, or the key ring itself is unusable.

    Never a client's fault (the blobs live in our database), hence 500.
    """

    status = 500
    title = "Key ring error"


class KeyRingUnavailable(Unavailable, KeyRingError):
    """The key service could not be reached (503); still a `KeyRingError`."""


class KeyRing(Protocol):
    def wrap(self, secret: bytes, context: bytes) -> bytes:
        """Wrap `secret` under the current KEK version; the blob names that version."""
        ...

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        """Recover a secret wrapped by any held version, or raise `KeyRingError`."""
        ...

    def rotate(self) -> str:
        """Add a new KEK version, make it current and return its id."""
        ...

    def current_version(self) -> str: ...

    def version_of(self, blob: bytes) -> str:
        """The KEK version that wrapped `blob` (to find data keys to re-wrap)."""
        ...


def rewrap(ring: KeyRing, blob: bytes, context: bytes) -> bytes:
    """`blob` wrapped under the ring's current version (unchanged if it already is).

    Rotation re-wraps data keys this way; designs are never re-encrypted.
    """
    if ring.version_of(blob) == ring.current_version():
        return blob
    return ring.wrap(ring.unwrap(blob, context), context)


def rewrap_rows(
    ring: KeyRing,
    rows: Iterable[T],
    attribute: str,
    context: Callable[[T], bytes],
) -> list[T]:
    """Re-wrap `row.<attribute>` of each row under the current version; return the rows changed.

    Used by `partvault keys rotate` for every kind of wrapped secret (data keys,
    signing keys, watermark keys): secrets move to the new KEK, nothing else does.
    """
    changed = []
    for row in rows:
        blob = getattr(row, attribute)
        if blob is None:
            continue
        wrapped = rewrap(ring, blob, context(row))
        if wrapped != blob:
            setattr(row, attribute, wrapped)
            changed.append(row)
    return changed


def open_keyring(url: str) -> KeyRing:
    """Build the key ring named by `url` (``file://`` or ``kms://``, see module doc).

    A malformed URL is a configuration error: `ValueError`.
    """
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path:
        from inventory.crypto.local_keyring import LocalKeyRing

        return LocalKeyRing(unquote(parts.path))
    if parts.scheme == "kms":
        from inventory.crypto.kms_keyring import KmsKeyRing

        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"alias", "key_id", "region", "endpoint_url"}
        if unknown or parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"unsupported kms:// URL parts: {sorted(unknown)}")
        return KmsKeyRing(
            alias=query.get("alias", "partvault-kek"),
            key_id=query.get("key_id"),
            region=query.get("region"),
            endpoint_url=query.get("endpoint_url"),
        )
    raise ValueError("key ring URL must be file:///abs/path or kms://?...")
