"""The vault: a design goes in validated, measured and encrypted; comes out only to its brand.

Upload order (DESIGN.md "Ingest"): validate and measure the spooled file →
encrypt under a fresh data key while hashing → write the object under a new
random key → record the revision row. An object without a row is an orphan
that `reconcile` removes after a grace period; a row never points at a
missing object.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from inventory import catalog, ingest
from inventory.catalog import Revision
from inventory.crypto.aead import new_data_key
from inventory.crypto.keyring import KeyRing, rewrap_rows
from inventory.crypto.seal import open_from_store, seal_to_store
from inventory.db import new_id, utcnow
from inventory.errors import Conflict, Gone
from inventory.ingest import IngestLimits
from inventory.storage.base import ObjectStore, new_object_key
from licensing.audit import AuditEvent, append_event

log = logging.getLogger("partvault.vault")

OBJECT_PREFIX = "designs/"  # new_object_key() fans keys out below it
READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Upload:
    """A spooled upload and what the brand said about it."""

    path: Path
    filename: str
    unit_hint: str | None = None
    allow_open: bool = False
    notes: str = ""


def key_context(revision_id: str) -> bytes:
    return b"partvault:revision-data-key:" + revision_id.encode()


def revision_aad(revision_id: str) -> bytes:
    return b"partvault:revision:" + revision_id.encode()


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            yield chunk


def store_revision(
    session: Session,
    store: ObjectStore,
    keyring: KeyRing,
    brand_id: str,
    part_id: str,
    upload: Upload,
    *,
    limits: IngestLimits,
    actor: str,
) -> Revision:
    """Validate, measure, encrypt and store a new revision of a part."""
    part = catalog.get_part(session, brand_id, part_id)
    report = ingest.inspect_design(
        upload.path,
        filename=upload.filename,
        unit_hint=upload.unit_hint,
        allow_open=upload.allow_open,
        limits=limits,
    )
    revision_id = new_id("rev")
    data_key = new_data_key()
    object_key = new_object_key()
    sealed = seal_to_store(
        store, object_key, data_key, revision_aad(revision_id), _read_chunks(upload.path)
    )
    try:
        revision = _record(
            session,
            part,
            revision_id,
            object_key,
            upload,
            report,
            sealed.plaintext_sha256,
            sealed.plaintext_size,
            sealed.stored_size,
            keyring.wrap(data_key, key_context(revision_id)),
            keyring.current_version(),
        )
        _audit_upload(session, revision, actor)
    except BaseException:
        _discard(store, object_key)
        raise
    return revision


def _record(
    session: Session,
    part: catalog.Part,
    revision_id: str,
    object_key: str,
    upload: Upload,
    report: ingest.DesignReport,
    sha256: str,
    size: int,
    stored: int,
    wrapped: bytes,
    kek_version: str,
) -> Revision:
    number = (
        session.exec(select(sa.func.max(Revision.number)).where(Revision.part_id == part.id)).one()
        or 0
    ) + 1
    revision = Revision(
        id=revision_id,
        brand_id=part.brand_id,
        part_id=part.id,
        number=number,
        filename=Path(upload.filename).name[:255],
        format=report.format.value,
        size_bytes=size,
        sha256=sha256,
        units=report.unit,
        stats={"report": _report_dict(report)},
        object_key=object_key,
        stored_bytes=stored,
        wrapped_key=wrapped,
        kek_version=kek_version,
        notes=upload.notes,
        created_at=utcnow(),
    )
    session.add(revision)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict(
            "another revision was uploaded at the same moment; retry", code="revision-number-race"
        ) from None
    return revision


def _report_dict(report: ingest.DesignReport) -> dict[str, object]:
    built: dict[str, object] = msgspec.to_builtins(report)
    return built


def _audit_upload(session: Session, revision: Revision, actor: str) -> None:
    append_event(
        session,
        AuditEvent(
            type="inventory:revision:uploaded",
            actor=actor,
            brand_id=revision.brand_id,
            subject={"part": revision.part_id, "revision": revision.id},
            facts={
                "number": revision.number,
                "sha256": revision.sha256,
                "size": revision.size_bytes,
                "format": revision.format,
            },
        ),
    )


def _discard(store: ObjectStore, object_key: str) -> None:
    """Remove an object whose row will not be committed (the reconciler is the backstop)."""
    try:
        store.delete(object_key)
    except Exception:  # best effort: the reconciler removes what is left
        log.warning("could not remove an uncommitted object", extra={"object_key": object_key})


def open_revision(
    session: Session, store: ObjectStore, keyring: KeyRing, brand_id: str, revision_id: str
) -> tuple[Revision, Iterator[bytes]]:
    """The revision and a stream of its decrypted original; a shredded one is 410."""
    revision = catalog.get_revision(session, brand_id, revision_id)
    data_key = unwrap_data_key(keyring, revision)
    return revision, open_from_store(
        store, revision.object_key, data_key, revision_aad(revision.id)
    )


def unwrap_data_key(keyring: KeyRing, revision: Revision) -> bytes:
    if revision.shredded_at is not None or revision.wrapped_key is None:
        raise Gone(
            "this revision was shredded; its design is gone for good", code="revision-shredded"
        )
    return keyring.unwrap(revision.wrapped_key, key_context(revision.id))


def shred_revision(session: Session, brand_id: str, revision_id: str, *, actor: str) -> Revision:
    """Destroy the revision's wrapped data key: the stored ciphertext becomes noise.

    The object itself is deleted by the caller after commit (`discard_object`)
    or, failing that, by the reconciler.
    """
    revision = catalog.get_revision(session, brand_id, revision_id)
    if revision.shredded_at is not None:
        raise Gone("this revision was already shredded", code="revision-shredded")
    revision.wrapped_key = None
    revision.kek_version = None
    revision.shredded_at = utcnow()
    session.add(revision)
    session.flush()
    append_event(
        session,
        AuditEvent(
            type="inventory:revision:shredded",
            actor=actor,
            brand_id=revision.brand_id,
            subject={"part": revision.part_id, "revision": revision.id},
            facts={"sha256": revision.sha256},
        ),
    )
    return revision


def discard_object(store: ObjectStore, object_key: str) -> None:
    _discard(store, object_key)


def rewrap_data_keys(session: Session, keyring: KeyRing) -> int:
    """Re-wrap every live data key under the keyring's current KEK; designs are untouched."""
    live = session.exec(select(Revision).where(sa.column("wrapped_key").is_not(None))).all()
    changed = rewrap_rows(keyring, live, "wrapped_key", lambda r: key_context(r.id))
    for revision in changed:
        assert revision.wrapped_key is not None
        revision.kek_version = keyring.version_of(revision.wrapped_key)
    session.add_all(changed)
    session.flush()
    return len(changed)


@dataclass
class ReconcileReport:
    orphans_removed: list[str] = field(default_factory=list)
    orphans_young: list[str] = field(default_factory=list)
    missing_objects: list[str] = field(default_factory=list)
    """Revision ids whose object is missing from the store."""


def reconcile(
    session: Session,
    store: ObjectStore,
    *,
    grace: timedelta,
    now: datetime | None = None,
    dry_run: bool = False,
) -> ReconcileReport:
    """Remove objects no live revision points at (older than `grace`); flag missing objects."""
    now = now or utcnow()
    rows = session.exec(select(Revision.id, Revision.object_key, Revision.shredded_at)).all()
    live = {key: rev_id for rev_id, key, shredded in rows if shredded is None}
    report = ReconcileReport()
    present = set()
    for info in store.list(OBJECT_PREFIX):
        present.add(info.key)
        if info.key in live:
            continue
        if now - info.modified < grace:
            report.orphans_young.append(info.key)
            continue
        if not dry_run:
            store.delete(info.key)
        report.orphans_removed.append(info.key)
    report.missing_objects = sorted(rev for key, rev in live.items() if key not in present)
    return report
