"""The audit log in the database: append, checkpoints, proofs and listings.

Every function takes the caller's sync ``Session`` and never commits: an append
lands in the same transaction as the state change it records. Appends are
serialized by incrementing the single ``audit_head`` row *first*
(``UPDATE … SET size = size + n … RETURNING size``): the row lock on
PostgreSQL, the write lock on SQLite, so the index is always read under the lock
and a stale snapshot can only fail, never append at a stale index.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from inventory.db import Prepared, insert_all, metadata, utcnow
from licensing.audit import merkle
from licensing.audit.checkpoint import NoteSigner, sign_checkpoint
from licensing.audit.errors import AuditRangeError, AuditStorageError
from licensing.audit.events import (
    AuditEvent,
    FactValue,
    canonical_document,
    encode_document,
    encode_subject,
)
from licensing.audit.merkle import CompactRange, Coord
from licensing.audit.models import HEAD_ID, AuditCheckpoint, AuditEntry, AuditNode

MAX_ENTRIES_PAGE = 1000
_entry = metadata.tables["audit_entry"]
_node = metadata.tables["audit_node"]
_head = metadata.tables["audit_head"]
_checkpoint = metadata.tables["audit_checkpoint"]


@dataclass(frozen=True)
class AuditReceipt:
    """Where an event landed: its leaf index and leaf hash."""

    index: int
    leaf_hash: bytes


@dataclass(frozen=True)
class SignedCheckpoint:
    """A signed tree head as served to clients."""

    origin: str
    size: int
    root: bytes
    signed_note: str
    created_at: datetime


@dataclass(frozen=True)
class EntryView:
    """One log entry as listed.

    ``redacted`` entries (another brand's) carry only index and leaf hash.
    """

    index: int
    leaf_hash: bytes
    redacted: bool
    event_type: str | None = None
    brand_id: str | None = None
    actor: str | None = None
    subject: str | None = None
    created_at: datetime | None = None
    body: bytes | None = None


class DbHashReader:
    """A `merkle.HashReader` over ``audit_node``: one query per batch of nodes."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.queries = 0
        self.rows = 0

    def get_nodes(self, coords: Collection[Coord]) -> Mapping[Coord, bytes]:
        """Fetch the hashes of the given perfect subtrees in one indexed SELECT."""
        if not coords:
            return {}
        ordered = sorted(coords)
        params: dict[str, int] = {}
        for k, (level, index) in enumerate(ordered):
            params[f"l{k}"], params[f"i{k}"] = level, index
        rows = _nodes_query(len(ordered)).rows(self.session, params)
        self.queries += 1
        self.rows += len(rows)
        return {(lvl, idx): bytes(h) for lvl, idx, h in rows}


@lru_cache(maxsize=256)
def _nodes_query(count: int) -> Prepared:
    """SELECT ``count`` nodes by primary key; built and compiled once per count."""
    c = _node.c
    terms = [
        sa.and_(c.level == sa.bindparam(f"l{k}"), c.index == sa.bindparam(f"i{k}"))
        for k in range(count)
    ]
    return Prepared(sa.select(c.level, c.index, c.hash).where(sa.or_(*terms)))


_GROW_HEAD = Prepared(
    sa.update(_head)
    .where(_head.c.id == HEAD_ID)
    .values(size=_head.c.size + sa.bindparam("count"))
    .returning(_head.c.size)
)


def _reserve(session: Session, count: int) -> int:
    """Lock the head, grow it by ``count`` and return the first new index."""
    grown = _GROW_HEAD.rows(session, {"count": count})
    if not grown:
        _create_head(session)
        grown = _GROW_HEAD.rows(session, {"count": count})
    return int(grown[0][0]) - count


def _create_head(session: Session) -> None:
    """Insert the head row if no process did yet (race-free on both backends)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(_head).values(id=HEAD_ID, size=0).on_conflict_do_nothing())


def _border(session: Session, size: int) -> CompactRange:
    coords = merkle.range_nodes(0, size)
    found = DbHashReader(session).get_nodes(coords)
    if len(found) != len(coords):
        raise AuditStorageError("the tree border is not stored", code="audit-node-missing")
    return CompactRange(size, [found[c] for c in coords])


def append_events(session: Session, events: Sequence[AuditEvent]) -> list[AuditReceipt]:
    """Append events in order in the caller's transaction; flushes, never commits."""
    if not events:
        return []
    docs = [canonical_document(e) for e in events]
    session.flush()
    start = _reserve(session, len(events))
    tree = _border(session, start)
    now = utcnow()
    entries: list[dict[str, object]] = []
    nodes: list[dict[str, object]] = []
    receipts: list[AuditReceipt] = []
    for offset, (event, doc) in enumerate(zip(events, docs, strict=True)):
        body = encode_document(doc)
        receipt = AuditReceipt(start + offset, merkle.leaf_hash(body))
        entries.append(_entry_row(receipt, event, body, now))
        completed = tree.append(receipt.leaf_hash)
        nodes += [{"level": lv, "index": ix, "hash": h} for lv, ix, h in completed]
        receipts.append(receipt)
    insert_all(session, AuditEntry, entries)
    insert_all(session, AuditNode, nodes)
    return receipts


def append_event(session: Session, event: AuditEvent) -> AuditReceipt:
    """Append one event in the caller's transaction and return its receipt."""
    return append_events(session, [event])[0]


_QUEUE = "partvault.audit.queue"


@contextmanager
def queued_appends(session: Session) -> Iterator[list[AuditEvent]]:
    """While open, `record_event` queues events on the session; when the block ends
    without error they are appended in order as one batch (one head update, one
    border read, two inserts, however many events). The caller may truncate the
    yielded queue to drop the events of work it rolled back."""
    queue: list[AuditEvent] = []
    session.info[_QUEUE] = queue
    try:
        yield queue
    finally:
        session.info.pop(_QUEUE, None)
    append_events(session, queue)


def record_event(session: Session, event: AuditEvent) -> None:
    """Append `event` in the caller's transaction, or queue it inside `queued_appends`."""
    queue: list[AuditEvent] | None = session.info.get(_QUEUE)
    if queue is None:
        append_event(session, event)
    else:
        queue.append(event)


def log_event(
    session: Session,
    kind: str,
    actor: str,
    *,
    subject: Mapping[str, str],
    brand_id: str | None = None,
    **facts: FactValue,
) -> None:
    """`record_event` of the event made of these parts (``kind`` is its type)."""
    event = AuditEvent(type=kind, actor=actor, brand_id=brand_id, subject=subject, facts=facts)
    record_event(session, event)


def _entry_row(
    receipt: AuditReceipt, event: AuditEvent, body: bytes, now: datetime
) -> dict[str, object]:
    return {
        "index": receipt.index,
        "event_type": event.type,
        "brand_id": event.brand_id,
        "actor": event.actor,
        "subject": encode_subject(event.subject),
        "created_at": now,
        "body": body,
        "leaf_hash": receipt.leaf_hash,
    }


def log_size(session: Session) -> int:
    """The number of committed entries visible to this transaction."""
    size = session.execute(sa.select(_head.c.size).where(_head.c.id == HEAD_ID)).scalar()
    return int(size or 0)


def _check_size(session: Session, size: int) -> None:
    current = log_size(session)
    if not 0 <= size <= current:
        raise AuditRangeError(
            f"size {size} is not between 0 and the log size {current}",
            code="proof-size-out-of-range",
        )


def tree_root(session: Session, size: int) -> bytes:
    """The root hash at any size up to the current one (O(log n) rows)."""
    _check_size(session, size)
    return merkle.tree_root(DbHashReader(session), size)


def inclusion_proof(session: Session, index: int, size: int) -> list[bytes]:
    """Inclusion proof of leaf ``index`` in the tree of the stated ``size``."""
    _check_size(session, size)
    return merkle.inclusion_proof(DbHashReader(session), index, size)


def consistency_proof(session: Session, old_size: int, new_size: int) -> list[bytes]:
    """Consistency proof between two stated sizes (0 ≤ old ≤ new ≤ log size)."""
    _check_size(session, new_size)
    return merkle.consistency_proof(DbHashReader(session), old_size, new_size)


def latest_checkpoint(session: Session, signer: NoteSigner, origin: str) -> SignedCheckpoint:
    """The signed checkpoint at the current size, signing and storing a new one if needed.

    Adds a row when it signs: the caller commits (a read-only caller may roll
    back; the note is still valid, it is just not kept in the history).
    """
    size = log_size(session)
    stored = _stored_checkpoint(session, origin, size)
    if stored is not None:
        return stored
    return _sign_and_store(session, origin, size, signer)


def handover_checkpoint(
    session: Session, retired: NoteSigner, current: NoteSigner, origin: str
) -> SignedCheckpoint:
    """Sign the current size with both keys of a rotation and store it (no commit).

    The note names both verifier keys, so a brand holding either key learns
    the other from a checkpoint both signed (see `licensing.audit.verify`).
    """
    return _sign_and_store(session, origin, log_size(session), retired, handover_to=current)


def _sign_and_store(
    session: Session,
    origin: str,
    size: int,
    signer: NoteSigner,
    handover_to: NoteSigner | None = None,
) -> SignedCheckpoint:
    root = merkle.tree_root(DbHashReader(session), size)
    now = utcnow()
    note = sign_checkpoint(origin, size, root, signer, now, handover_to=handover_to)
    row = AuditCheckpoint(origin=origin, size=size, root=root, signed_note=note, created_at=now)
    session.add(row)
    session.flush()
    return SignedCheckpoint(origin, size, root, note, now)


def _stored_checkpoint(session: Session, origin: str, size: int) -> SignedCheckpoint | None:
    stmt = (
        sa.select(_checkpoint)
        .where(_checkpoint.c.origin == origin, _checkpoint.c.size == size)
        .order_by(_checkpoint.c.id.desc())
        .limit(1)
    )
    row = session.execute(stmt).first()
    if row is None:
        return None
    return SignedCheckpoint(row.origin, row.size, bytes(row.root), row.signed_note, row.created_at)


def checkpoints(session: Session, origin: str, since_size: int = 0) -> list[SignedCheckpoint]:
    """Every stored checkpoint of ``origin`` with size ≥ ``since_size``, oldest first."""
    stmt = (
        sa.select(_checkpoint)
        .where(_checkpoint.c.origin == origin, _checkpoint.c.size >= since_size)
        .order_by(_checkpoint.c.id)
    )
    return [
        SignedCheckpoint(r.origin, r.size, bytes(r.root), r.signed_note, r.created_at)
        for r in session.execute(stmt)
    ]


def entries(
    session: Session, start: int, limit: int, *, brand_id: str | None = None
) -> list[EntryView]:
    """Entries ``[start, start+limit)`` in index order.

    With ``brand_id`` set (a brand reading the log), other brands' entries
    (and brand-less ones) are redacted to index and leaf hash: enough for the
    brand to recompute every root, nothing about another brand's business.
    """
    if start < 0 or not 0 < limit <= MAX_ENTRIES_PAGE:
        raise AuditRangeError(
            f"start must be ≥ 0 and limit 1..{MAX_ENTRIES_PAGE}", code="entries-range-invalid"
        )
    stmt = (
        sa.select(_entry)
        .where(_entry.c.index >= start, _entry.c.index < start + limit)
        .order_by(_entry.c.index)
    )
    return [_view(row, brand_id) for row in session.execute(stmt)]


def _view(row: sa.Row[tuple[object, ...]], reader_brand: str | None) -> EntryView:
    m = row._mapping
    index, leaf = int(m["index"]), bytes(m["leaf_hash"])
    if reader_brand is not None and m["brand_id"] != reader_brand:
        return EntryView(index, leaf, redacted=True)
    return EntryView(
        index,
        leaf,
        redacted=False,
        event_type=m["event_type"],
        brand_id=m["brand_id"],
        actor=m["actor"],
        subject=m["subject"],
        created_at=m["created_at"],
        body=bytes(m["body"]),
    )
