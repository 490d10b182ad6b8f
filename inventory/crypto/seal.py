"""Seal a design into the object store, and open it again, streaming.

`seal_to_store` runs four stages at once: the caller's thread pulls plaintext
from the source (so a source bound to the caller's thread, e.g. an anyio
portal, keeps working) and hands each chunk to a hashing (SHA-256) and an
encrypting worker; a third worker writes the ciphertext segments, so
encryption never waits on a blocked write. hashlib, AESGCM (measured) and
file/socket writes release the GIL on large buffers, so the stages truly run
in parallel. Queues are bounded, so memory stays constant whatever the
stream's length.

Any failure (source, hashing, encryption or store) stops every stage; the
store's `put` then removes its partial object, and the first real error is
raised.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

from inventory.crypto.aead import decrypt_stream, encrypt_stream
from inventory.storage.base import ObjectStore

T = TypeVar("T")
QUEUE_DEPTH = 8
_POLL = 0.05


@dataclass(frozen=True, slots=True)
class SealResult:
    plaintext_sha256: str  # hex
    plaintext_size: int
    stored_size: int


def seal_to_store(
    store: ObjectStore, object_key: str, data_key: bytes, aad: bytes, chunks: Iterable[bytes]
) -> SealResult:
    """Encrypt `chunks` under `data_key`/`aad`, hash them, and create `object_key`."""
    with _Pipeline() as pipe:
        to_hash, to_seal, to_write = pipe.channel(), pipe.channel(), pipe.channel()
        hasher = pipe.spawn(lambda: _sha256(to_hash))
        pipe.spawn(lambda: _forward(encrypt_stream(data_key, aad, to_seal), to_write))
        writer = pipe.spawn(lambda: store.put(object_key, to_write))
        size = 0
        for chunk in chunks:
            data = chunk if isinstance(chunk, bytes) else bytes(chunk)
            to_seal.send(data)
            to_hash.send(data)
            size += len(data)
        to_seal.close()
        to_hash.close()
    return SealResult(hasher.result(), size, writer.result())


def open_from_store(
    store: ObjectStore, object_key: str, data_key: bytes, aad: bytes
) -> Iterator[bytes]:
    """Stream the plaintext of a sealed object; `NotFound` is raised at call time.

    Each yielded segment has authenticated; tampering raises `IntegrityError`
    before any plaintext of the bad segment is released.
    """
    return decrypt_stream(data_key, aad, store.get(object_key))


def _forward(items: Iterable[bytes], channel: _Channel) -> None:
    for item in items:
        channel.send(item)
    channel.close()


def _sha256(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


class _Aborted(Exception):
    """Raised inside a stage when another stage failed."""


class _Channel:
    """A bounded hand-off between stages that gives up once the pipeline aborts."""

    _END = object()

    def __init__(self, abort: threading.Event) -> None:
        self._queue: queue.Queue[object] = queue.Queue(QUEUE_DEPTH)
        self._abort = abort

    def send(self, item: object) -> None:
        while True:
            if self._abort.is_set():
                raise _Aborted
            try:
                self._queue.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self.send(self._END)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            if self._abort.is_set():
                raise _Aborted
            try:
                item = self._queue.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is self._END:
                return
            assert isinstance(item, bytes)
            yield item


class _Stage(Generic[T]):
    """One worker thread; records its result or its exception."""

    def __init__(self, target: Callable[[], T], abort: threading.Event) -> None:
        self._target = target
        self._abort = abort
        self._value: T | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="partvault-seal", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._value = self._target()
        except BaseException as exc:
            self.error = exc
            self._abort.set()

    def result(self) -> T:
        assert self._value is not None and self.error is None
        return self._value


class _Pipeline:
    """Owns the stages: on exit joins them all and raises the first real error."""

    def __init__(self) -> None:
        self._abort = threading.Event()
        self._stages: list[_Stage[Any]] = []

    def channel(self) -> _Channel:
        return _Channel(self._abort)

    def spawn(self, target: Callable[[], T]) -> _Stage[T]:
        stage = _Stage(target, self._abort)
        self._stages.append(stage)
        return stage

    def __enter__(self) -> _Pipeline:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self._abort.set()
        for stage in self._stages:
            stage.thread.join()
        if exc is not None and not isinstance(exc, _Aborted):
            return  # the source's own error propagates
        for stage in self._stages:
            if stage.error is not None and not isinstance(stage.error, _Aborted):
                raise stage.error
