"""RFC 9162 Merkle tree hashing, proofs and proof verification (pure, no I/O).

Proofs are generated from the hashes of *perfect* subtrees: the node at
``(level, index)`` is the tree hash of leaves ``[index·2^level, (index+1)·2^level)``.
Any range the RFC 9162 recursion needs is a short run of such nodes, so a
proof at any size needs O(log n) node reads, fetched in one call to a
`HashReader`. Verifiers follow RFC 9162 §2.1.3.2 and §2.1.4.2 literally and
raise one typed error, `AuditVerificationError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from licensing.audit.errors import AuditRangeError, AuditStorageError, AuditVerificationError

Coord = tuple[int, int]
"""A perfect subtree: (level, index); level 0 holds the leaf hashes."""

HASH_SIZE = 32
MAX_PROOF_HASHES = 64
EMPTY_ROOT = hashlib.sha256(b"").digest()


class HashReader(Protocol):
    """Reads the stored hashes of perfect subtrees."""

    def get_nodes(self, coords: Collection[Coord]) -> Mapping[Coord, bytes]:
        """Return the hash of every requested node (all must exist)."""
        ...


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 ‖ entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 ‖ left ‖ right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n ≥ 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_nodes(start: int, end: int) -> list[Coord]:
    """The perfect subtrees, left to right, whose fold is MTH(D[start:end]).

    ``start`` must be a multiple of the power of two the RFC recursion aligns
    it to (true for every range a proof or root uses).
    """
    coords: list[Coord] = []
    pos = start
    for level in range((end - start).bit_length() - 1, -1, -1):
        if (end - start) >> level & 1:
            coords.append((level, pos >> level))
            pos += 1 << level
    return coords


def fold_range(hashes: Sequence[bytes]) -> bytes:
    """Combine a range's perfect subtree hashes (largest first) into its MTH."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges whose MTHs form PATH(index, D[size]), leaf side first."""
    _check_index(index, size)
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    return ranges[::-1]


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The ranges whose MTHs form PROOF(old_size, D[new_size]), bottom first."""
    _check_sizes(old_size, new_size)
    if old_size in (0, new_size):
        return []
    ranges: list[tuple[int, int]] = []
    lo, hi, whole = 0, new_size, True
    while old_size - lo != hi - lo:
        k = _split(hi - lo)
        if old_size - lo <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, whole = lo + k, False
    if not whole:
        ranges.append((lo, hi))
    return ranges[::-1]


def resolve(reader: HashReader, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """Hash each range with one batched read of the perfect subtrees it needs."""
    plans = [range_nodes(lo, hi) for lo, hi in ranges]
    wanted = {c for plan in plans for c in plan}
    found = reader.get_nodes(wanted)
    missing = wanted - found.keys()
    if missing:
        raise AuditStorageError(
            f"{len(missing)} tree nodes are not stored", code="audit-node-missing"
        )
    return [fold_range([found[c] for c in plan]) for plan in plans]


def tree_root(reader: HashReader, size: int) -> bytes:
    """MTH of the first ``size`` leaves (SHA-256("") for the empty tree)."""
    _check_sizes(0, size)
    return resolve(reader, [(0, size)])[0]


def inclusion_proof(reader: HashReader, index: int, size: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 inclusion proof for leaf ``index`` in a tree of ``size``."""
    return resolve(reader, inclusion_ranges(index, size))


def consistency_proof(reader: HashReader, old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1 consistency proof from ``old_size`` to ``new_size``."""
    return resolve(reader, consistency_ranges(old_size, new_size))


def _check_index(index: int, size: int) -> None:
    if not 0 <= index < size:
        raise AuditRangeError(
            f"leaf index {index} is not below tree size {size}", code="leaf-index-out-of-range"
        )


def _check_sizes(old_size: int, new_size: int) -> None:
    if not 0 <= old_size <= new_size:
        raise AuditRangeError(
            f"sizes {old_size} and {new_size} are not ordered", code="proof-size-out-of-range"
        )


def _fail(code: str, detail: str) -> AuditVerificationError:
    return AuditVerificationError(detail, code=code)


def _check_hashes(proof: Sequence[bytes], *more: bytes) -> None:
    if len(proof) > MAX_PROOF_HASHES:
        raise _fail("proof-size-out-of-range", f"proof has {len(proof)} hashes")
    if any(len(h) != HASH_SIZE for h in (*proof, *more)):
        raise _fail("hash-length-invalid", "every hash must be 32 bytes")


def _shift_until_odd(fn: int, sn: int) -> tuple[int, int]:
    while fn and not fn & 1:
        fn, sn = fn >> 1, sn >> 1
    return fn, sn


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: the root an inclusion proof implies, or raise."""
    _check_hashes(proof, leaf)
    if not 0 <= index < size:
        raise _fail("inclusion-proof-invalid", "leaf index not below tree size")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise _fail("inclusion-proof-invalid", "proof has too many hashes")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _shift_until_odd(fn, sn)
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise _fail("inclusion-proof-invalid", "proof has too few hashes")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise `AuditVerificationError` unless ``proof`` puts ``leaf`` at ``index``."""
    if root_from_inclusion(leaf, index, size, proof) != root:
        raise _fail("inclusion-proof-invalid", "proof does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2: raise unless the old tree is a prefix of the new one."""
    _check_hashes(proof, old_root, new_root)
    if not 0 <= old_size <= new_size:
        raise _fail("consistency-proof-invalid", "old size exceeds new size")
    if old_size in (0, new_size):
        _check_trivial(old_size, new_size, old_root, new_root, proof)
        return
    fr, sr, sn = _walk_consistency(old_size, new_size, old_root, proof)
    if sn != 0:
        raise _fail("consistency-proof-invalid", "proof has too few hashes")
    if fr != old_root or sr != new_root:
        raise _fail("consistency-proof-invalid", "proof does not lead to both roots")


def _check_trivial(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    if proof:
        raise _fail("consistency-proof-invalid", "a trivial proof must be empty")
    if old_size == new_size and old_root != new_root:
        raise _fail("consistency-proof-invalid", "equal sizes with different roots")


def _walk_consistency(
    old_size: int, new_size: int, old_root: bytes, proof: Sequence[bytes]
) -> tuple[bytes, bytes, int]:
    path = list(proof)
    if not path:
        raise _fail("consistency-proof-invalid", "proof is empty")
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise _fail("consistency-proof-invalid", "proof has too many hashes")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            fn, sn = _shift_until_odd(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr, sr, sn


class CompactRange:
    """The right border of a growing tree: O(log n) memory, roots at any size.

    Used to append leaves (yielding each perfect subtree as it completes) and
    by the offline verifier to recompute the root at every checkpoint.
    """

    def __init__(self, size: int = 0, border: Sequence[bytes] = ()) -> None:
        coords = range_nodes(0, size)
        if len(coords) != len(border):
            raise ValueError("border does not match size")
        self.size = size
        self._stack: list[tuple[int, bytes]] = [
            (lvl, h) for (lvl, _), h in zip(coords, border, strict=True)
        ]

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; return every node (level, index, hash) it completes."""
        index = self.size
        made = [(0, index, leaf)]
        level, h = 0, leaf
        while self._stack and self._stack[-1][0] == level:
            _, left = self._stack.pop()
            level, h = level + 1, node_hash(left, h)
            made.append((level, index >> level, h))
        self._stack.append((level, h))
        self.size += 1
        return made

    def root(self) -> bytes:
        """MTH of all leaves appended so far."""
        return fold_range([h for _, h in self._stack])
