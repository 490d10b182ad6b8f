"""The local key file: permissions, wrapping, rotation, refusal of loose files."""

from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from inventory.crypto.keyring import KeyRing, KeyRingError, open_keyring, rewrap
from inventory.crypto.local_keyring import LocalKeyRing

SECRET = os.urandom(32)
CONTEXT = b"revision:0192-aaaa"


@pytest.fixture
def ring_path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "keyring.json"


def test_created_on_first_use_private(ring_path: Path) -> None:
    ring = LocalKeyRing(ring_path)
    assert not ring_path.exists()
    blob = ring.wrap(SECRET, CONTEXT)
    assert stat.S_IMODE(ring_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ring_path.parent.stat().st_mode) == 0o700
    assert ring.unwrap(blob, CONTEXT) == SECRET
    assert ring.version_of(blob) == ring.current_version() == "v1"
    assert SECRET not in blob


def test_open_keyring_file_url(tmp_path: Path) -> None:
    ring_path = tmp_path / "key ring" / "keyring.json"
    ring: KeyRing = open_keyring(ring_path.as_uri())
    assert isinstance(ring, LocalKeyRing) and ring.path == ring_path
    assert ring.unwrap(ring.wrap(SECRET, CONTEXT), CONTEXT) == SECRET


def test_wrap_is_randomised(ring_path: Path) -> None:
    ring = LocalKeyRing(ring_path)
    assert ring.wrap(SECRET, CONTEXT) != ring.wrap(SECRET, CONTEXT)


def test_wrong_context_fails(ring_path: Path) -> None:
    ring = LocalKeyRing(ring_path)
    blob = ring.wrap(SECRET, CONTEXT)
    with pytest.raises(KeyRingError) as err:
        ring.unwrap(blob, b"revision:0192-bbbb")
    assert err.value.code == "key-unwrap-failed"


def test_tampered_blob_fails(ring_path: Path) -> None:
    ring = LocalKeyRing(ring_path)
    blob = bytearray(ring.wrap(SECRET, CONTEXT))
    blob[-3] ^= 0x10
    with pytest.raises(KeyRingError):
        ring.unwrap(bytes(blob), CONTEXT)
    with pytest.raises(KeyRingError, match="not a local"):
        ring.unwrap(b"garbage", CONTEXT)


def test_rotation_keeps_old_blobs_unwrappable(ring_path: Path) -> None:
    ring = LocalKeyRing(ring_path)
    old = ring.wrap(SECRET, CONTEXT)
    assert ring.rotate() == "v2"
    new = ring.wrap(SECRET, CONTEXT)
    assert ring.current_version() == "v2"
    assert (ring.version_of(old), ring.version_of(new)) == ("v1", "v2")
    assert ring.unwrap(old, CONTEXT) == ring.unwrap(new, CONTEXT) == SECRET
    assert stat.S_IMODE(ring_path.stat().st_mode) == 0o600
    assert sorted(json.loads(ring_path.read_text())["keys"]) == ["v1", "v2"]


def test_rewrap_moves_blob_to_current_version(ring_path: Path) -> None:
    ring = LocalKeyRing(ring_path)
    old = ring.wrap(SECRET, CONTEXT)
    assert rewrap(ring, old, CONTEXT) is old
    ring.rotate()
    new = rewrap(ring, old, CONTEXT)
    assert ring.version_of(new) == "v2"
    assert ring.unwrap(new, CONTEXT) == SECRET


def test_other_process_sees_rotation(ring_path: Path) -> None:
    first, second = LocalKeyRing(ring_path), LocalKeyRing(ring_path)
    assert second.current_version() == "v1"
    first.rotate()
    blob = first.wrap(SECRET, CONTEXT)
    assert second.current_version() == "v2"
    assert second.unwrap(blob, CONTEXT) == SECRET


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_group_or_world_readable_file_refused(ring_path: Path, mode: int) -> None:
    LocalKeyRing(ring_path).current_version()
    ring_path.chmod(mode)
    with pytest.raises(KeyRingError) as err:
        LocalKeyRing(ring_path).wrap(SECRET, CONTEXT)
    assert err.value.code == "keyring-file-permissions"


@pytest.mark.parametrize(
    "content",
    [
        '{"format": "partvault-keyring/1", "current": "v9", "keys": {}}',
        '{"format": "partvault-keyring/1", "current": "x", "keys": {"x": {"key": "AAAA"}}}',
        "not json",
        "[]",
    ],
)
def test_malformed_file_refused(ring_path: Path, content: str) -> None:
    ring_path.parent.mkdir(mode=0o700)
    ring_path.write_text(content)
    ring_path.chmod(0o600)
    with pytest.raises(KeyRingError) as err:
        LocalKeyRing(ring_path).current_version()
    assert err.value.code == "keyring-malformed"


def test_bad_urls_rejected() -> None:
    for url in ["ftp://x", "file://", "kms://?bogus=1"]:
        with pytest.raises(ValueError):
            open_keyring(url)


def test_concurrent_rotations_never_lose_a_version(ring_path: Path) -> None:
    LocalKeyRing(ring_path).current_version()
    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda _: LocalKeyRing(ring_path).rotate(), range(8)))
    assert sorted(versions, key=lambda v: int(v[1:])) == [f"v{n}" for n in range(2, 10)]
    assert LocalKeyRing(ring_path).current_version() == "v9"
    assert len(json.loads(ring_path.read_text())["keys"]) == 9
