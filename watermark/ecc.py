"""Payload format and error correction.

The payload is the 64-bit print serial followed by a 40-bit keyed check value
(HMAC-SHA256 of the serial under the brand key, truncated).  The 104 bits plus
a 6-bit zero tail are encoded with the standard rate-1/2, constraint-length-7
convolutional code (generators 133 and 171 octal) into 220 coded bits, and
decoded with a soft-decision Viterbi decoder.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
from numpy.typing import NDArray

SERIAL_BITS = 64
CHECK_BITS = 40
INFO_BITS = SERIAL_BITS + CHECK_BITS
MEMORY = 6
CODED_BITS = 2 * (INFO_BITS + MEMORY)
_GENERATORS = (0o133, 0o171)
_STATES = 1 << MEMORY

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def derive_brand_key(master: bytes, brand_id: str) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the master secret into a 32-byte brand key."""
    prk = hmac.new(b"partvault-watermark-v1", master, hashlib.sha256).digest()
    info = b"brand:" + brand_id.encode()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def check_value(key: bytes, serial: int) -> int:
    """Keyed check of a serial: only the brand key can produce a valid pair."""
    mac = hmac.new(key, b"check" + serial.to_bytes(8, "big"), hashlib.sha256).digest()
    return int.from_bytes(mac[: CHECK_BITS // 8], "big")


def _to_bits(value: int, width: int) -> list[int]:
    return [(value >> (width - 1 - i)) & 1 for i in range(width)]


def _from_bits(bits: IntArray) -> int:
    return int("".join(str(int(b)) for b in bits), 2) if len(bits) else 0


def _parity(x: int) -> int:
    return bin(x).count("1") & 1


# For each 7-bit register (previous 6-bit state << 1 | input bit): the 2 outputs.
_OUTPUTS = np.array(
    [[_parity(reg & g) for g in _GENERATORS] for reg in range(2 * _STATES)], dtype=np.int64
)


def encode(serial: int, key: bytes) -> IntArray:
    """Serial -> 220 coded bits (0/1) carrying serial, check value and tail."""
    if not 0 <= serial < 1 << SERIAL_BITS:
        raise ValueError("serial must be an unsigned 64-bit integer")
    info = _to_bits(serial, SERIAL_BITS) + _to_bits(check_value(key, serial), CHECK_BITS)
    state, out = 0, []
    for bit in [*info, *([0] * MEMORY)]:
        reg = (state << 1) | bit
        out.extend(_OUTPUTS[reg])
        state = reg & (_STATES - 1)
    return np.array(out, dtype=np.int64)


def viterbi(soft: FloatArray) -> IntArray:
    """Soft-decision decoding; soft[i] > 0 favours coded bit 0. Returns info bits."""
    symbols = 1.0 - 2.0 * _OUTPUTS  # (128, 2): +1 for bit 0
    regs = np.arange(2 * _STATES)
    steps = len(soft) // 2
    metric = np.full(_STATES, -np.inf)
    metric[0] = 0.0
    choices = np.empty((steps, _STATES), dtype=np.int64)
    for t in range(steps):
        branch = metric[regs >> 1] + symbols @ soft[2 * t : 2 * t + 2]
        # registers ending in state s: s and s | 64 (differ in the oldest bit)
        pair = branch.reshape(2, _STATES)
        pick = np.argmax(pair, axis=0)
        choices[t] = pick
        metric = pair[pick, np.arange(_STATES)]
    bits = np.empty(steps, dtype=np.int64)
    state = 0
    for t in range(steps - 1, -1, -1):
        reg = state | (int(choices[t, state]) << MEMORY)
        bits[t] = reg & 1
        state = reg >> 1
    return bits[:INFO_BITS]


def decode(soft: FloatArray, key: bytes) -> tuple[int, bool]:
    """Decode soft coded bits; returns (serial, whether the keyed check holds)."""
    info = viterbi(soft)
    serial = _from_bits(info[:SERIAL_BITS])
    check = _from_bits(info[SERIAL_BITS:])
    return serial, hmac.compare_digest(
        check.to_bytes(CHECK_BITS // 8, "big"),
        check_value(key, serial).to_bytes(CHECK_BITS // 8, "big"),
    )
