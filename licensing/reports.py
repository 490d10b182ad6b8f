"""Print counts and royalties for a brand, derived from the audit log.

The counts come from the brand's ``licensing:print:redeemed``,
``licensing:print:printed`` and ``licensing:print:failed`` entries: the
canonical body of each ``audit_entry`` row is re-hashed against its leaf hash
(a row that does not match refuses the report) and then read. Each event falls
in the period of its own ``occurred_at`` (the signed time in the body).

Counting rule (docs/audit.md "Print reports"):

- ``redeemed``: prints a bureau redeemed (one licence count each);
- ``printed`` / ``failed``: outcomes reported; ``refunded``: failed prints whose
  count went back to the licence (the brand's reprint allowance);
- ``counted`` = ``redeemed`` - ``refunded``: the prints the brand is paid for.
  A refunded failure is not paid (the bureau prints it again on the same
  licence and that reprint is counted when redeemed); a failure beyond the
  allowance keeps its count and is paid. Over all time, a licence's
  ``counted`` equals its ``prints_used``.
- ``royalties_cents`` = sum over counted prints of the rate their licence was
  issued at (``royalty_cents`` and ``currency`` in each print event: a later
  change of the part's rate does not rewrite past royalties; events logged
  before licences kept a rate use the part's current one); ``MIXED`` when a
  group spans prices in different currencies.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Session, select

from inventory.catalog import Part
from inventory.db import metadata
from inventory.errors import Invalid, NotFound
from licensing import facilities
from licensing.audit import AuditStorageError, leaf_hash, log_size

PRINT_REDEEMED = "licensing:print:redeemed"
PRINT_PRINTED = "licensing:print:printed"
PRINT_FAILED = "licensing:print:failed"
PRINT_EVENTS = (PRINT_REDEEMED, PRINT_PRINTED, PRINT_FAILED)
MAX_DAYS = 36_600
# events are pre-selected by their row time, then filtered by the signed time in
# the body; the two are taken moments apart, so a margin suffices
_ROW_TIME_MARGIN = timedelta(days=1)
MIXED = "MIXED"  # a group whose parts are priced in more than one currency
_entry = metadata.tables["audit_entry"]


class GroupBy(StrEnum):
    part = "part"
    facility = "facility"
    month = "month"


@dataclass(frozen=True)
class PrintEvent:
    """One print event as read from a verified log entry."""

    index: int
    type: str
    occurred_at: datetime
    part_id: str
    facility_id: str
    licence_jti: str
    serial: str
    reason: str
    refunded: bool
    #: the licence's rate, fixed at issue; None in events logged before rates were recorded
    royalty_cents: int | None = None
    currency: str | None = None


@dataclass
class PrintGroup:
    """Counts for one part, facility or month (or the total)."""

    key: str
    label: str
    redeemed: int = 0
    printed: int = 0
    failed: int = 0
    refunded: int = 0
    counted: int = 0
    royalties_cents: int = 0
    currency: str | None = None
    failure_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PrintReport:
    brand_id: str
    start: datetime
    end: datetime
    group_by: str
    groups: list[PrintGroup]
    total: PrintGroup
    log_entries: int
    log_size: int


def day_range(first: date, last: date) -> tuple[datetime, datetime]:
    """[first 00:00 UTC, the day after last 00:00 UTC): ``last`` is inclusive."""
    if last < first:
        raise Invalid("'to' is before 'from'", code="report-range-invalid")
    if (last - first).days > MAX_DAYS:
        raise Invalid(f"a report covers at most {MAX_DAYS} days", code="report-range-too-long")
    if last >= date.max - timedelta(days=1):
        raise Invalid("'to' is too far ahead", code="report-range-invalid")
    start = datetime.combine(first, time(), tzinfo=UTC)
    return start, datetime.combine(last + timedelta(days=1), time(), tzinfo=UTC)


def print_events(
    session: Session, brand_id: str, start: datetime | None = None, end: datetime | None = None
) -> list[PrintEvent]:
    """The brand's print events in log order, bodies checked against their leaf hashes."""
    stmt = (
        sa.select(_entry.c.index, _entry.c.event_type, _entry.c.body, _entry.c.leaf_hash)
        .where(_entry.c.brand_id == brand_id, _entry.c.event_type.in_(PRINT_EVENTS))
        .order_by(_entry.c.index)
    )
    if start is not None:
        stmt = stmt.where(_entry.c.created_at >= start - _ROW_TIME_MARGIN)
    if end is not None:
        stmt = stmt.where(_entry.c.created_at < end + _ROW_TIME_MARGIN)
    events = [_event(*row) for row in session.execute(stmt)]
    return [
        e
        for e in events
        if (start is None or e.occurred_at >= start) and (end is None or e.occurred_at < end)
    ]


