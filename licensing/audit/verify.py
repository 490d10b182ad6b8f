"""Offline verification of a whole copy of the log (``partvault audit verify``).

Given every entry (index, body or None when redacted, leaf hash), the signed
checkpoints and the pinned verifier key, recompute each leaf hash from its body,
the root at every checkpoint size, check every signature, and check that the
log still extends the checkpoint the brand saved last time (``since``): its
root must be the root recomputed at its size from the very entries that also
produce the newer roots, which is exactly what a consistency proof shows.
Streams the entries in O(log n) memory. Any mismatch raises one
`AuditVerificationError` whose ``code`` names it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from licensing.audit import merkle
from licensing.audit.checkpoint import Checkpoint, parse_and_verify_checkpoint, parse_verifier_key
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


def verify_log(
    entries: Iterable[EntryTuple],
    checkpoints: Sequence[str],
    verifier_key: str,
    since: str | None = None,
) -> VerifyReport:
    """Verify a full copy of the log against signed checkpoints, or raise."""
    key = parse_verifier_key(verifier_key)
    verified = [parse_and_verify_checkpoint(note, key) for note in checkpoints]
    if not verified:
        raise _fail("checkpoint-missing", "at least one signed checkpoint is needed")
    latest = max(verified, key=lambda c: c.size)
    old = parse_and_verify_checkpoint(since, key) if since is not None else None
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
    )
