"""Sealing designs into a store and opening them again, on both backends."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from inventory.crypto.aead import SEGMENT_SIZE, IntegrityError, ciphertext_size, new_data_key
from inventory.crypto.seal import SealResult, open_from_store, seal_to_store
from inventory.errors import NotFound, PayloadTooLarge, Unavailable
from inventory.storage import LocalStore, ObjectStore

AAD = b"revision:0192-aaaa"
KEY = new_data_key()
Leftovers = Callable[[ObjectStore], list[str]]
FailingAfter = Callable[[Iterable[bytes], int, Exception], Iterator[bytes]]


def chunked(data: bytes, size: int = 100_000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def stored_bytes(store: ObjectStore, key: str) -> bytes:
    return b"".join(store.get(key))


@pytest.mark.parametrize("size", [0, 1, SEGMENT_SIZE + 1, 6 * SEGMENT_SIZE + 17])
def test_seal_and_open_round_trip(store: ObjectStore, size: int) -> None:
    plaintext = os.urandom(size)
    result = seal_to_store(store, "designs/r1", KEY, AAD, chunked(plaintext))
    assert result == SealResult(hashlib.sha256(plaintext).hexdigest(), size, ciphertext_size(size))
    assert len(stored_bytes(store, "designs/r1")) == result.stored_size
    assert b"".join(open_from_store(store, "designs/r1", KEY, AAD)) == plaintext


def test_no_16_byte_window_of_a_real_design_is_stored(store: ObjectStore, meshes_dir: Path) -> None:
    design = (meshes_dir / "20mm-xyz-cube.stl").read_bytes()
    seal_to_store(store, "designs/cube", KEY, AAD, chunked(design, 4096))
    stored = stored_bytes(store, "designs/cube")
    windows = {design[i : i + 16] for i in range(len(design) - 15)}
    assert not any(stored[i : i + 16] in windows for i in range(len(stored) - 15))
    assert b"".join(open_from_store(store, "designs/cube", KEY, AAD)) == design


def test_same_design_twice_is_stored_differently(tmp_path: Path, meshes_dir: Path) -> None:
    store = LocalStore(tmp_path)
    design = (meshes_dir / "20mm-xyz-cube.stl").read_bytes()
    first = seal_to_store(store, "a", KEY, AAD, [design])
    second = seal_to_store(store, "b", KEY, AAD, [design])
    assert first.plaintext_sha256 == second.plaintext_sha256
    assert stored_bytes(store, "a") != stored_bytes(store, "b")


def test_open_with_another_revisions_aad_fails(store: ObjectStore) -> None:
    seal_to_store(store, "designs/r1", KEY, AAD, [b"solid cube"])
    with pytest.raises(IntegrityError):
        b"".join(open_from_store(store, "designs/r1", KEY, b"revision:0192-bbbb"))
    with pytest.raises(IntegrityError):
        b"".join(open_from_store(store, "designs/r1", new_data_key(), AAD))


def test_tampered_object_fails(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    seal_to_store(store, "r1", KEY, AAD, [os.urandom(2 * SEGMENT_SIZE)])
    path = tmp_path / "r1"
    data = bytearray(path.read_bytes())
    data[SEGMENT_SIZE + 100] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        b"".join(open_from_store(store, "r1", KEY, AAD))


def test_open_missing_object_raises_at_call(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        open_from_store(store, "designs/none", KEY, AAD)


def test_source_error_propagates_and_leaves_nothing(
    store: ObjectStore, leftovers: Leftovers, failing_after: FailingAfter
) -> None:
    too_big = PayloadTooLarge("upload exceeds the limit", code="design-too-large")
    source = failing_after(chunked(os.urandom(12 * SEGMENT_SIZE), SEGMENT_SIZE), 9, too_big)
    with pytest.raises(PayloadTooLarge) as err:
        seal_to_store(store, "designs/r1", KEY, AAD, source)
    assert err.value is too_big
    assert leftovers(store) == []


class BrokenStore(LocalStore):
    """A store whose disk fails after a few writes."""

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        for i, _ in enumerate(chunks):
            if i == 3:
                raise Unavailable("disk gone", code="object-store-unavailable")
        raise AssertionError("unreachable")


def test_store_failure_stops_the_pipeline(tmp_path: Path) -> None:
    consumed = 0

    def endless() -> Iterator[bytes]:
        nonlocal consumed
        while True:
            consumed += 1
            yield b"\x00" * 65536

    with pytest.raises(Unavailable) as err:
        seal_to_store(BrokenStore(tmp_path), "r1", KEY, AAD, endless())
    assert err.value.code == "object-store-unavailable"
    assert consumed < 1000  # the source is not drained after the store failed
