"""The catalog: parts, their print profiles and their revisions.

Every query is scoped by brand: an id that belongs to another brand is
indistinguishable from an id that does not exist (404).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import JSON, Field, Session, SQLModel, select

from inventory.db import PreparedSelect, UTCDateTime, new_id, shared_read, utcnow
from inventory.errors import Conflict, Invalid, NotFound
from inventory.pagination import Page, paginate
from licensing.audit import log_event


class PartStatus(StrEnum):
    active = "active"
    discontinued = "discontinued"
    withdrawn = "withdrawn"


class Process(StrEnum):
    FDM = "FDM"
    SLA = "SLA"
    SLS = "SLS"
    MJF = "MJF"
    DMLS = "DMLS"


#: Settings that only make sense for extrusion.
FDM_ONLY = ("infill_percent", "wall_count")


class Part(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("brand_id", "sku"),)

    id: str = Field(primary_key=True, max_length=40)
    brand_id: str = Field(foreign_key="brand.id", index=True, max_length=40)
    sku: str = Field(max_length=64)
    name: str = Field(max_length=200)
    description: str = Field(default="", max_length=4000)
    status: str = Field(default=PartStatus.active.value, max_length=16)
    royalty_per_print_cents: int = Field(default=0)
    currency: str = Field(default="EUR", max_length=3)
    current_profile_id: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class PrintProfile(SQLModel, table=True):
    """Immutable print parameters; a change is a new profile made current."""

    __tablename__ = "print_profile"

    id: str = Field(primary_key=True, max_length=40)
    brand_id: str = Field(foreign_key="brand.id", index=True, max_length=40)
    part_id: str = Field(foreign_key="part.id", index=True, max_length=40)
    settings: dict[str, Any] = Field(sa_type=JSON)
    profile_hash: str = Field(max_length=64)
    created_at: datetime = Field(sa_type=UTCDateTime)


class Revision(SQLModel, table=True):
    """One uploaded design of a part; immutable once stored."""

    __table_args__ = (sa.UniqueConstraint("part_id", "number"),)

    id: str = Field(primary_key=True, max_length=40)
    brand_id: str = Field(foreign_key="brand.id", index=True, max_length=40)
    part_id: str = Field(foreign_key="part.id", index=True, max_length=40)
    number: int
    filename: str = Field(max_length=255)
    format: str = Field(max_length=8)
    size_bytes: int
    sha256: str = Field(max_length=64)
    units: str = Field(max_length=16)
    stats: dict[str, Any] = Field(sa_type=JSON)
    object_key: str = Field(max_length=200)
    stored_bytes: int
    wrapped_key: bytes | None = Field(default=None, sa_type=sa.LargeBinary)
    kek_version: str | None = Field(default=None, max_length=200)
    notes: str = Field(default="", max_length=4000)
    created_at: datetime = Field(sa_type=UTCDateTime)
    shredded_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


def create_part(
    session: Session,
    brand_id: str,
    *,
    sku: str,
    name: str,
    description: str = "",
    status: str = PartStatus.active.value,
    royalty_per_print_cents: int = 0,
    currency: str = "EUR",
    actor: str,
) -> Part:
    now = utcnow()
    part = Part(
        id=new_id("part"),
        brand_id=brand_id,
        sku=sku,
        name=name,
        description=description,
        status=PartStatus(status).value,
        royalty_per_print_cents=royalty_per_print_cents,
        currency=currency,
        created_at=now,
        updated_at=now,
    )
    session.add(part)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict(f"SKU {sku!r} is already used by this brand", code="sku-taken") from None
    _audit(session, "inventory:part:created", actor, part, **_priced(part), sku=sku)
    return part


#: part fields whose new value is logged (the others, free text, are named only)
_LOGGED_VALUES = ("status", "royalty_per_print_cents", "currency")


def _priced(part: Part) -> dict[str, Any]:
    return {name: getattr(part, name) for name in _LOGGED_VALUES}


def _audit(session: Session, kind: str, actor: str, part: Part, **facts: Any) -> None:
    log_event(session, kind, actor, brand_id=part.brand_id, subject={"part": part.id}, **facts)


def get_part(session: Session, brand_id: str, part_id: str) -> Part:
    part = session.get(Part, part_id)
    if part is None or part.brand_id != brand_id:
        raise NotFound("no such part", code="part-not-found")
    return part


def get_part_by_sku(session: Session, brand_id: str, sku: str) -> Part:
    part = session.exec(select(Part).where(Part.brand_id == brand_id, Part.sku == sku)).first()
    if part is None:
        raise NotFound(f"no part with SKU {sku!r}", code="part-not-found")
    return part


def get_public_part(session: Session, brand_id: str, sku: str, statuses: tuple[str, ...]) -> Part:
    """A part as the public catalog shows it; hidden statuses look absent (404)."""
    part = get_part_by_sku(session, brand_id, sku)
    if part.status not in statuses:
        raise NotFound(f"no part with SKU {sku!r}", code="part-not-found")
    return part


def list_parts(
    session: Session,
    brand_id: str,
    *,
    cursor: str | None,
    limit: int,
    statuses: tuple[str, ...] | None = None,
) -> Page[Part]:
    query = select(Part).where(Part.brand_id == brand_id)
    if statuses is not None:
        query = query.where(sa.column("status").in_(statuses))
    return paginate(session, query, Part, cursor=cursor, limit=limit)


def update_part(
    session: Session, brand_id: str, part_id: str, changes: dict[str, Any], *, actor: str
) -> Part:
    """Apply the given changes (name, description, status, royalty, currency)."""
    part = get_part(session, brand_id, part_id)
    if "status" in changes:
        changes["status"] = PartStatus(changes["status"]).value
    for field, value in changes.items():
        setattr(part, field, value)
    part.updated_at = utcnow()
    session.add(part)
    session.flush()
    _audit(session, "inventory:part:updated", actor, part, changed=sorted(changes), **_priced(part))
    return part


def profile_hash(settings: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a profile's settings (bound into licences)."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def add_print_profile(
    session: Session, brand_id: str, part_id: str, settings: dict[str, Any], *, actor: str
) -> PrintProfile:
    """Validate cross-field rules, store the profile and make it the part's current one."""
    part = get_part(session, brand_id, part_id)
    _check_profile(settings)
    profile = PrintProfile(
        id=new_id("prof"),
        brand_id=brand_id,
        part_id=part.id,
        settings=settings,
        profile_hash=profile_hash(settings),
        created_at=utcnow(),
    )
    session.add(profile)
    session.flush()
    part.current_profile_id = profile.id
    part.updated_at = utcnow()
    session.add(part)
    session.flush()
    _audit(
        session,
        "inventory:profile:set",
        actor,
        part,
        profile=profile.id,
        profile_hash=profile.profile_hash,
        process=settings.get("process"),
        material=settings.get("material"),
    )
    return profile


