"""The DPoP replay cache: one row per proof seen, shared by every API process.

A proof's ``jti`` is stored as ``SHA-256(jkt ‖ 0x00 ‖ jti)`` (fixed length, scoped
to the facility key) with the instant after which the proof is stale anyway.
The row is written with ``INSERT … ON CONFLICT DO NOTHING``: a duplicate key in
this or any other process on the same database inserts nothing, which is the
replay. No statement fails, so the caller's transaction stays usable (this
replaces a SAVEPOINT, which pysqlite silently turns into a COMMIT when it is
the first statement of a transaction). A concurrent, uncommitted insert of the
same key makes the second insert wait for the first transaction's outcome.
Expired rows are removed by `prune_replay_cache`, which the server runs in the
background (`api.housekeeping`). Both functions execute in the caller's
transaction; the caller commits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlmodel import Field, Session, SQLModel

from inventory.db import UTCDateTime, delete_where, insert_all_absent, insert_if_absent
from inventory.errors import Unauthorized


class DpopReplay(SQLModel, table=True):
    """A proof already accepted, remembered until it would be stale."""

    __tablename__ = "dpop_replay"

    digest: str = Field(primary_key=True, max_length=64)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


class ReplayGuard(Protocol):
    """Remembers proof identifiers; refuses one seen before."""

    def remember(self, jti: str, expires: datetime) -> None:
        """Record `jti` until `expires`, or raise `Unauthorized` code ``dpop-replayed``."""
        ...


def replay_digest(jti: str) -> str:
    """The stored form of a (key-scoped) proof identifier."""
    return hashlib.sha256(jti.encode("utf-8")).hexdigest()


def replayed() -> Unauthorized:
    """The refusal of a proof seen before."""
    return Unauthorized("proof of possession already used", code="dpop-replayed")


def remember(session: Session, jti: str, expires: datetime) -> None:
    """Record `jti` until `expires`; a duplicate raises ``dpop-replayed``."""
    row = {"digest": replay_digest(jti), "expires_at": expires}
    if not insert_if_absent(session, DpopReplay, row, "digest"):
        raise replayed()


def prune_replay_cache(session: Session, now: datetime, limit: int | None = None) -> int:
    """Delete entries whose proofs are stale at `now` (at most `limit`); how many."""
    table = DpopReplay.__table__  # type: ignore[attr-defined]
    return delete_where(session, table.c.digest, table.c.expires_at < now, limit)


class DbReplayGuard:
    """A `ReplayGuard` on the caller's session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def remember(self, jti: str, expires: datetime) -> None:
        """See `remember`."""
        remember(self._session, jti, expires)


class ReplayBatch:
    """The proofs of several requests, remembered together by one statement.

    Each request's check gets a guard of its own (`guard`), which records its
    proof instead of writing it; `remember_all` then inserts every recorded
    proof with one ``INSERT`` (in digest order, one lock order for every
    process) and names the requests whose proofs were seen before: committed
    earlier, by a concurrent transaction (the insert waits for its outcome),
    or by an earlier request of the same batch.
    """

    def __init__(self) -> None:
        self._proofs: dict[Hashable, tuple[str, datetime]] = {}

    def guard(self, request: Hashable) -> ReplayGuard:
        """The guard for `request`'s check: records its proof for `remember_all`."""
        return _Recording(self._proofs, request)

    def remember_all(self, session: Session) -> set[Hashable]:
        """Insert the recorded proofs; the requests whose proofs were seen before."""
        first: dict[str, Hashable] = {}
        repeated: set[Hashable] = set()
        for request, (jti, _) in self._proofs.items():
            digest = replay_digest(jti)
            if digest in first:
                repeated.add(request)
            else:
                first[digest] = request
        rows = [
            {"digest": digest, "expires_at": self._proofs[request][1]}
            for digest, request in sorted(first.items())
        ]
        inserted = insert_all_absent(session, DpopReplay, rows, "digest")
        self._proofs.clear()
        return repeated | {request for digest, request in first.items() if digest not in inserted}


@dataclass(frozen=True)
class _Recording:
    proofs: dict[Hashable, tuple[str, datetime]]
    request: Hashable

    def remember(self, jti: str, expires: datetime) -> None:
        self.proofs[self.request] = (jti, expires)
