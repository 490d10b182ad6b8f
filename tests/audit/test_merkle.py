"""RFC 9162 tree hashing, proofs and verifiers against independent references."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from functools import cache

import pytest

from licensing.audit import merkle
from licensing.audit.errors import AuditRangeError, AuditVerificationError

# The RFC 6962 reference leaves and roots used by certificate-transparency(-go).
CT_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index, tree size, proof) from certificate-transparency-go's verifier tests.
CT_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CT_CONSISTENCY = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

ENTRIES = tuple(f"entry {i}".encode() for i in range(64))


# --- independent reference: RFC 6962 §2.1 recursions, straight from the text ---


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def mth(d: tuple[bytes, ...]) -> bytes:
    if not d:
        return sha(b"")
    if len(d) == 1:
        return sha(b"\x00" + d[0])
    k = split(len(d))
    return sha(b"\x01" + mth(d[:k]) + mth(d[k:]))


def ref_path(m: int, d: tuple[bytes, ...]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = split(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), mth(d[k:])]
    return [*ref_path(m - k, d[k:]), mth(d[:k])]


def ref_subproof(m: int, d: tuple[bytes, ...], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [mth(d)]
    k = split(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], b), mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), mth(d[:k])]


def ref_proof(m: int, d: tuple[bytes, ...]) -> list[bytes]:
    return [] if m in (0, len(d)) else ref_subproof(m, d, True)


class RefReader:
    """Perfect subtree hashes computed by the reference MTH; counts reads."""

    def __init__(self, entries: tuple[bytes, ...]) -> None:
        self.entries = entries
        self.reads = 0

    def get_nodes(self, coords: Collection[tuple[int, int]]) -> Mapping[tuple[int, int], bytes]:
        self.reads += len(coords)
        return {(lvl, i): mth(self.entries[i << lvl : (i + 1) << lvl]) for lvl, i in coords}


# --- tests ---


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert merkle.EMPTY_ROOT.hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert merkle.tree_root(RefReader(()), 0) == merkle.EMPTY_ROOT
    assert merkle.CompactRange().root() == merkle.EMPTY_ROOT


def test_ct_reference_roots() -> None:
    tree = merkle.CompactRange()
    reader = RefReader(tuple(CT_LEAVES))
    for n, expected in enumerate(CT_ROOTS, start=1):
        tree.append(merkle.leaf_hash(CT_LEAVES[n - 1]))
        assert tree.root().hex() == expected
        assert merkle.tree_root(reader, n).hex() == expected


@pytest.mark.parametrize(("index", "size", "proof"), CT_INCLUSION)
def test_ct_reference_inclusion_proofs(index: int, size: int, proof: list[str]) -> None:
    reader = RefReader(tuple(CT_LEAVES))
    assert [p.hex() for p in merkle.inclusion_proof(reader, index, size)] == proof
    leaf = merkle.leaf_hash(CT_LEAVES[index])
    merkle.verify_inclusion(
        leaf, index, size, [bytes.fromhex(p) for p in proof], bytes.fromhex(CT_ROOTS[size - 1])
    )


@pytest.mark.parametrize(("old", "new", "proof"), CT_CONSISTENCY)
def test_ct_reference_consistency_proofs(old: int, new: int, proof: list[str]) -> None:
    reader = RefReader(tuple(CT_LEAVES))
    assert [p.hex() for p in merkle.consistency_proof(reader, old, new)] == proof
    merkle.verify_consistency(
        old,
        new,
        bytes.fromhex(CT_ROOTS[old - 1]),
        bytes.fromhex(CT_ROOTS[new - 1]),
        [bytes.fromhex(p) for p in proof],
    )


def test_c2sp_worked_example_seven_leaves() -> None:
    d = tuple(f"d{i}".encode() for i in range(7))
    a, b, c, dd, e, f, g = (merkle.leaf_hash(x) for x in d)
    h, i, j = merkle.node_hash(a, b), merkle.node_hash(c, dd), merkle.node_hash(e, f)
    k, lft = merkle.node_hash(h, i), merkle.node_hash(j, g)
    reader = RefReader(d)
    assert merkle.tree_root(reader, 7) == merkle.node_hash(k, lft)
    assert merkle.inclusion_proof(reader, 0, 7) == [b, i, lft]
    assert merkle.inclusion_proof(reader, 3, 7) == [c, h, lft]
    assert merkle.inclusion_proof(reader, 4, 7) == [f, g, k]
    assert merkle.inclusion_proof(reader, 6, 7) == [j, k]
    assert merkle.consistency_proof(reader, 3, 7) == [c, dd, h, lft]
    assert merkle.consistency_proof(reader, 4, 7) == [lft]
    assert merkle.consistency_proof(reader, 6, 7) == [j, g, k]


def test_inclusion_every_index_every_size_to_64() -> None:
    for n in range(1, 65):
        d = ENTRIES[:n]
        reader = RefReader(d)
        root = merkle.tree_root(reader, n)
        assert root == mth(d)
        for m in range(n):
            reader.reads = 0
            proof = merkle.inclusion_proof(reader, m, n)
            assert proof == ref_path(m, d)
            assert reader.reads <= 2 * n.bit_length()
            merkle.verify_inclusion(merkle.leaf_hash(d[m]), m, n, proof, root)


def test_consistency_every_old_size_every_size_to_64() -> None:
    for n in range(1, 65):
        d = ENTRIES[:n]
        reader = RefReader(d)
        new_root = mth(d)
        for m in range(n + 1):
            reader.reads = 0
            proof = merkle.consistency_proof(reader, m, n)
            assert proof == ref_proof(m, d)
            assert reader.reads <= 2 * n.bit_length()
            merkle.verify_consistency(m, n, mth(d[:m]), new_root, proof)


def test_compact_range_emits_every_perfect_subtree() -> None:
    tree = merkle.CompactRange()
    stored: dict[tuple[int, int], bytes] = {}
    for e in ENTRIES:
        for lvl, idx, h in tree.append(merkle.leaf_hash(e)):
            stored[(lvl, idx)] = h
    expected = {
        (lvl, i): mth(ENTRIES[i << lvl : (i + 1) << lvl])
        for lvl in range(7)
        for i in range(64 >> lvl)
    }
    assert stored == expected


def test_inclusion_verifier_rejects_tampering() -> None:
    d = ENTRIES[:13]
    reader = RefReader(d)
    root, leaf = mth(d), merkle.leaf_hash(d[6])
    proof = merkle.inclusion_proof(reader, 6, 13)
    bad_cases = [
        (leaf, 5, 13, proof, root),
        (leaf, 7, 13, proof, root),
        (leaf, 6, 26, proof, root),
        (leaf, 6, 6, proof, root),
        (leaf, 6, 13, proof[:-1], root),
        (leaf, 6, 13, [*proof, root], root),
        (leaf, 6, 13, [root, *proof], root),
        (merkle.leaf_hash(b"other"), 6, 13, proof, root),
        (leaf, 6, 13, proof, merkle.EMPTY_ROOT),
        (leaf, 13, 13, proof, root),
        *[
            (leaf, 6, 13, [*proof[:i], merkle.EMPTY_ROOT, *proof[i + 1 :]], root)
            for i in range(len(proof))
        ],
    ]
    for args in bad_cases:
        with pytest.raises(AuditVerificationError) as err:
            merkle.verify_inclusion(*args)
        assert err.value.code == "inclusion-proof-invalid"


def test_consistency_verifier_rejects_tampering() -> None:
    d = ENTRIES[:13]
    reader = RefReader(d)
    r5, r13 = mth(d[:5]), mth(d)
    proof = merkle.consistency_proof(reader, 5, 13)
    bad_cases = [
        (4, 13, r5, r13, proof),
        (6, 13, r5, r13, proof),
        (5, 26, r5, r13, proof),
        (5, 13, r13, r5, proof),
        (5, 13, r5, r13, []),
        (5, 13, r5, r13, proof[:-1]),
        (5, 13, r5, r13, [*proof, r5]),
        (5, 13, r5, r13, [proof[0], *proof]),
        (13, 5, r13, r5, proof),
        (5, 5, r5, r13, []),
        (0, 5, r5, r13, proof),
        *[
            (5, 13, r5, r13, [*proof[:i], merkle.EMPTY_ROOT, *proof[i + 1 :]])
            for i in range(len(proof))
        ],
    ]
    for args in bad_cases:
        with pytest.raises(AuditVerificationError) as err:
            merkle.verify_consistency(*args)
        assert err.value.code == "consistency-proof-invalid"


def test_verifiers_reject_wrong_hash_sizes() -> None:
    with pytest.raises(AuditVerificationError) as err:
        merkle.verify_inclusion(b"short", 0, 1, [], b"short")
    assert err.value.code == "hash-length-invalid"
    with pytest.raises(AuditVerificationError) as err:
        merkle.verify_consistency(1, 2, mth(ENTRIES[:1]), mth(ENTRIES[:2]), [b"x" * 65] * 65)
    assert err.value.code == "proof-size-out-of-range"


def test_proof_generation_rejects_bad_ranges() -> None:
    reader = RefReader(ENTRIES[:4])
    with pytest.raises(AuditRangeError) as err:
        merkle.inclusion_proof(reader, 4, 4)
    assert err.value.code == "leaf-index-out-of-range"
    with pytest.raises(AuditRangeError) as err:
        merkle.consistency_proof(reader, 3, 2)
    assert err.value.code == "proof-size-out-of-range"
