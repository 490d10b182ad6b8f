"""Offline verification of a whole copy of the log (``partvault audit verify``).

Given every entry (index, body or None when redacted, leaf hash), the signed
checkpoints and the pinned verifier key, recompute each leaf hash from its body,
the root at every checkpoint size, check every signature, and check that the
log still extends the checkpoint the brand saved last time (``since``): its
root must be the root recomputed at its size from the very entries that also
produce the newer roots, which is exactly what a consistency proof shows.
Streams the entries in O(log n) memory. Any mismatch raises one
`AuditVerificationError` whose ``code`` names it.

Key rotations: a handover checkpoint names the retired and the current key
and is signed by both. From the pinned key, trust follows every valid
handover, forwards and backwards; each key may only sign the sizes of its
own era (from the handover that introduced it to the one that retired it),
so a retired key cannot sign the log's future.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from licensing.audit import merkle
from licensing.audit.checkpoint import (
    Checkpoint,
    VerifierKey,
    parse_and_verify_checkpoint,
    parse_verifier_key,
    read_checkpoint,
    verifier_key_string,
    verify_note,
)
from licensing.audit.errors import AuditVerificationError
from licensing.audit.merkle import CompactRange

EntryTuple = tuple[int, bytes | None, bytes]


@dataclass(frozen=True)
class VerifyReport:
    """What a successful verification covered."""

    entries: int
    bodies_checked: int
    redacted: int
    checkpoints_verified: int
    latest: Checkpoint
    since_size: int | None
    #: the verifier keys trusted through key-rotation handovers, the pinned one included
    keys: tuple[str, ...] = ()

    @property
    def uncovered(self) -> int:
        """Entries appended after the latest checkpoint (not yet signed)."""
        return self.entries - self.latest.size


def _fail(code: str, detail: str) -> AuditVerificationError:
    return AuditVerificationError(detail, code=code)


class _Walker:
    """Replays entries into a compact range and checks roots at checkpoint sizes."""

    def __init__(self, targets: dict[int, list[Checkpoint]], since: Checkpoint | None) -> None:
        self.targets = targets
        self.since = since
        self.tree = CompactRange()
        self.bodies = 0
        self.redacted = 0
        self._check_roots()

    def add(self, index: int, body: bytes | None, leaf: bytes) -> None:
        expected = self.tree.size
        if index != expected:
            code = "entry-gap" if index > expected else "entry-order-invalid"
            raise _fail(code, f"expected entry {expected}, got {index}")
        if body is None:
            self.redacted += 1
        elif merkle.leaf_hash(body) != leaf:
            raise _fail("leaf-hash-mismatch", f"entry {index}: body does not hash to its leaf")
        else:
            self.bodies += 1
        if len(leaf) != merkle.HASH_SIZE:
            raise _fail("hash-length-invalid", f"entry {index}: leaf hash is not 32 bytes")
        self.tree.append(leaf)
        self._check_roots()

    def _check_roots(self) -> None:
        size = self.tree.size
        if size not in self.targets:
            return
        root = self.tree.root()
        for checkpoint in self.targets.pop(size):
            if checkpoint.root != root:
                code = "since-inconsistent" if checkpoint is self.since else "root-mismatch"
                raise _fail(code, f"entries do not produce the signed root at size {size}")


def _targets(checkpoints: Iterable[Checkpoint]) -> dict[int, list[Checkpoint]]:
    targets: dict[int, list[Checkpoint]] = defaultdict(list)
    for checkpoint in checkpoints:
        targets[checkpoint.size].append(checkpoint)
    return dict(targets)


@dataclass(frozen=True)
class _Era:
    """A trusted key and the checkpoint sizes it may sign (``last`` None: still current)."""

    key: VerifierKey
    first: int
    last: int | None

    def covers(self, size: int) -> bool:
        return self.first <= size and (self.last is None or size <= self.last)


def _name(key: VerifierKey) -> str:
    return verifier_key_string(key.name, key.public_key)


def _signed_by(note: str, key: VerifierKey) -> bool:
    try:
        verify_note(note, key)
    except AuditVerificationError:
        return False
    return True


def _handovers(checkpoints: Iterable[Checkpoint]) -> list[tuple[int, VerifierKey, VerifierKey]]:
    """(size, retired, current) of every handover signed by both keys it names."""
    found = []
    for checkpoint in checkpoints:
        if checkpoint.rotation is not None:
            retired, current = (parse_verifier_key(k) for k in checkpoint.rotation)
            if _signed_by(checkpoint.note, retired) and _signed_by(checkpoint.note, current):
                found.append((checkpoint.size, retired, current))
    return found


def _key_eras(checkpoints: Sequence[Checkpoint], pinned: VerifierKey) -> list[_Era]:
    """The keys linked to the pinned one by valid handovers, each with its era."""
    handovers = _handovers(checkpoints)
    trusted = {_name(pinned): pinned}
    grew = True
    while grew:
        grew = False
        for _, retired, current in handovers:
            ends = {_name(retired): retired, _name(current): current}
            if ends.keys() & trusted.keys() and not ends.keys() <= trusted.keys():
                trusted |= ends
                grew = True
    return [
        _Era(
            key,
            max((s for s, _, c in handovers if _name(c) == name), default=0),
            min((s for s, r, _ in handovers if _name(r) == name), default=None),
        )
        for name, key in trusted.items()
    ]


def _verified(checkpoint: Checkpoint, eras: Sequence[_Era]) -> Checkpoint:
    """The checkpoint verified by a key trusted at its size, or raise.

    Each trusted key is tried once; when none verifies, a failing signature
    by a trusted key says more than "unknown key" and is the error raised.
    """
    failures = []
    for era in eras:
        if era.covers(checkpoint.size):
            try:
                return parse_and_verify_checkpoint(checkpoint.note, era.key)
            except AuditVerificationError as exc:
                failures.append(exc)
    unknown = _fail(
        "checkpoint-unknown-key", f"no signature by a key trusted at size {checkpoint.size}"
    )
    raise next((f for f in failures if f.code != "checkpoint-unknown-key"), unknown)


def verify_log(
    entries: Iterable[EntryTuple],
    checkpoints: Sequence[str],
    verifier_key: str,
    since: str | None = None,
) -> VerifyReport:
    """Verify a full copy of the log against signed checkpoints, or raise."""
    read = [read_checkpoint(note) for note in checkpoints]
    if not read:
        raise _fail("checkpoint-missing", "at least one signed checkpoint is needed")
    eras = _key_eras(read, parse_verifier_key(verifier_key))
    verified = [_verified(checkpoint, eras) for checkpoint in read]
    latest = max(verified, key=lambda c: c.size)
    old = _verified(read_checkpoint(since), eras) if since is not None else None
    if old is not None and old.size > latest.size:
        raise _fail("log-rolled-back", f"log shrank from {old.size} to {latest.size}")
    walker = _Walker(_targets([*verified, *([old] if old else [])]), old)
    for index, body, leaf in entries:
        walker.add(index, body, leaf)
    if walker.targets:
        missing = min(walker.targets)
        raise _fail("log-truncated", f"entries end at {walker.tree.size}, checkpoint has {missing}")
    return VerifyReport(
        entries=walker.tree.size,
        bodies_checked=walker.bodies,
        redacted=walker.redacted,
        checkpoints_verified=len(verified),
        latest=latest,
        since_size=old.size if old else None,
        keys=tuple(_name(era.key) for era in eras),
    )
