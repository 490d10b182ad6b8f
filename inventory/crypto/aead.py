"""Streaming AEAD for designs at rest (DESIGN.md, "At rest").

The format follows Tink's AES-GCM-HKDF streaming AEAD:

    header   = 0x28 (header length, 40; doubles as format id) ‖ salt (32) ‖ nonce prefix (7)
    segments = AES-256-GCM(segment key, nonce_i, plaintext_i) for i = 0, 1, ...

* segment key = HKDF-SHA256(ikm = data key, salt = salt, info = associated data);
  the associated data (the revision id) is bound through the key, as in Tink.
* nonce_i = nonce prefix ‖ uint32 BE i ‖ 0x01 for the last segment, else 0x00.
* Every plaintext segment holds exactly 1 MiB except the last, which holds
  0..1 MiB; an empty plaintext is one empty last segment (just a tag).

Because the index and the last-segment flag are in the nonce, truncation,
reordering, duplication and appended bytes all fail authentication. Decryption
streams in constant memory and only releases a segment's plaintext after its tag
verified.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from inventory.errors import PartvaultError, PayloadTooLarge

KEY_SIZE = 32
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
HEADER_SIZE = 1 + SALT_SIZE + NONCE_PREFIX_SIZE
TAG_SIZE = 16
SEGMENT_SIZE = 1 << 20
CIPHERTEXT_SEGMENT_SIZE = SEGMENT_SIZE + TAG_SIZE
MAX_SEGMENTS = 1 << 32


class IntegrityError(PartvaultError):
    """Stored ciphertext failed authentication (tampered, truncated, wrong key or AAD).

    This is server-side corruption or tampering, never a client mistake, hence
    500. The message names the segment, never any plaintext.
    """

    status = 500
    title = "Integrity failure"


def new_data_key() -> bytes:
    """A fresh random 256-bit data key (one per revision)."""
    return os.urandom(KEY_SIZE)


def ciphertext_size(plaintext_size: int) -> int:
    """Exact size of the sealed stream for a plaintext of `plaintext_size` bytes."""
    if plaintext_size < 0:
        raise ValueError("plaintext_size must be >= 0")
    segments = max(1, -(-plaintext_size // SEGMENT_SIZE))
    return HEADER_SIZE + plaintext_size + segments * TAG_SIZE


def encrypt_stream(data_key: bytes, aad: bytes, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Yield the header, then one ciphertext segment per 1 MiB of plaintext."""
    _check_key(data_key)
    salt = os.urandom(SALT_SIZE)
    prefix = os.urandom(NONCE_PREFIX_SIZE)
    cipher = AESGCM(_segment_key(data_key, salt, aad))
    yield bytes([HEADER_SIZE]) + salt + prefix
    for index, (block, last) in enumerate(_blocks(chunks, SEGMENT_SIZE)):
        if index >= MAX_SEGMENTS:
            raise PayloadTooLarge("stream exceeds 2^32 segments", code="stream-too-long")
        yield cipher.encrypt(_nonce(prefix, index, last), block, None)


def decrypt_stream(data_key: bytes, aad: bytes, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Yield plaintext segment by segment; raise `IntegrityError` on any tampering."""
    _check_key(data_key)
    header, rest = _split_header(iter(chunks))
    if header[0] != HEADER_SIZE:
        raise IntegrityError("unsupported ciphertext header", code="ciphertext-header")
    salt, prefix = header[1 : 1 + SALT_SIZE], header[1 + SALT_SIZE :]
    cipher = AESGCM(_segment_key(data_key, salt, aad))
    for index, (block, last) in enumerate(_blocks(rest, CIPHERTEXT_SEGMENT_SIZE)):
        if len(block) < TAG_SIZE or index >= MAX_SEGMENTS:
            raise IntegrityError("ciphertext truncated", code="ciphertext-truncated")
        try:
            yield cipher.decrypt(_nonce(prefix, index, last), block, None)
        except InvalidTag:
            raise IntegrityError(
                f"ciphertext segment {index} failed authentication", code="ciphertext-integrity"
            ) from None


def _check_key(data_key: bytes) -> None:
    if len(data_key) != KEY_SIZE:
        raise ValueError("data key must be 32 bytes")


def _segment_key(data_key: bytes, salt: bytes, aad: bytes) -> bytes:
    hkdf = HKDF(algorithm=SHA256(), length=KEY_SIZE, salt=salt, info=aad)
    return hkdf.derive(data_key)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def _split_header(chunks: Iterator[bytes]) -> tuple[bytes, Iterator[bytes]]:
    """Take exactly HEADER_SIZE bytes off the stream; return them and the rest."""
    head = bytearray()
    for chunk in chunks:
        head += chunk
        if len(head) >= HEADER_SIZE:
            tail = bytes(head[HEADER_SIZE:])
            return bytes(head[:HEADER_SIZE]), itertools.chain([tail], chunks)
    raise IntegrityError("ciphertext truncated in header", code="ciphertext-truncated")


def _blocks(chunks: Iterable[bytes], size: int) -> Iterator[tuple[bytes | memoryview, bool]]:
    """Re-cut a stream into blocks of `size` bytes, flagging the final block.

    Every block but the last is exactly `size` bytes; the last holds 0..size
    bytes and is flagged True. A full block is held back until it is known
    whether anything follows it. Chunks are sliced without copying when they
    are already aligned.
    """
    held: bytes | memoryview | None = None
    partial = bytearray()
    for chunk in chunks:
        view = memoryview(bytes(chunk) if not isinstance(chunk, bytes) else chunk)
        pos = 0
        if partial:
            pos = min(size - len(partial), len(view))
            partial += view[:pos]
            if len(partial) < size:
                continue
            full, partial = bytes(partial), bytearray()
            if held is not None:
                yield held, False
            held = full
        while len(view) - pos >= size:
            if held is not None:
                yield held, False
            held, pos = view[pos : pos + size], pos + size
        partial += view[pos:]
    if held is not None and partial:
        yield held, False
        held = None
    yield (held if held is not None else bytes(partial)), True
