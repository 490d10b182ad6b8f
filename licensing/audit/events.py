"""Typed audit events and their canonical byte encoding (the Merkle leaf entry).

The encoding is JSON with keys sorted, no whitespace, UTF-8, integers only and
times as RFC 3339 UTC with exactly six fractional digits and ``Z``. Keys are
restricted to ``[a-z0-9_]`` and integers to the I-JSON safe range, so the bytes
are exactly RFC 8785 (JCS) output: any JCS library recomputes them. See
docs/audit.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from inventory.db import utcnow
from licensing.audit.errors import AuditEventInvalid

ENCODING_VERSION = 1
MAX_SAFE_INT = 2**53 - 1
MAX_TEXT = 1024
MAX_LIST = 256

Scalar = str | int | bool | None
FactValue = Scalar | Sequence[Scalar]

_TYPE = re.compile(r"[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*")
_ACTOR = re.compile(r"[a-z][a-z0-9_]*:[A-Za-z0-9_.\-]{1,128}")
_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ID = re.compile(r"[A-Za-z0-9_.\-:]{1,128}")


class EventType(StrEnum):
    """The event types partvault records (``source:subject:action``).

    Any type of that shape is accepted; these are the ones the domain records
    (order steps are ``licensing:order:<step>``), listed with their meaning in
    docs/audit.md.
    """

    PART_CREATED = "inventory:part:created"
    PART_UPDATED = "inventory:part:updated"
    PROFILE_SET = "inventory:profile:set"
    REVISION_UPLOADED = "inventory:revision:uploaded"
    REVISION_SHREDDED = "inventory:revision:shredded"
    BRAND_POLICY_SET = "inventory:brand:policy_set"
    KEK_ROTATED = "inventory:kek:rotated"
    FACILITY_REGISTERED = "licensing:facility:registered"
    FACILITY_APPROVED = "licensing:facility:approved"
    FACILITY_SUSPENDED = "licensing:facility:suspended"
    FACILITY_UPDATED = "licensing:facility:updated"
    CERTIFICATION_GRANTED = "licensing:certification:granted"
    CERTIFICATION_SUSPENDED = "licensing:certification:suspended"
    CERTIFICATION_REINSTATED = "licensing:certification:reinstated"
    CERTIFICATION_REVOKED = "licensing:certification:revoked"
    LICENCE_ISSUED = "licensing:licence:issued"
    LICENCE_REVOKED = "licensing:licence:revoked"
    PRINT_REDEEMED = "licensing:print:redeemed"
    PRINT_DOWNLOADED = "licensing:print:downloaded"
    PRINT_PRINTED = "licensing:print:printed"
    PRINT_FAILED = "licensing:print:failed"
    SIGNING_KEY_ROTATED = "licensing:signing_key:rotated"
    CHECKPOINT_KEY_ROTATED = "licensing:checkpoint_key:rotated"
    TRACE_PERFORMED = "watermark:trace:performed"


@dataclass(frozen=True)
class AuditEvent:
    """One state change, as recorded in the log.

    ``type`` is ``source:subject:action`` (e.g. ``licensing:licence:issue``),
    ``actor`` is ``kind:id`` (e.g. ``brand:brand_5f0c…``, ``system:reconciler``),
    ``subject`` maps role → id (``{"part": "part_…", "licence": "lic_…"}``) and
    ``facts`` holds str / int / bool / None values or lists of them.
    """

    type: str
    actor: str
    brand_id: str | None = None
    subject: Mapping[str, str] = field(default_factory=dict)
    facts: Mapping[str, FactValue] = field(default_factory=dict)
    occurred_at: datetime = field(default_factory=utcnow)


def _invalid(code: str, detail: str) -> AuditEventInvalid:
    return AuditEventInvalid(detail, code=code)


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with six fractional digits and ``Z``; naive times are refused."""
    if moment.tzinfo is None:
        raise _invalid("event-time-naive", "occurred_at must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _text(value: str, what: str) -> str:
    if len(value) > MAX_TEXT:
        raise _invalid("event-text-too-long", f"{what} exceeds {MAX_TEXT} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _invalid("event-text-invalid", f"{what} is not valid Unicode text") from exc
    return value


def _scalar(value: object, what: str) -> Scalar:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise _invalid("fact-value-invalid", f"{what}: integer outside ±(2^53-1)")
        return value
    if isinstance(value, str):
        return _text(value, what)
    raise _invalid("fact-value-invalid", f"{what}: {type(value).__name__} is not allowed")


def _fact(value: object, what: str) -> FactValue:
    if isinstance(value, list | tuple):
        if len(value) > MAX_LIST:
            raise _invalid("fact-value-invalid", f"{what}: more than {MAX_LIST} items")
        return [_scalar(v, what) for v in value]
    return _scalar(value, what)


def _keys(mapping: Mapping[str, object], what: str) -> None:
    for key in mapping:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise _invalid("event-key-invalid", f"{what} key {key!r} is not [a-z][a-z0-9_]*")


def _check_ids(event: AuditEvent) -> None:
    if not _TYPE.fullmatch(event.type):
        raise _invalid("event-type-invalid", f"{event.type!r} is not source:subject:action")
    if not _ACTOR.fullmatch(event.actor):
        raise _invalid("event-actor-invalid", f"{event.actor!r} is not kind:id")
    if event.brand_id is not None and not _ID.fullmatch(event.brand_id):
        raise _invalid("event-id-invalid", "brand_id is not a valid id")
    _keys(event.subject, "subject")
    for role, ident in event.subject.items():
        if not isinstance(ident, str) or not _ID.fullmatch(ident):
            raise _invalid("event-id-invalid", f"subject {role} is not a valid id")


def canonical_document(event: AuditEvent) -> dict[str, object]:
    """Validate the event and return the JSON document that gets encoded."""
    _check_ids(event)
    _keys(event.facts, "facts")
    return {
        "v": ENCODING_VERSION,
        "type": event.type,
        "actor": event.actor,
        "brand_id": event.brand_id,
        "subject": dict(event.subject),
        "facts": {k: _fact(v, f"facts.{k}") for k, v in event.facts.items()},
        "occurred_at": format_time(event.occurred_at),
    }


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def encode_document(document: Mapping[str, object]) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8, no ASCII escaping."""
    return _ENCODER.encode(document).encode("utf-8")


def encode_event(event: AuditEvent) -> bytes:
    """The canonical bytes of an event: the entry whose leaf hash goes in the tree."""
    return encode_document(canonical_document(event))


def encode_subject(subject: Mapping[str, str]) -> str:
    """The subject ids as canonical JSON text (stored beside the body for lookups)."""
    return encode_document(subject).decode("utf-8")