def _event(index: int, event_type: str, body: bytes, leaf: bytes) -> PrintEvent:
    raw = bytes(body)
    if leaf_hash(raw) != bytes(leaf):
        raise AuditStorageError(
            f"audit entry {index} does not match its leaf hash", code="audit-entry-corrupt"
        )
    doc = json.loads(raw)
    if doc.get("type") != event_type:
        raise AuditStorageError(f"audit entry {index} has another type", code="audit-entry-corrupt")
    subject, facts = doc["subject"], doc["facts"]
    return PrintEvent(
        index=index,
        type=event_type,
        occurred_at=datetime.strptime(doc["occurred_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=UTC
        ),
        part_id=subject["part"],
        facility_id=subject["facility"],
        licence_jti=subject["licence"],
        serial=str(facts.get("serial", "")),
        reason=str(facts.get("reason") or ""),
        refunded=bool(facts.get("refunded", False)),
        royalty_cents=facts.get("royalty_cents"),
        currency=facts.get("currency"),
    )


def print_report(
    session: Session, brand_id: str, start: datetime, end: datetime, group_by: GroupBy
) -> PrintReport:
    """Prints, failures and royalties of a brand in [start, end), grouped."""
    events = print_events(session, brand_id, start, end)
    parts = {p.id: p for p in session.exec(select(Part).where(Part.brand_id == brand_id))}
    groups: dict[str, PrintGroup] = {}
    total = PrintGroup(key="total", label="total")
    for event in events:
        key, label = _key(session, event, group_by, parts)
        group = groups.setdefault(key, PrintGroup(key=key, label=label))
        for target in (group, total):
            _add(target, event, parts.get(event.part_id))
    ordered = [groups[k] for k in sorted(groups)]
    return PrintReport(
        brand_id=brand_id,
        start=start,
        end=end,
        group_by=group_by.value,
        groups=ordered,
        total=total,
        log_entries=len(events),
        log_size=log_size(session),
    )


def _key(
    session: Session, event: PrintEvent, group_by: GroupBy, parts: dict[str, Part]
) -> tuple[str, str]:
    if group_by == GroupBy.month:
        month = event.occurred_at.strftime("%Y-%m")
        return month, month
    if group_by == GroupBy.facility:
        return event.facility_id, _facility_name(session, event.facility_id)
    part = parts.get(event.part_id)
    return event.part_id, part.sku if part is not None else event.part_id


def _facility_name(session: Session, facility_id: str) -> str:
    try:
        return facilities.get_facility(session, facility_id).name
    except NotFound:
        return facility_id


def _add(group: PrintGroup, event: PrintEvent, part: Part | None) -> None:
    rate, currency = _price(event, part)
    if currency is not None:
        group.currency = currency if group.currency in (None, currency) else MIXED
    if event.type == PRINT_REDEEMED:
        group.redeemed += 1
        group.counted += 1
        group.royalties_cents += rate
    elif event.type == PRINT_PRINTED:
        group.printed += 1
    else:
        group.failed += 1
        reasons = Counter(group.failure_reasons)
        reasons[event.reason or "(none)"] += 1
        group.failure_reasons = dict(reasons)
        if event.refunded:
            group.refunded += 1
            group.counted -= 1
            group.royalties_cents -= rate


def _price(event: PrintEvent, part: Part | None) -> tuple[int, str | None]:
    """What one print of `event` earns: the rate its licence was issued at, or for
    events logged before licences kept a rate, the part's current one."""
    if event.royalty_cents is not None:
        return event.royalty_cents, event.currency
    if part is None:
        return 0, None
    return part.royalty_per_print_cents, part.currency


CSV_COLUMNS = (
    "key",
    "label",
    "redeemed",
    "printed",
    "failed",
    "refunded",
    "counted",
    "royalties_cents",
    "currency",
    "failure_reasons",
)


def csv_rows(report: PrintReport) -> Iterable[list[str | int]]:
    """Header, one row per group, then the total; failure reasons as ``reason=n;…``."""
    yield list(CSV_COLUMNS)
    for group in [*report.groups, report.total]:
        reasons = ";".join(f"{r}={n}" for r, n in sorted(group.failure_reasons.items()))
        yield [
            group.key,
            group.label,
            group.redeemed,
            group.printed,
            group.failed,
            group.refunded,
            group.counted,
            group.royalties_cents,
            group.currency or "",
            reasons,
        ]