def _check_profile(settings: dict[str, Any]) -> None:
    if settings["process"] != Process.FDM.value:
        for name in FDM_ONLY:
            if settings.get(name) is not None:
                raise Invalid(
                    f"{name} applies to FDM only, not {settings['process']}",
                    code="profile-setting-not-for-process",
                    field=name,
                )


def list_profiles(session: Session, brand_id: str, part_id: str) -> list[PrintProfile]:
    get_part(session, brand_id, part_id)
    query = (
        select(PrintProfile)
        .where(PrintProfile.part_id == part_id)
        .order_by(sa.column("created_at"), sa.column("id"))
    )
    return list(session.exec(query))


def get_revision(session: Session, brand_id: str, revision_id: str) -> Revision:
    revision = session.get(Revision, revision_id)
    if revision is None or revision.brand_id != brand_id:
        raise NotFound("no such revision", code="revision-not-found")
    return revision


def list_revisions(session: Session, brand_id: str, part_id: str) -> list[Revision]:
    get_part(session, brand_id, part_id)
    query = select(Revision).where(Revision.part_id == part_id).order_by(sa.column("number"))
    return list(session.exec(query))


def current_profile(session: Session, part: Part) -> PrintProfile | None:
    if part.current_profile_id is None:
        return None
    return session.get(PrintProfile, part.current_profile_id)


# --- prepared reads for the licensing hot paths ----------------------------------


@dataclass(frozen=True)
class LicensableRevision:
    """A revision with what a licence for it binds: its part, design hash, the
    part's current print profile (None when the part has none) and royalty."""

    revision_id: str
    part_id: str
    sha256: str
    part_status: str
    profile: dict[str, Any] | None
    profile_hash: str | None
    royalty_per_print_cents: int
    currency: str


def licensable_revision(session: Session, brand_id: str, revision_id: str) -> LicensableRevision:
    """The brand's revision with its part and current profile, in one query (404 otherwise)."""
    params = {"brand_id": brand_id, "revision_id": revision_id}
    row = shared_read(
        session,
        ("revision", brand_id, revision_id),
        lambda: _LICENSABLE_REVISION.first(session, params),
    )
    if row is None:
        raise NotFound("no such revision", code="revision-not-found")
    return LicensableRevision(
        row.id,
        row.part_id,
        row.sha256,
        row.status,
        row.settings,
        row.profile_hash,
        row.royalty_per_print_cents,
        row.currency,
    )


def current_settings(session: Session, brand_id: str, part_id: str) -> dict[str, Any] | None:
    """The settings of the part's current print profile (None without one; 404 if not the brand's)."""
    params = {"brand_id": brand_id, "part_id": part_id}
    row = shared_read(
        session,
        ("part-settings", brand_id, part_id),
        lambda: _PART_SETTINGS.first(session, params),
    )
    if row is None:
        raise NotFound("no such part", code="part-not-found")
    return dict(row.settings) if row.settings is not None else None


_part = Part.__table__  # type: ignore[attr-defined]
_profile = PrintProfile.__table__  # type: ignore[attr-defined]
_revision = Revision.__table__  # type: ignore[attr-defined]
_with_profile = _part.outerjoin(_profile, _profile.c.id == _part.c.current_profile_id)
_LICENSABLE_REVISION = PreparedSelect(
    sa.select(
        _revision.c.id,
        _revision.c.part_id,
        _revision.c.sha256,
        _part.c.status,
        _profile.c.settings,
        _profile.c.profile_hash,
        _part.c.royalty_per_print_cents,
        _part.c.currency,
    )
    .select_from(_revision.join(_with_profile, _part.c.id == _revision.c.part_id))
    .where(
        _revision.c.id == sa.bindparam("revision_id"),
        _revision.c.brand_id == sa.bindparam("brand_id"),
        _part.c.brand_id == sa.bindparam("brand_id"),
    )
)
_PART_SETTINGS = PreparedSelect(
    sa.select(_profile.c.settings)
    .select_from(_with_profile)
    .where(_part.c.id == sa.bindparam("part_id"), _part.c.brand_id == sa.bindparam("brand_id"))
)
