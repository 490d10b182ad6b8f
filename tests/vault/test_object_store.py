"""One contract for every object store backend (local folder, S3 over HTTP), plus faults."""

from __future__ import annotations

import os
import resource
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from inventory.errors import Invalid, NotFound, Unavailable
from inventory.storage import LocalStore, ObjectExists, ObjectStore, new_object_key, open_store
from inventory.storage.s3 import S3Store

MiB = 1 << 20
Leftovers = Callable[[ObjectStore], list[str]]
FailingAfter = Callable[[Iterable[bytes], int, Exception], Iterator[bytes]]


def chunked(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("size", [0, 1, 5 * MiB - 1, 5 * MiB, 11 * MiB + 3])
def test_put_get_round_trip(store: ObjectStore, size: int) -> None:
    data = os.urandom(size)
    assert store.put("rev/a1", chunked(data)) == size
    assert b"".join(store.get("rev/a1")) == data
    assert store.exists("rev/a1")


def test_put_is_conditional_create(store: ObjectStore, leftovers: Leftovers) -> None:
    store.put("rev/a1", [b"original"])
    for attempt in ([b"other"], chunked(os.urandom(11 * MiB))):
        with pytest.raises(ObjectExists) as err:
            store.put("rev/a1", attempt)
        assert err.value.status == 409 and err.value.code == "object-exists"
    assert b"".join(store.get("rev/a1")) == b"original"
    assert len(leftovers(store)) == 1  # the original, no partial second object


def test_concurrent_creates_have_exactly_one_winner(store: ObjectStore) -> None:
    bodies = [os.urandom(64 * 1024) for _ in range(4)]
    barrier = threading.Barrier(len(bodies))

    def attempt(body: bytes) -> bytes | None:
        barrier.wait()
        try:
            store.put("rev/race", chunked(body, 4096))
        except ObjectExists:
            return None
        return body

    with ThreadPoolExecutor(len(bodies)) as pool:
        winners = [b for b in pool.map(attempt, bodies) if b is not None]
    assert len(winners) == 1
    assert b"".join(store.get("rev/race")) == winners[0]


def test_missing_object(store: ObjectStore) -> None:
    with pytest.raises(NotFound) as err:
        store.get("rev/missing")
    assert err.value.code == "object-not-found"
    assert not store.exists("rev/missing")


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("rev/a1", [b"x"])
    store.delete("rev/a1")
    assert not store.exists("rev/a1")
    store.delete("rev/a1")


def test_list_by_prefix_in_key_order(store: ObjectStore) -> None:
    keys = ["a/b-c", "a/b/x", "a/z", "b/1", "ab"]
    before = datetime.now(UTC) - timedelta(minutes=1)
    for i, key in enumerate(keys):
        store.put(key, [b"x" * i])
    listed = list(store.list())
    assert [o.key for o in listed] == sorted(keys)
    assert [o.key for o in store.list("a/")] == ["a/b-c", "a/b/x", "a/z"]
    assert [o.key for o in store.list("a/b")] == ["a/b-c", "a/b/x"]
    assert list(store.list("nothing/")) == []
    info = {o.key: o for o in listed}
    assert info["b/1"].size == 3
    assert all(before < o.modified <= datetime.now(UTC) + timedelta(minutes=1) for o in listed)
    assert all(o.modified.tzinfo is not None for o in listed)


UNSAFE_KEYS = [
    "",
    "../etc/passwd",
    "a/../../b",
    "/abs",
    "a//b",
    "a/",
    ".hidden",
    "a/./b",
    "a\\b",
    "a b",
    "x" * 600,
    "\u00fc",
]


def test_unsafe_keys_rejected(store: ObjectStore) -> None:
    for key in UNSAFE_KEYS:
        with pytest.raises(Invalid) as err:
            store.put(key, [b"x"])
        assert err.value.code == "object-key-invalid"
        with pytest.raises(Invalid):
            store.get(key)
    assert list(store.list()) == []


@pytest.mark.parametrize("size", [1 * MiB, 12 * MiB])
def test_failing_source_leaves_nothing(
    store: ObjectStore, leftovers: Leftovers, failing_after: FailingAfter, size: int
) -> None:
    boom = RuntimeError("client went away")
    with pytest.raises(RuntimeError) as err:
        store.put(
            "rev/a1", failing_after(chunked(os.urandom(size), MiB // 4), 3 * size // MiB, boom)
        )
    assert err.value is boom
    assert not store.exists("rev/a1")
    assert leftovers(store) == []


def test_check_ready(store: ObjectStore) -> None:
    store.check()


def test_new_object_keys_are_valid_and_unique(store: ObjectStore) -> None:
    keys = {new_object_key() for _ in range(100)}
    assert len(keys) == 100
    key = keys.pop()
    assert key.startswith("designs/") and len(key) == len("designs/ab/") + 32
    store.put(key, [b"x"])
    assert [o.key for o in store.list("designs/")] == [key]


# --- local folder specifics --------------------------------------------------------------


def test_local_disk_failure_mid_write_is_unavailable(tmp_path: Path, leftovers: Leftovers) -> None:
    """A real write error (EFBIG from RLIMIT_FSIZE) halfway through the object."""
    store = LocalStore(tmp_path / "objects")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * MiB, hard))
    try:
        with pytest.raises(Unavailable) as err:
            store.put("rev/a1", chunked(os.urandom(4 * MiB)))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert err.value.code == "object-store-unavailable"
    assert leftovers(store) == []


def test_local_files_are_private(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    store.put("rev/a1", [b"x"])
    assert (tmp_path / "objects" / "rev" / "a1").stat().st_mode & 0o077 == 0


def test_local_check_fails_when_root_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(Unavailable) as err:
        LocalStore(tmp_path / "file").check()
    assert err.value.code == "object-store-unavailable"


# --- S3 specifics ------------------------------------------------------------------------


def test_s3_failure_mid_multipart_aborts_upload(
    moto_server: str, bucket: str, faulty_s3: object, leftovers: Leftovers
) -> None:
    endpoint = faulty_s3.endpoint  # type: ignore[attr-defined]
    store = S3Store(
        bucket, endpoint_url=endpoint, region="us-east-1", part_size=5 * MiB, max_attempts=2
    )
    with pytest.raises(Unavailable) as err:
        store.put("rev/a1", chunked(os.urandom(16 * MiB)))
    assert err.value.code == "object-store-unavailable"
    assert faulty_s3.failures >= 1  # type: ignore[attr-defined]
    healthy = S3Store(bucket, endpoint_url=moto_server, region="us-east-1")
    assert not healthy.exists("rev/a1")
    assert leftovers(healthy) == []  # the multipart upload was aborted


def test_s3_unreachable_is_unavailable(bucket: str) -> None:
    store = S3Store(
        bucket,
        endpoint_url="http://127.0.0.1:9",
        region="us-east-1",
        max_attempts=1,
        connect_timeout=1,
    )
    for action in (lambda: store.put("k", [b"x"]), store.check, lambda: store.get("k")):
        with pytest.raises(Unavailable) as err:
            action()
        assert err.value.status == 503 and err.value.code == "object-store-unavailable"


def test_s3_missing_bucket_fails_readiness(moto_server: str) -> None:
    with pytest.raises(Unavailable) as err:
        open_store(f"s3://no-such-bucket-pv?endpoint_url={moto_server}").check()
    assert err.value.code == "object-store-bucket-missing"


def test_s3_prefix_is_applied(moto_server: str, bucket: str) -> None:
    store = open_store(f"s3://{bucket}/vault/designs/?endpoint_url={moto_server}")
    store.put("rev/a1", [b"x"])
    assert isinstance(store, S3Store)
    keys = [o["Key"] for o in store._s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["vault/designs/rev/a1"]
    assert [o.key for o in store.list()] == ["rev/a1"]


def test_open_store_file_url_round_trips_path_uri(tmp_path: Path) -> None:
    root = tmp_path / "objects with space"
    store = open_store(root.as_uri())
    assert isinstance(store, LocalStore) and store.root == root


def test_open_store_rejects_bad_urls() -> None:
    for url in ["relative/path", "file://host/x", "s3://", "s3://b?unknown=1", "gs://b"]:
        with pytest.raises(ValueError):
            open_store(url)
