"""Object store in a local folder (the default backend).

`put` writes to a temporary file in the target's directory, fsyncs it, links
it into place without ever overwriting (``link(2)`` fails if the name exists),
removes the temporary name and fsyncs the directory. Temporary names start
with a dot, which valid keys never do, so they are never listed or read.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from inventory.errors import NotFound, Unavailable
from inventory.storage.base import ObjectInfo, object_exists, validate_key

READ_CHUNK = 1 << 20
WRITEBACK_STEP = 8 << 20


class LocalStore:
    """`ObjectStore` rooted at the absolute directory `root` (created 0700)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_absolute():
            raise ValueError("local store root must be absolute")

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        path = self._path(key)
        if path.exists():
            raise object_exists(key)
        with _io("object store write failed"):
            new_dirs = _make_dirs(path.parent)
            fd, tmp = _mkstemp(path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                size = _write_all(f, chunks)
            _link_no_replace(tmp, path, key)
        finally:
            tmp.unlink(missing_ok=True)
        with _io("object store write failed"):
            for directory in [path.parent, *(d.parent for d in new_dirs)]:
                _fsync_dir(directory)
        return size

    def get(self, key: str) -> Iterator[bytes]:
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115 (closed by the generator)
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"object {key!r} not found", code="object-not-found") from None
        except OSError:
            raise Unavailable("object store read failed", code="object-store-unavailable") from None
        return _read_all(f)

    def delete(self, key: str) -> None:
        with _io("object store delete failed"):
            self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        with _io("object store listing failed"):
            for key, entry in _walk(self.root, "", prefix):
                st = entry.stat()
                yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def check(self) -> None:
        with _io("object store folder is not usable"):
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionError(self.root)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)


def _walk(directory: Path | str, base: str, prefix: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Yield (key, entry) for files under `directory` in key order, skipping dot names.

    Directories sort as ``name/`` so the order equals byte order of full keys.
    """
    with os.scandir(directory) as it:
        entries = sorted(
            (e for e in it if not e.name.startswith(".")),
            key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name,
        )
    for entry in entries:
        key = base + entry.name
        if entry.is_dir(follow_symlinks=False):
            sub = key + "/"
            if sub.startswith(prefix) or prefix.startswith(sub):
                yield from _walk(entry.path, sub, prefix)
        elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
            yield key, entry


def _make_dirs(directory: Path) -> list[Path]:
    """Create `directory` and missing parents (0700); return those created."""
    missing = [d for d in [directory, *directory.parents] if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return missing


def _mkstemp(directory: Path) -> tuple[int, Path]:
    """A new private temporary file; its dot name can never be a valid key."""
    path = directory / f".tmp-{secrets.token_hex(8)}"
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), path


def _write_all(f: BinaryIO, chunks: Iterable[bytes]) -> int:
    """Write every chunk and fsync; errors from `chunks` itself propagate unchanged.

    Every `WRITEBACK_STEP` bytes, writeback of what was written is started and
    already-clean pages are dropped, so the disk works while the stream still
    flows, the final fsync has little left to do, and sealed objects do not
    crowd the page cache.
    """
    size = 0
    for chunk in chunks:
        with _io("object store write failed"):
            f.write(chunk)
            if (size + len(chunk)) // WRITEBACK_STEP > size // WRITEBACK_STEP:
                _start_writeback(f.fileno(), max(0, size - WRITEBACK_STEP))
        size += len(chunk)
    with _io("object store write failed"):
        f.flush()
        os.fsync(f.fileno())
    return size


def _start_writeback(fd: int, offset: int) -> None:
    """Linux: POSIX_FADV_DONTNEED starts async writeback of dirty pages from
    `offset` to the end of the file and drops the clean ones."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, 0, os.POSIX_FADV_DONTNEED)


def _link_no_replace(tmp: Path, path: Path, key: str) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise object_exists(key) from None
    except OSError:
        raise Unavailable("object store write failed", code="object-store-unavailable") from None


def _read_all(f: BinaryIO) -> Iterator[bytes]:
    with f:
        while chunk := f.read(READ_CHUNK):
            yield chunk


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _io(detail: str) -> Iterator[None]:
    """Turn an OS-level failure into `Unavailable` (503)."""
    try:
        yield
    except OSError as exc:
        raise Unavailable(
            f"{detail} ({exc.strerror or type(exc).__name__})", code="object-store-unavailable"
        ) from None
