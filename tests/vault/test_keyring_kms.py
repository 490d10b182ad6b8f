"""The KMS key ring against moto's KMS over real HTTP."""

from __future__ import annotations

import os
import secrets

import boto3
import pytest

from inventory.crypto.keyring import KeyRingError, KeyRingUnavailable, open_keyring
from inventory.crypto.kms_keyring import KmsKeyRing

SECRET = os.urandom(32)
CONTEXT = b"revision:0192-aaaa"


@pytest.fixture
def ring(moto_server: str) -> KmsKeyRing:
    alias = f"pv-test-{secrets.token_hex(4)}"
    url = f"kms://?alias={alias}&region=us-east-1&endpoint_url={moto_server}"
    keyring = open_keyring(url)
    assert isinstance(keyring, KmsKeyRing)
    return keyring


def test_wrap_unwrap_bootstraps_alias(ring: KmsKeyRing) -> None:
    blob = ring.wrap(SECRET, CONTEXT)
    assert ring.unwrap(blob, CONTEXT) == SECRET
    assert ring.version_of(blob) == ring.current_version()
    assert ring.current_version().startswith("arn:aws:kms:us-east-1:")
    assert SECRET not in blob


def test_wrong_context_fails(ring: KmsKeyRing) -> None:
    blob = ring.wrap(SECRET, CONTEXT)
    with pytest.raises(KeyRingError) as err:
        ring.unwrap(blob, b"revision:0192-bbbb")
    assert err.value.code == "key-unwrap-failed"


def test_rotation_keeps_old_blobs_unwrappable(ring: KmsKeyRing, moto_server: str) -> None:
    old = ring.wrap(SECRET, CONTEXT)
    first = ring.current_version()
    second = ring.rotate()
    assert second != first and ring.current_version() == second
    new = ring.wrap(SECRET, CONTEXT)
    assert ring.version_of(new) == second and ring.version_of(old) == first
    assert ring.unwrap(old, CONTEXT) == ring.unwrap(new, CONTEXT) == SECRET
    # a second process configured with the same alias sees the same ring
    other = KmsKeyRing(ring.alias, region="us-east-1", endpoint_url=moto_server)
    assert other.current_version() == second
    assert other.unwrap(old, CONTEXT) == SECRET


def test_adopts_configured_key(moto_server: str) -> None:
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_server)
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    ring = KmsKeyRing(
        f"pv-adopt-{secrets.token_hex(4)}", key_id=arn, region="us-east-1", endpoint_url=moto_server
    )
    assert ring.current_version() == arn


def test_unreachable_kms_is_unavailable() -> None:
    ring = KmsKeyRing("pv-down", region="us-east-1", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(KeyRingUnavailable) as err:
        ring.wrap(SECRET, CONTEXT)
    assert err.value.status == 503 and err.value.code == "kms-unavailable"
    assert isinstance(err.value, KeyRingError)
