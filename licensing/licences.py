"""Licences, their redemption print by print, print jobs and print reports.

Counting is exactly-once across any number of API processes: the count is a
conditional UPDATE (``prints_used + k <= prints_total``, for the k redemptions
of one licence a transaction counts together), so the database, not the
application, decides which of many concurrent redemptions win; the print jobs
and their audit leaves commit in the same transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import JSON, Field, Session, SQLModel, select

from inventory import catalog
from inventory.accounts import Principal, reprint_allowance
from inventory.catalog import PartStatus
from inventory.db import (
    Prepared,
    PreparedSelect,
    UTCDateTime,
    insert_all,
    insert_all_absent,
    new_id,
    shared_read,
    utcnow,
)
from inventory.errors import BadRequest, Conflict, Forbidden, Invalid, NotFound
from licensing.audit import log_event
from licensing.facilities import require_approved, require_certification
from licensing.tokens import LicenceClaims, Signer, issue_licence, published_key, verify_licence

SERIAL_BITS = 63


class JobStatus(StrEnum):
    redeemed = "redeemed"
    printed = "printed"
    failed = "failed"


class Licence(SQLModel, table=True):
    jti: str = Field(primary_key=True, max_length=40)
    brand_id: str = Field(foreign_key="brand.id", index=True, max_length=40)
    part_id: str = Field(foreign_key="part.id", index=True, max_length=40)
    revision_id: str = Field(foreign_key="revision.id", index=True, max_length=40)
    facility_id: str = Field(foreign_key="facility.id", index=True, max_length=40)
    order_id: str | None = Field(default=None, index=True, max_length=40)
    prints_total: int
    prints_used: int = 0
    reprints_allowed: int = 0
    reprints_used: int = 0
    #: the part's royalty when the licence was issued: what each of its prints earns
    royalty_per_print_cents: int = 0
    currency: str = Field(default="EUR", max_length=3)
    profile_hash: str = Field(max_length=64)
    not_before: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    token: str = Field(sa_type=sa.Text)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoke_reason: str = Field(default="", max_length=1000)
    created_at: datetime = Field(sa_type=UTCDateTime)


class PrintJob(SQLModel, table=True):
    __tablename__ = "print_job"

    serial: int = Field(
        primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False}
    )
    licence_jti: str = Field(foreign_key="licence.jti", index=True, max_length=40)
    brand_id: str = Field(foreign_key="brand.id", index=True, max_length=40)
    facility_id: str = Field(foreign_key="facility.id", index=True, max_length=40)
    part_id: str = Field(max_length=40)
    revision_id: str = Field(max_length=40)
    status: str = Field(default=JobStatus.redeemed.value, max_length=16)
    failure_reason: str = Field(default="", max_length=1000)
    measurements: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    refunded: bool = False
    downloads: int = 0
    created_at: datetime = Field(sa_type=UTCDateTime)
    reported_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A print job as `redeem` created it: its row, the licence's order and the count.

    A plain record rather than a `PrintJob` row: building a SQLModel row costs
    more (~0.15 ms) than the INSERT, and this is made once per print.
    """

    serial: int
    licence_jti: str
    brand_id: str
    facility_id: str
    part_id: str
    revision_id: str
    created_at: datetime
    order_id: str | None
    prints_used: int
    status: str = JobStatus.redeemed.value
    failure_reason: str = ""
    refunded: bool = False
    downloads: int = 0
    reported_at: datetime | None = None

    @property
    def measurements(self) -> dict[str, Any]:
        return {}

    def row(self) -> dict[str, Any]:
        """The ``print_job`` row to insert."""
        return {
            "serial": self.serial,
            "licence_jti": self.licence_jti,
            "brand_id": self.brand_id,
            "facility_id": self.facility_id,
            "part_id": self.part_id,
            "revision_id": self.revision_id,
            "status": self.status,
            "failure_reason": self.failure_reason,
            "measurements": {},
            "refunded": self.refunded,
            "downloads": self.downloads,
            "created_at": self.created_at,
            "reported_at": self.reported_at,
        }


