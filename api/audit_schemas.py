"""msgspec Structs for the audit log routes and the brand print reports.

Hashes, proofs and entry bodies travel as standard padded base64 (RFC 4648):
a client hashes the decoded ``body`` bytes exactly as stored.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import msgspec

from api.schemas import Output
from licensing.audit import EntryView, SignedCheckpoint


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --- audit log ---------------------------------------------------------------


class AuditKeyOut(Output):
    """The checkpoint signing key a brand pins (``golang.org/x/mod/sumdb/note`` format)."""

    origin: str
    verifier_key: str
    key_id: str


class CheckpointOut(Output):
    origin: str
    size: int
    root: str
    signed_note: str
    created_at: datetime

    @classmethod
    def of(cls, row: SignedCheckpoint) -> CheckpointOut:
        return cls(
            origin=row.origin,
            size=row.size,
            root=b64(row.root),
            signed_note=row.signed_note,
            created_at=row.created_at,
        )


class CheckpointsOut(Output):
    origin: str
    items: list[CheckpointOut]


class InclusionProofOut(Output):
    """Audit path of leaf ``index`` in the tree of ``size`` leaves (RFC 9162 §2.1.3)."""

    index: int
    size: int
    leaf_hash: str
    proof: list[str]


class ConsistencyProofOut(Output):
    """Proof that the tree of ``old_size`` is a prefix of ``new_size`` (RFC 9162 §2.1.4)."""

    old_size: int
    new_size: int
    proof: list[str]


class AuditEntryOut(Output):
    """One log entry; a redacted one (another brand's) carries only index and leaf hash."""

    index: int
    leaf_hash: str
    redacted: bool
    event_type: str | None = None
    brand_id: str | None = None
    actor: str | None = None
    subject: dict[str, str] | None = None
    created_at: datetime | None = None
    body: str | None = None

    @classmethod
    def of(cls, view: EntryView) -> AuditEntryOut:
        if view.redacted or view.body is None:
            return cls(index=view.index, leaf_hash=b64(view.leaf_hash), redacted=True)
        return cls(
            index=view.index,
            leaf_hash=b64(view.leaf_hash),
            redacted=False,
            event_type=view.event_type,
            brand_id=view.brand_id,
            actor=view.actor,
            subject=json.loads(view.subject) if view.subject else {},
            created_at=view.created_at,
            body=b64(view.body),
        )


class AuditEntriesOut(Output):
    """A page of entries in index order; ``next_start`` is null on the last page."""

    items: list[AuditEntryOut]
    next_start: int | None
    size: int


# --- print reports -----------------------------------------------------------


class PrintGroupOut(Output):
    key: str
    label: str
    redeemed: int
    printed: int
    failed: int
    refunded: int
    counted: int
    royalties_cents: int
    currency: str | None
    failure_reasons: dict[str, int] = msgspec.field(default_factory=dict)


class PrintReportOut(Output):
    brand_id: str
    start: datetime
    end: datetime
    group_by: str
    groups: list[PrintGroupOut]
    total: PrintGroupOut
    log_entries: int
    log_size: int

    @classmethod
    def of(cls, report: Any) -> PrintReportOut:
        def group(g: Any) -> PrintGroupOut:
            return PrintGroupOut(**{f: getattr(g, f) for f in PrintGroupOut.__struct_fields__})

        return cls(
            brand_id=report.brand_id,
            start=report.start,
            end=report.end,
            group_by=report.group_by,
            groups=[group(g) for g in report.groups],
            total=group(report.total),
            log_entries=report.log_entries,
            log_size=report.log_size,
        )
