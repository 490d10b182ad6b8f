"""A key ring kept in a local JSON key file (the default provider).

File (mode 0600; its directory is created 0700 when missing)::

    {"format": "partvault-keyring/1", "current": "v2",
     "keys": {"v1": {"key": "<base64 32 bytes>", "created": "<ISO 8601>"}, ...}}

A file that group or others could read or write is refused. Rotation takes an
exclusive `flock` on ``<file>.lock``, adds ``v<n+1>`` and replaces the file
atomically; other processes notice the change (inode/mtime/size) on their
next call and reload, so all processes wrap under the newest version.

Wrapped blob::

    b"PVL\\x01" ‖ u8 len(version) ‖ version (ASCII) ‖ nonce (12) ‖ AES-256-GCM(secret)

with AAD = everything before the nonce ‖ `context`.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from inventory.crypto.keyring import KeyRingError

FORMAT = "partvault-keyring/1"
MAGIC = b"PVL\x01"
NONCE_SIZE = 12
KEK_SIZE = 32
_VERSION = re.compile(r"v[1-9][0-9]{0,8}")


class LocalKeyRing:
    """`KeyRing` backed by a JSON key file at `path`, created on first use."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._signature: tuple[int, int, int] | None = None
        self._current = ""
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def wrap(self, secret: bytes, context: bytes) -> bytes:
        self._refresh()
        version = self._current
        header = MAGIC + bytes([len(version)]) + version.encode("ascii")
        nonce = os.urandom(NONCE_SIZE)
        return header + nonce + AESGCM(self._keys[version]).encrypt(nonce, secret, header + context)

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        version, header = _parse(blob)
        self._refresh()
        if version not in self._keys:
            raise KeyRingError(f"unknown key version {version!r}", code="key-version-unknown")
        nonce = blob[len(header) : len(header) + NONCE_SIZE]
        body = blob[len(header) + NONCE_SIZE :]
        try:
            return AESGCM(self._keys[version]).decrypt(nonce, body, header + context)
        except InvalidTag:
            raise KeyRingError(
                "wrapped key failed authentication", code="key-unwrap-failed"
            ) from None

    def rotate(self) -> str:
        with self._locked():
            doc = self._read() if self.path.exists() else _new_document()
            version = f"v{max((int(v[1:]) for v in doc['keys']), default=0) + 1}"
            doc["keys"][version] = _new_entry()
            doc["current"] = version
            self._write(doc, replace=True)
        self._signature = None
        return version

    def current_version(self) -> str:
        self._refresh()
        return self._current

    def version_of(self, blob: bytes) -> str:
        return _parse(blob)[0]

    def _refresh(self) -> None:
        """Load the file if it changed since the last call; create it if missing."""
        with self._lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self._create()
                st = os.stat(self.path)
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
            if signature != self._signature:
                doc = self._read()
                self._keys = {v: base64.b64decode(e["key"]) for v, e in doc["keys"].items()}
                self._current = doc["current"]
                self._signature = signature

    def _create(self) -> None:
        with self._locked():
            if not self.path.exists():
                self._write(_new_document(), replace=False)

    def _read(self) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise KeyRingError(
                f"cannot open key file: {exc.strerror}", code="keyring-unreadable"
            ) from None
        with os.fdopen(fd, "rb") as f:
            if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
                raise KeyRingError(
                    f"key file {self.path} is accessible by group or others; chmod 600 it",
                    code="keyring-file-permissions",
                )
            return _validate(f.read())

    def _write(self, doc: dict[str, Any], *, replace: bool) -> None:
        """Write `doc` atomically (temp file, fsync, link or replace, fsync dir)."""
        tmp = self.path.with_name(f".{self.path.name}.{os.urandom(6).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(doc, indent=2).encode())
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.replace(tmp, self.path)
            else:
                os.link(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        _ensure_private_dir(self.path.parent)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _parse(blob: bytes) -> tuple[str, bytes]:
    """Return (version, header) of a wrapped blob."""
    if len(blob) < len(MAGIC) + 1 or not blob.startswith(MAGIC):
        raise KeyRingError("not a local key ring blob", code="key-blob-invalid")
    end = len(MAGIC) + 1 + blob[len(MAGIC)]
    if len(blob) < end + NONCE_SIZE + 16:
        raise KeyRingError("wrapped key truncated", code="key-blob-invalid")
    try:
        return blob[len(MAGIC) + 1 : end].decode("ascii"), blob[:end]
    except UnicodeDecodeError:
        raise KeyRingError("bad key version in blob", code="key-blob-invalid") from None


def _validate(raw: bytes) -> dict[str, Any]:
    """Parse the key file; anything but a well-formed one is `keyring-malformed`."""
    try:
        doc = json.loads(raw)
        if _well_formed(doc):
            return dict(doc)
    except (KeyError, TypeError, ValueError):
        pass
    raise KeyRingError("key file is malformed", code="keyring-malformed")


def _well_formed(doc: Any) -> bool:
    return bool(
        doc["format"] == FORMAT
        and doc["current"] in doc["keys"]
        and all(_VERSION.fullmatch(v) for v in doc["keys"])
        and all(
            len(base64.b64decode(e["key"], validate=True)) == KEK_SIZE for e in doc["keys"].values()
        )
    )


def _new_entry() -> dict[str, str]:
    return {
        "key": base64.b64encode(AESGCM.generate_key(bit_length=256)).decode(),
        "created": datetime.now(UTC).isoformat(),
    }


def _new_document() -> dict[str, Any]:
    return {"format": FORMAT, "current": "v1", "keys": {"v1": _new_entry()}}


def _ensure_private_dir(path: Path) -> None:
    """Create the key file's directory 0700 if missing (an existing one is left alone)."""
    try:
        path.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        return
    path.chmod(0o700)  # mkdir's mode is subject to the umask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