@dataclass(frozen=True, slots=True)
class IssuedLicence:
    """A licence as `issue` recorded it: the ``licence`` row, as a plain record.

    Like `NewJob`, it is made once per licence, where a SQLModel row would
    cost more than its INSERT.
    """

    jti: str
    brand_id: str
    part_id: str
    revision_id: str
    facility_id: str
    order_id: str | None
    prints_total: int
    reprints_allowed: int
    royalty_per_print_cents: int
    currency: str
    profile_hash: str
    not_before: datetime
    expires_at: datetime
    token: str
    created_at: datetime
    prints_used: int = 0
    reprints_used: int = 0
    revoked_at: datetime | None = None
    revoke_reason: str = ""

    def row(self) -> dict[str, Any]:
        """The ``licence`` row to insert."""
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True)
class LicenceTerms:
    """What a licence grants: prints of one revision to one facility, for a while."""

    facility_id: str
    revision_id: str
    prints: int
    not_before: datetime
    expires_at: datetime
    order_id: str | None = None


@dataclass(frozen=True)
class TokenContext:
    """Who signs and who verifies: this deployment's issuer and audience."""

    issuer: str
    audience: str


def format_serial(serial: int) -> str:
    return f"{serial:016x}"


def parse_serial(text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise NotFound("no such print job", code="job-not-found") from None
    if len(text) != 16 or value >= 1 << SERIAL_BITS:
        raise NotFound("no such print job", code="job-not-found")
    return value


@dataclass(frozen=True, slots=True)
class CheckedIssue:
    """A licence that passed every check and waits to be signed and recorded
    (`record_licences`): who signs, for which brand and terms, and what the
    checks read."""

    signer: Signer
    context: TokenContext
    brand_id: str
    terms: LicenceTerms
    revision: Any
    facility_jkt: str
    reprints_allowed: int
    actor: str


def check_issue(
    session: Session,
    signer: Signer,
    context: TokenContext,
    brand_id: str,
    terms: LicenceTerms,
    *,
    actor: str,
) -> CheckedIssue:
    """Every check of an issuance, or its refusal; reads only, writes nothing. The
    facility must be certified for the part's print profile."""
    if terms.expires_at <= terms.not_before:
        raise Invalid("expires_at must be after not_before", code="licence-empty-lifetime")
    revision = catalog.licensable_revision(session, brand_id, terms.revision_id)
    if revision.part_status != PartStatus.active.value:
        raise Conflict(f"the part is {revision.part_status}", code="part-not-active")
    if revision.profile is None or revision.profile_hash is None:
        raise Conflict("the part has no print profile", code="part-has-no-profile")
    facility_jkt = require_approved(session, terms.facility_id)
    require_certification(
        session,
        brand_id,
        terms.facility_id,
        revision.profile["process"],
        revision.profile["material"],
    )
    return CheckedIssue(
        signer=signer,
        context=context,
        brand_id=brand_id,
        terms=terms,
        revision=revision,
        facility_jkt=facility_jkt,
        reprints_allowed=reprint_allowance(session, brand_id),
        actor=actor,
    )


def record_licences(session: Session, checked: Sequence[CheckedIssue]) -> list[IssuedLicence]:
    """Sign the checked licences, record them by one INSERT, and audit each."""
    licences = [_signed(issuance) for issuance in checked]
    insert_all(session, Licence, [licence.row() for licence in licences])
    for licence, issuance in zip(licences, checked, strict=True):
        _audit(
            session,
            "licensing:licence:issued",
            issuance.actor,
            licence,
            prints=licence.prints_total,
        )
    return licences


def _signed(issuance: CheckedIssue) -> IssuedLicence:
    """The licence `issuance` grants, signed now (signing may extend the key's
    ``verify_until``: a write)."""
    terms, revision = issuance.terms, issuance.revision
    jti = new_id("lic")
    now = utcnow()
    token = issue_licence(
        issuance.signer,
        issuer=issuance.context.issuer,
        audience=issuance.context.audience,
        subject=terms.facility_id,
        jti=jti,
        brand_id=issuance.brand_id,
        part_id=revision.part_id,
        revision_id=revision.revision_id,
        design_sha256=revision.sha256,
        prints=terms.prints,
        print_profile_hash=revision.profile_hash,
        facility_jkt=issuance.facility_jkt,
        not_before=terms.not_before,
        expires_at=terms.expires_at,
        now=now,
    )
    return IssuedLicence(
        jti=jti,
        brand_id=issuance.brand_id,
        part_id=revision.part_id,
        revision_id=revision.revision_id,
        facility_id=terms.facility_id,
        order_id=terms.order_id,
        prints_total=terms.prints,
        reprints_allowed=issuance.reprints_allowed,
        royalty_per_print_cents=revision.royalty_per_print_cents,
        currency=revision.currency,
        profile_hash=revision.profile_hash,
        not_before=terms.not_before,
        expires_at=terms.expires_at,
        token=token,
        created_at=now,
    )


def _audit(session: Session, kind: str, actor: str, licence: Any, **facts: Any) -> None:
    """Record an event about `licence` (a `Licence` or a row of its table)."""
    subject = {
        "licence": licence.jti,
        "facility": licence.facility_id,
        "part": licence.part_id,
        "revision": licence.revision_id,
    }
    log_event(session, kind, actor, brand_id=licence.brand_id, subject=subject, **facts)


def _royalty(licence: Any) -> dict[str, Any]:
    """The facts a print event carries about its price: the licence's rate, fixed at issue."""
    return {"royalty_cents": licence.royalty_per_print_cents, "currency": licence.currency}


def get_licence(session: Session, principal: Principal, jti: str) -> Licence:
    """A licence its brand, its facility or the operator may read; others get 404."""
    licence = session.get(Licence, jti)
    if licence is None or not _visible(principal, licence.brand_id, licence.facility_id):
        raise NotFound("no such licence", code="licence-not-found")
    return licence


def _visible(principal: Principal, brand_id: str, facility_id: str) -> bool:
    """The operator sees everything, a brand its own, a facility what was issued to it."""
    if principal.kind == "operator":
        return True
    if principal.kind == "facility":
        return principal.facility_id == facility_id
    return principal.kind == "brand" and principal.brand_id == brand_id


def list_licences(session: Session, principal: Principal) -> list[Licence]:
    query = select(Licence).order_by(sa.column("created_at"), sa.column("jti"))
    if principal.kind == "brand":
        query = query.where(Licence.brand_id == principal.brand_id)
    elif principal.kind == "facility":
        query = query.where(Licence.facility_id == principal.facility_id)
    return list(session.exec(query))


def revoke(session: Session, brand_id: str, jti: str, reason: str, *, actor: str) -> Licence:
    licence = session.get(Licence, jti)
    if licence is None or licence.brand_id != brand_id:
        raise NotFound("no such licence", code="licence-not-found")
    if licence.revoked_at is None:
        licence.revoked_at = utcnow()
        licence.revoke_reason = reason
        session.add(licence)
        session.flush()
        _audit(session, "licensing:licence:revoked", actor, licence, reason=reason)
    return licence


def revoked_licences(session: Session) -> list[Licence]:
    """Revoked licences not yet expired (expired ones are refused anyway)."""
    query = select(Licence).where(
        sa.column("revoked_at").is_not(None), sa.column("expires_at") > utcnow()
    )
    return list(session.exec(query.order_by(sa.column("revoked_at"))))


@dataclass(frozen=True, slots=True)
class CheckedRedemption:
    """A redemption that passed every check and waits for its count (`count_prints`):
    the licence's row as read, and the moment it was checked."""

    licence: Any
    now: datetime


def check_redemption(
    session: Session,
    principal: Principal,
    jti: str,
    token: str,
    *,
    context: TokenContext,
) -> CheckedRedemption:
    """Every check of a redemption, or its refusal; reads only, writes nothing.

    The facility's proof of possession was verified against its registered
    key before this runs; here the licence must be bound to that same key, be
    neither revoked nor expired, and its facility still certified. Whether a
    print remains is the count's to decide (`count_prints`). Reads that every
    redemption of a batch repeats go through `shared_read`.
    """
    now = utcnow()
    claims = shared_read(
        session,
        ("licence-claims", token),
        lambda: verify_licence(
            token,
            key_lookup=lambda kid: published_key(session, kid, now),
            issuer=context.issuer,
            audience=context.audience,
            now=now,
        ),
    )
    licence = _licence_for_claims(session, principal, jti, claims)
    _check_usable(session, licence, now)
    return CheckedRedemption(licence, now)


def count_prints(session: Session, checked: Sequence[CheckedRedemption]) -> list[NewJob | Conflict]:
    """Count one print for each checked redemption and create its print job and
    audit event, or refuse it (409) when its licence has no print left.

    The redemptions of one licence are counted by one conditional UPDATE for all
    of them; if fewer prints remain, one by one, in order, as long as the
    database grants them. Licences are counted in the order of their jti, so
    concurrent transactions lock licence rows in one order. Every statement is
    a prepared Core statement and the licence stays a row: this runs for every
    print.
    """
    outcomes: list[NewJob | Conflict | None] = [None] * len(checked)
    by_licence: dict[str, list[int]] = {}
    for index, redemption in enumerate(checked):
        by_licence.setdefault(redemption.licence.jti, []).append(index)
    counted: list[tuple[int, int]] = []  # (index, prints_used) of each print granted
    for jti in sorted(by_licence):
        indexes = by_licence[jti]
        counted += zip(indexes, _count(session, jti, len(indexes)), strict=False)
    jobs = _new_jobs(session, [(checked[index], used) for index, used in counted])
    for (index, _), job in zip(counted, jobs, strict=True):
        outcomes[index] = job
        _audit(
            session,
            "licensing:print:redeemed",
            f"facility:{job.facility_id}",
            checked[index].licence,
            serial=format_serial(job.serial),
            prints_used=job.prints_used,
            **_royalty(checked[index].licence),
        )
    return [_exhausted() if outcome is None else outcome for outcome in outcomes]


def _exhausted() -> Conflict:
    """The refusal of a redemption its licence has no print left for: a new one for
    each request (a shared instance would gather the traceback of every raise)."""
    return Conflict("every print of this licence has been redeemed", code="licence-exhausted")


def _count(session: Session, jti: str, prints: int) -> list[int]:
    """Count up to `prints` prints of licence `jti`; the ``prints_used`` of each one
    counted (fewer than asked, or none, when fewer prints remain)."""
    rows = _COUNT_PRINTS.rows(session, {"licence_jti": jti, "prints": prints})
    if rows:
        used = int(rows[0][0])
        return list(range(used - prints + 1, used + 1))
    granted: list[int] = []
    while prints > 1 and len(granted) < prints:
        rows = _COUNT_PRINTS.rows(session, {"licence_jti": jti, "prints": 1})
        if not rows:
            break
        granted.append(int(rows[0][0]))
    return granted


def _licence_for_claims(
    session: Session, principal: Principal, jti: str, claims: LicenceClaims
) -> Any:
    """The licence's row (read once per transaction under `shared_reads`)."""
    if claims.jti != jti:
        raise BadRequest(
            "the licence presented is not the one in the path", code="licence-jti-mismatch"
        )
    row = shared_read(
        session,
        ("licence", jti),
        lambda: _LICENCE_BY_JTI.first(session, {"jti": jti}),
    )
    if row is None or row.facility_id != principal.facility_id:
        raise NotFound("no such licence", code="licence-not-found")
    facility_jkt = require_approved(session, row.facility_id)
    if claims.facility_id != row.facility_id or claims.facility_jkt != facility_jkt:
        raise Forbidden("the licence is bound to another key", code="licence-key-mismatch")
    return row


def _check_usable(session: Session, licence: Any, now: datetime) -> None:
    if licence.revoked_at is not None:
        raise Forbidden(f"the licence was revoked: {licence.revoke_reason}", code="licence-revoked")
    if licence.expires_at <= now:
        raise Forbidden("the licence has expired", code="licence-expired")
    settings = catalog.current_settings(session, licence.brand_id, licence.part_id)
    assert settings is not None
    require_certification(
        session, licence.brand_id, licence.facility_id, settings["process"], settings["material"]
    )


def _new_jobs(session: Session, counted: list[tuple[CheckedRedemption, int]]) -> list[NewJob]:
    """A print job for each counted print, under fresh random 63-bit serials (the
    watermark payload), inserted by one statement.

    ``INSERT … ON CONFLICT DO NOTHING``: a job whose serial collides with an
    existing one (one in 2^63 per job) is not inserted and gets another serial;
    no savepoint needed.
    """
    jobs = [
        NewJob(
            serial=0,
            licence_jti=redemption.licence.jti,
            brand_id=redemption.licence.brand_id,
            facility_id=redemption.licence.facility_id,
            part_id=redemption.licence.part_id,
            revision_id=redemption.licence.revision_id,
            created_at=redemption.now,
            order_id=redemption.licence.order_id,
            prints_used=used,
        )
        for redemption, used in counted
    ]
    pending = list(range(len(jobs)))
    while pending:
        serials = _fresh_serials(len(pending))
        for index, serial in zip(pending, serials, strict=True):
            jobs[index] = replace(jobs[index], serial=serial)
        inserted = insert_all_absent(session, PrintJob, [jobs[i].row() for i in pending], "serial")
        pending = [i for i in pending if jobs[i].serial not in inserted]
    return jobs


def _fresh_serials(count: int) -> list[int]:
    """`count` distinct random non-zero serials."""
    serials: set[int] = set()
    while len(serials) < count:
        serials.add(secrets.randbits(SERIAL_BITS) or 1)
    return list(serials)


_licence = Licence.__table__  # type: ignore[attr-defined]
_LICENCE_BY_JTI = PreparedSelect(sa.select(_licence).where(_licence.c.jti == sa.bindparam("jti")))
#: The exactly-once count: the database decides which concurrent redemptions win.
_COUNT_PRINTS = Prepared(
    sa.update(_licence)
    .where(
        _licence.c.jti == sa.bindparam("licence_jti"),
        _licence.c.prints_used + sa.bindparam("prints") <= _licence.c.prints_total,
        _licence.c.revoked_at.is_(None),
    )
    .values(prints_used=_licence.c.prints_used + sa.bindparam("prints"))
    .returning(_licence.c.prints_used)
)


def get_job(session: Session, principal: Principal, serial: int) -> PrintJob:
    job = session.get(PrintJob, serial)
    if job is None or not _visible(principal, job.brand_id, job.facility_id):
        raise NotFound("no such print job", code="job-not-found")
    return job


def list_jobs(session: Session, principal: Principal) -> list[PrintJob]:
    query = select(PrintJob).order_by(sa.column("created_at"), sa.column("serial"))
    if principal.kind == "brand":
        query = query.where(PrintJob.brand_id == principal.brand_id)
    elif principal.kind == "facility":
        query = query.where(PrintJob.facility_id == principal.facility_id)
    return list(session.exec(query))


def report(
    session: Session,
    principal: Principal,
    serial: int,
    *,
    status: JobStatus,
    reason: str,
    measurements: dict[str, Any],
) -> PrintJob:
    """Record a print's outcome; a failed print returns its count within the brand's allowance."""
    job = get_job(session, principal, serial)
    if job.status != JobStatus.redeemed.value:
        raise Conflict(f"the job was already reported {job.status}", code="job-already-reported")
    if status == JobStatus.failed and not reason:
        raise Invalid("a failed print needs a reason", code="failure-reason-required")
    job.status, job.failure_reason, job.measurements = status.value, reason, measurements
    job.reported_at = utcnow()
    if status == JobStatus.failed:
        job.refunded = _refund(session, job.licence_jti)
    session.add(job)
    session.flush()
    licence = session.get(Licence, job.licence_jti)
    assert licence is not None
    _audit(
        session,
        f"licensing:print:{status.value}",
        f"facility:{job.facility_id}",
        licence,
        serial=format_serial(job.serial),
        reason=reason,
        refunded=job.refunded,
        **_royalty(licence),
    )
    return job


def _refund(session: Session, jti: str) -> bool:
    refunded = session.execute(
        sa.update(Licence)
        .where(
            sa.column("jti") == jti,
            sa.column("reprints_used") < sa.column("reprints_allowed"),
            sa.column("prints_used") > 0,
        )
        .values(
            prints_used=sa.column("prints_used") - 1,
            reprints_used=sa.column("reprints_used") + 1,
        )
    )
    return bool(refunded.rowcount)  # type: ignore[attr-defined]
