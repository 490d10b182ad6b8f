"""Streaming AEAD: round trips at every segment boundary and every kind of tampering."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from inventory.crypto.aead import (
    CIPHERTEXT_SEGMENT_SIZE,
    HEADER_SIZE,
    SEGMENT_SIZE,
    TAG_SIZE,
    IntegrityError,
    ciphertext_size,
    decrypt_stream,
    encrypt_stream,
    new_data_key,
)

AAD = b"revision:0192-aaaa"
KEY = new_data_key()


def seal(plaintext: bytes, key: bytes = KEY, aad: bytes = AAD) -> bytes:
    return b"".join(encrypt_stream(key, aad, [plaintext]))


def unseal(ciphertext: bytes, key: bytes = KEY, aad: bytes = AAD) -> bytes:
    return b"".join(decrypt_stream(key, aad, [ciphertext]))


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def segment_bounds(ciphertext: bytes) -> list[tuple[int, int]]:
    starts = range(HEADER_SIZE, len(ciphertext), CIPHERTEXT_SEGMENT_SIZE)
    return [(s, min(s + CIPHERTEXT_SEGMENT_SIZE, len(ciphertext))) for s in starts]


SIZES = [0, 1, SEGMENT_SIZE - 1, SEGMENT_SIZE, SEGMENT_SIZE + 1, 3 * SEGMENT_SIZE + 12345]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_at_segment_boundaries(size: int) -> None:
    plaintext = os.urandom(size)
    ciphertext = seal(plaintext)
    assert len(ciphertext) == ciphertext_size(size)
    assert unseal(ciphertext) == plaintext


def test_round_trip_with_odd_chunking_on_both_sides() -> None:
    plaintext = os.urandom(5 * SEGMENT_SIZE + 7)
    ciphertext = b"".join(encrypt_stream(KEY, AAD, pieces(plaintext, 65_537)))
    decrypted = b"".join(decrypt_stream(KEY, AAD, pieces(ciphertext, 1_000_003)))
    assert decrypted == plaintext
    assert b"".join(decrypt_stream(KEY, AAD, pieces(ciphertext, 7))) == plaintext


def test_empty_plaintext_is_one_empty_last_segment() -> None:
    ciphertext = seal(b"")
    assert len(ciphertext) == HEADER_SIZE + TAG_SIZE
    assert ciphertext[0] == HEADER_SIZE


def test_decrypted_segments_stream_one_by_one() -> None:
    plaintext = os.urandom(3 * SEGMENT_SIZE)
    out = decrypt_stream(KEY, AAD, pieces(seal(plaintext), 4096))
    assert [len(segment) for segment in out] == [SEGMENT_SIZE] * 3


def test_same_plaintext_twice_gives_different_ciphertexts() -> None:
    plaintext = b"the same design" * 1000
    first, second = seal(plaintext), seal(plaintext)
    assert first != second
    assert first[1:HEADER_SIZE] != second[1:HEADER_SIZE]  # fresh salt and nonce prefix
    assert unseal(first) == unseal(second) == plaintext


def test_ciphertext_size() -> None:
    assert ciphertext_size(0) == HEADER_SIZE + TAG_SIZE
    assert ciphertext_size(SEGMENT_SIZE) == HEADER_SIZE + SEGMENT_SIZE + TAG_SIZE
    assert ciphertext_size(SEGMENT_SIZE + 1) == HEADER_SIZE + SEGMENT_SIZE + 1 + 2 * TAG_SIZE


# --- tampering -------------------------------------------------------------------------

THREE_SEGMENTS = os.urandom(2 * SEGMENT_SIZE + 100)
SEALED = seal(THREE_SEGMENTS)
BOUNDS = segment_bounds(SEALED)


def tampered_cases() -> dict[str, bytes]:
    s1, s2 = BOUNDS[1][0], BOUNDS[2][0]
    seg = [SEALED[s:e] for s, e in BOUNDS]
    header = SEALED[:HEADER_SIZE]
    one_segment = seal(os.urandom(SEGMENT_SIZE + 5))
    return {
        "drop-last-segment": SEALED[:s2],
        "keep-only-first-segment": SEALED[:s1],
        "cut-last-bytes": SEALED[:-1],
        "cut-into-tag": SEALED[: s2 + 10],
        "header-only": header,
        "half-header": header[:20],
        "nothing": b"",
        "swap-first-two": header + seg[1] + seg[0] + seg[2],
        "duplicate-first": header + seg[0] + seg[0] + seg[1] + seg[2],
        "append-byte": SEALED + b"\x00",
        "append-segment": SEALED + seg[2],
        "other-stream-header": one_segment[:HEADER_SIZE] + SEALED[HEADER_SIZE:],
        "bad-header-byte": bytes([HEADER_SIZE + 1]) + SEALED[1:],
    }


@pytest.mark.parametrize("case", sorted(tampered_cases()))
def test_tampering_fails_with_integrity_error(case: str) -> None:
    with pytest.raises(IntegrityError) as err:
        unseal(tampered_cases()[case])
    assert err.value.status == 500
    assert err.value.code.startswith("ciphertext-")


@pytest.mark.parametrize(
    "position", [0, 1, 20, HEADER_SIZE - 1, HEADER_SIZE, SEGMENT_SIZE, len(SEALED) - 1]
)
def test_flipped_bit_anywhere_fails(position: int) -> None:
    corrupted = bytearray(SEALED)
    corrupted[position] ^= 0x01
    with pytest.raises(IntegrityError):
        unseal(bytes(corrupted))


def test_no_plaintext_released_from_a_bad_segment() -> None:
    corrupted = bytearray(SEALED)
    s1, _ = BOUNDS[1]
    corrupted[s1 + 5] ^= 0x80  # inside segment 1
    released: list[bytes] = []
    with pytest.raises(IntegrityError, match="segment 1"):
        for segment in decrypt_stream(KEY, AAD, pieces(bytes(corrupted), 300_000)):
            released.append(segment)
    assert released == [THREE_SEGMENTS[:SEGMENT_SIZE]]  # only the authenticated segment 0


def test_other_revisions_aad_fails() -> None:
    with pytest.raises(IntegrityError):
        unseal(SEALED, aad=b"revision:0192-bbbb")


def test_wrong_key_fails() -> None:
    with pytest.raises(IntegrityError):
        unseal(SEALED, key=new_data_key())


def test_error_message_carries_no_plaintext() -> None:
    secret = b"SECRET-GEOMETRY-" * 4
    ciphertext = bytearray(seal(secret))
    ciphertext[-1] ^= 1
    with pytest.raises(IntegrityError) as err:
        unseal(bytes(ciphertext))
    assert "SECRET" not in str(err.value) and "SECRET" not in repr(err.value.extra)


def test_key_must_be_256_bits() -> None:
    with pytest.raises(ValueError):
        seal(b"x", key=os.urandom(16))


class Counting:
    """An iterable that counts how many chunks have been pulled from it."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk


def test_encryption_and_decryption_stream() -> None:
    """Output starts after at most two segments of input: memory does not grow with size."""
    plaintext = os.urandom(10 * SEGMENT_SIZE)
    source = Counting(list(pieces(plaintext, SEGMENT_SIZE)))
    encrypted = encrypt_stream(KEY, AAD, source)
    next(encrypted), next(encrypted)  # header, segment 0
    assert source.pulled <= 2
    ciphertext = Counting(list(pieces(seal(plaintext), CIPHERTEXT_SEGMENT_SIZE)))
    decrypted = decrypt_stream(KEY, AAD, ciphertext)
    assert next(decrypted) == plaintext[:SEGMENT_SIZE]
    assert ciphertext.pulled <= 3
