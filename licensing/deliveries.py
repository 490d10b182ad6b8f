"""A facility's copy of a design: decrypted, watermarked with the print serial,
packaged as 3MF Secure Content for the facility's RSA key only.

The download is reserved first (one short transaction: checks, a conditional
counter update, an audit leaf); the slow work (decrypt, watermark, package)
runs outside any transaction; a failure gives the reserved download back.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from sqlmodel import Session

import watermark
from inventory import catalog, ingest
from inventory.accounts import Brand, Principal, watermark_key
from inventory.crypto.keyring import KeyRing
from inventory.crypto.seal import open_from_store
from inventory.db import utcnow
from inventory.designs import revision_aad, unwrap_data_key
from inventory.errors import Forbidden, Gone
from inventory.storage.base import ObjectStore
from licensing.audit import AuditEvent, append_event
from licensing.delivery import mesh_to_model_xml, write_secure_3mf
from licensing.facilities import get_facility, require_certified
from licensing.licences import Licence, PrintJob, format_serial, get_job
from licensing.tokens import current_signer
from licensing.tokens.profile import sign_profile

PROFILE_PART = "/Metadata/print_profile.json"
PROFILE_SIGNATURE_PART = "/Metadata/print_profile.jws"


@dataclass(frozen=True)
class Ticket:
    """Everything the packaging needs, read under one reserved download."""

    serial: int
    facility_id: str
    wrap_public_key: RSAPublicKey
    wrap_kid: str
    object_key: str
    revision_id: str
    design_format: str
    unit: str
    data_key: bytes
    watermark_key: bytes
    profile: dict[str, Any]
    profile_jws: str
    licence_jti: str


def reserve_download(
    session: Session,
    keyring: KeyRing,
    principal: Principal,
    serial: int,
    *,
    max_downloads: int,
    issuer: str,
) -> Ticket:
    """Check the job may be fetched again, count the fetch, record it; or refuse."""
    job = get_job(session, principal, serial)
    licence = session.get(Licence, job.licence_jti)
    assert licence is not None
    _check_licence(session, licence)
    revision = catalog.get_revision(session, job.brand_id, job.revision_id)
    data_key = unwrap_data_key(keyring, revision)  # 410 once shredded
    counted = session.execute(
        sa.update(PrintJob)
        .where(sa.column("serial") == serial, sa.column("downloads") < max_downloads)
        .values(downloads=sa.column("downloads") + 1)
    )
    if counted.rowcount != 1:  # type: ignore[attr-defined]
        raise Forbidden(
            f"this job's design was already fetched {max_downloads} times",
            code="download-limit-reached",
        )
    session.refresh(job)
    profile, profile_hash = _profile(session, licence)
    brand = session.get(Brand, job.brand_id)
    facility = get_facility(session, job.facility_id)
    assert brand is not None
    _audit_download(session, job, licence)
    now = utcnow()
    jws = sign_profile(
        current_signer(session, keyring),
        issuer=issuer,
        profile=profile,
        profile_hash=profile_hash,
        licence_jti=licence.jti,
        serial=format_serial(serial),
        now=now,
        valid_until=licence.expires_at,
    )
    public = serialization.load_pem_public_key(facility.wrap_public_key.encode())
    assert isinstance(public, RSAPublicKey)
    return Ticket(
        serial=serial,
        facility_id=facility.id,
        wrap_public_key=public,
        wrap_kid=facility.wrap_kid,
        object_key=revision.object_key,
        revision_id=revision.id,
        design_format=revision.format,
        unit=revision.units,
        data_key=data_key,
        watermark_key=watermark_key(keyring, brand),
        profile=profile,
        profile_jws=jws,
        licence_jti=licence.jti,
    )


def _check_licence(session: Session, licence: Licence) -> None:
    """A revoked or expired licence, or a lapsed certification, stops downloads at once."""
    if licence.revoked_at is not None:
        raise Forbidden("the licence was revoked", code="licence-revoked")
    if licence.expires_at <= utcnow():
        raise Forbidden("the licence has expired", code="licence-expired")
    profile, _ = _profile(session, licence)
    require_certified(
        session, licence.brand_id, licence.facility_id, profile["process"], profile["material"]
    )


def _profile(session: Session, licence: Licence) -> tuple[dict[str, Any], str]:
    part = catalog.get_part(session, licence.brand_id, licence.part_id)
    profile = catalog.current_profile(session, part)
    if profile is None:
        raise Gone("the part no longer has a print profile", code="part-has-no-profile")
    return dict(profile.settings), profile.profile_hash


def _audit_download(session: Session, job: PrintJob, licence: Licence) -> None:
    append_event(
        session,
        AuditEvent(
            type="licensing:print:downloaded",
            actor=f"facility:{job.facility_id}",
            brand_id=job.brand_id,
            subject={
                "licence": licence.jti,
                "facility": job.facility_id,
                "part": job.part_id,
                "revision": job.revision_id,
            },
            facts={"serial": format_serial(job.serial), "download": job.downloads},
        ),
    )


def release_download(session: Session, serial: int) -> None:
    """Give back a reserved download whose packaging failed."""
    session.execute(
        sa.update(PrintJob)
        .where(sa.column("serial") == serial, sa.column("downloads") > 0)
        .values(downloads=sa.column("downloads") - 1)
    )


def package(store: ObjectStore, ticket: Ticket, out: BinaryIO, spool: Path) -> None:
    """Decrypt, watermark with the serial, and write the Secure Content package to `out`."""
    mesh, unit_to_mm = load_design(store, ticket, spool)
    marked = watermark.embed(mesh, ticket.serial, ticket.watermark_key, unit_to_mm=unit_to_mm)
    metadata = {f"partvault:{k}": _text(v) for k, v in ticket.profile.items()}
    metadata["partvault:licence"] = ticket.licence_jti
    xml = mesh_to_model_xml(
        np.asarray(marked.vertices), np.asarray(marked.faces), unit=ticket.unit, metadata=metadata
    )
    attachments = {
        PROFILE_PART: json.dumps(ticket.profile, sort_keys=True, indent=2).encode(),
        PROFILE_SIGNATURE_PART: ticket.profile_jws.encode(),
    }
    write_secure_3mf(
        out,
        xml,
        consumer_id=ticket.facility_id,
        key_id=ticket.wrap_kid,
        rsa_public_key=ticket.wrap_public_key,
        attachments=attachments,
    )


def load_design(store: ObjectStore, ticket: Ticket, spool: Path) -> tuple[Any, float]:
    """The design's mesh; its plaintext touches disk only in a 0600 spool file, removed at once."""
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    plaintext = open_from_store(
        store, ticket.object_key, ticket.data_key, revision_aad(ticket.revision_id)
    )
    with tempfile.NamedTemporaryFile(dir=spool, prefix="design-") as handle:
        for chunk in plaintext:
            handle.write(chunk)
        handle.flush()
        return ingest.load_mesh(Path(handle.name), ticket.design_format, unit_hint=ticket.unit)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
