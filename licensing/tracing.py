"""Tracing a leaked mesh to its print job, licence and facility."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlmodel import Session

import watermark
from inventory import ingest
from inventory.accounts import Brand, watermark_key
from inventory.crypto.keyring import KeyRing
from inventory.ingest import IngestLimits
from inventory.ingest.detect import detect_format
from licensing.audit import AuditEvent, append_event
from licensing.licences import PrintJob, format_serial


@dataclass(frozen=True)
class Trace:
    found: bool
    p_value: float
    bit_error_rate: float
    serial: str | None = None
    licence_jti: str | None = None
    facility_id: str | None = None
    part_id: str | None = None
    revision_id: str | None = None
    redeemed_at: datetime | None = None


def trace(
    session: Session,
    keyring: KeyRing,
    brand_id: str,
    path: Path,
    filename: str,
    *,
    limits: IngestLimits,
    actor: str,
) -> Trace:
    """Detect the brand's mark in the file; name the job only when the mark is certain
    and the serial is one of this brand's print jobs. Every trace is audited."""
    fmt, _ = detect_format(path, filename, limits)
    mesh, _ = ingest.load_mesh(path, fmt, limits=limits)
    brand = session.get(Brand, brand_id)
    assert brand is not None
    detection = watermark.detect(mesh, watermark_key(keyring, brand))
    job = session.get(PrintJob, detection.serial) if detection.found else None
    if job is None or job.brand_id != brand_id:
        result = Trace(False, detection.p_value, detection.ber)
    else:
        result = Trace(
            True,
            detection.p_value,
            detection.ber,
            format_serial(job.serial),
            job.licence_jti,
            job.facility_id,
            job.part_id,
            job.revision_id,
            job.created_at,
        )
    _audit(session, brand_id, actor, result)
    return result


def _audit(session: Session, brand_id: str, actor: str, result: Trace) -> None:
    subject = {"job": result.serial, "facility": result.facility_id} if result.found else {}
    append_event(
        session,
        AuditEvent(
            type="watermark:trace:performed",
            actor=actor,
            brand_id=brand_id,
            subject={k: v for k, v in subject.items() if v is not None},
            facts={"found": result.found, "serial": result.serial},
        ),
    )
