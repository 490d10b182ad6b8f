"""Print bureaus (facilities), their keys, and brands' certifications of them.

A facility registers two public keys: Ed25519 for proof of possession on
every request, RSA (≥ 2048 bits) to receive content keys. A brand certifies a
facility for some processes and materials until an expiry date; only a
current certification matching a part's print profile lets the facility
receive a licence for that part.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from sqlmodel import JSON, Field, Session, SQLModel, select

from inventory.accounts import Principal, TokenKind, issue_token
from inventory.db import PreparedSelect, UTCDateTime, new_id, shared_read, utcnow
from inventory.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from licensing.audit import log_event
from licensing.audit.events import format_time
from licensing.tokens.dpop import CheckedProof, check_proof, finish_proof
from licensing.tokens.replay import DbReplayGuard, ReplayGuard
from licensing.tokens.thumbprint import key_thumbprint

MIN_RSA_BITS = 2048


class FacilityStatus(StrEnum):
    pending = "pending"
    approved = "approved"
    suspended = "suspended"


class CertificationStatus(StrEnum):
    active = "active"
    suspended = "suspended"
    revoked = "revoked"


class Facility(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    address: str = Field(max_length=1000)
    country: str = Field(max_length=2)
    latitude: float
    longitude: float
    processes: list[str] = Field(sa_type=JSON)
    materials: list[str] = Field(sa_type=JSON)
    printer_models: list[str] = Field(sa_type=JSON)
    build_volume_mm: list[float] = Field(sa_type=JSON)
    capacity: int
    contact_email: str = Field(max_length=320)
    rates: dict[str, Any] = Field(sa_type=JSON)
    status: str = Field(default=FacilityStatus.pending.value, max_length=16)
    pop_public_key: str = Field(max_length=2000)
    pop_jkt: str = Field(max_length=64, index=True)
    wrap_public_key: str = Field(max_length=4000)
    wrap_kid: str = Field(max_length=64)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class Certification(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=40)
    brand_id: str = Field(foreign_key="brand.id", index=True, max_length=40)
    facility_id: str = Field(foreign_key="facility.id", index=True, max_length=40)
    processes: list[str] = Field(sa_type=JSON)
    materials: list[str] = Field(sa_type=JSON)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    status: str = Field(default=CertificationStatus.active.value, max_length=16)
    reason: str = Field(default="", max_length=1000)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


@dataclass(frozen=True)
class FacilityKeys:
    pop_pem: str
    pop_jkt: str
    wrap_pem: str
    wrap_kid: str


def parse_keys(pop_pem: str, wrap_pem: str) -> FacilityKeys:
    """Check both public keys and compute their RFC 7638 thumbprints."""
    pop = _load_public(pop_pem, "pop_public_key")
    if not isinstance(pop, Ed25519PublicKey):
        raise Invalid("pop_public_key must be an Ed25519 key", code="facility-key-type")
    wrap = _load_public(wrap_pem, "wrap_public_key")
    if not isinstance(wrap, RSAPublicKey):
        raise Invalid("wrap_public_key must be an RSA key", code="facility-key-type")
    if wrap.key_size < MIN_RSA_BITS:
        raise Invalid(
            f"the RSA key has {wrap.key_size} bits; at least {MIN_RSA_BITS} are required",
            code="facility-rsa-too-small",
        )
    return FacilityKeys(_pem(pop), key_thumbprint(pop), _pem(wrap), key_thumbprint(wrap))


def _load_public(pem: str, field: str) -> object:
    try:
        return serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, sa.exc.ArgumentError):
        raise Invalid(f"{field} is not a PEM public key", code="facility-key-unreadable") from None


def _pem(key: Ed25519PublicKey | RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def register_facility(
    session: Session, fields: dict[str, Any], *, approved: bool, actor: str
) -> Facility:
    """Register a facility: approved at once by the operator, else pending review."""
    keys = parse_keys(fields.pop("pop_public_key"), fields.pop("wrap_public_key"))
    _check_unique_pop_key(session, keys.pop_jkt, None)
    now = utcnow()
    facility = Facility(
        id=new_id("fac"),
        status=(FacilityStatus.approved if approved else FacilityStatus.pending).value,
        pop_public_key=keys.pop_pem,
        pop_jkt=keys.pop_jkt,
        wrap_public_key=keys.wrap_pem,
        wrap_kid=keys.wrap_kid,
        created_at=now,
        updated_at=now,
        **fields,
    )
    session.add(facility)
    session.flush()
    _audit_facility(
        session,
        "registered",
        actor,
        facility,
        name=facility.name,
        country=facility.country,
        status=facility.status,
        pop_jkt=facility.pop_jkt,
        wrap_kid=facility.wrap_kid,
    )
    return facility


def _audit_facility(
    session: Session, action: str, actor: str, facility: Facility, **facts: Any
) -> None:
    """An operator-side event about a facility (no brand: brands see it redacted)."""
    log_event(
        session, f"licensing:facility:{action}", actor, subject={"facility": facility.id}, **facts
    )


def _check_unique_pop_key(session: Session, jkt: str, facility_id: str | None) -> None:
    other = session.exec(select(Facility).where(Facility.pop_jkt == jkt)).first()
    if other is not None and other.id != facility_id:
        raise Conflict("this key is registered to another facility", code="facility-key-in-use")


def get_facility(session: Session, facility_id: str) -> Facility:
    facility = session.get(Facility, facility_id)
    if facility is None:
        raise NotFound("no such facility", code="facility-not-found")
    return facility


def list_facilities(session: Session, *, status: str | None = None) -> list[Facility]:
    query = select(Facility).order_by(sa.column("created_at"), sa.column("id"))
    if status is not None:
        query = query.where(Facility.status == status)
    return list(session.exec(query))


def set_facility_status(
    session: Session, facility_id: str, status: FacilityStatus, *, actor: str
) -> Facility:
    facility = get_facility(session, facility_id)
    facility.status = status.value
    facility.updated_at = utcnow()
    session.add(facility)
    session.flush()
    _audit_facility(session, status.value, actor, facility)
    return facility


def update_facility(
    session: Session, facility_id: str, changes: dict[str, Any], *, actor: str
) -> Facility:
    """Change profile fields, or rotate keys when new PEMs are given."""
    facility = get_facility(session, facility_id)
    changed = sorted(changes)
    pop = changes.pop("pop_public_key", None)
    wrap = changes.pop("wrap_public_key", None)
    if pop is not None or wrap is not None:
        keys = parse_keys(pop or facility.pop_public_key, wrap or facility.wrap_public_key)
        _check_unique_pop_key(session, keys.pop_jkt, facility.id)
        facility.pop_public_key, facility.pop_jkt = keys.pop_pem, keys.pop_jkt
        facility.wrap_public_key, facility.wrap_kid = keys.wrap_pem, keys.wrap_kid
    for name, value in changes.items():
        setattr(facility, name, value)
    facility.updated_at = utcnow()
    session.add(facility)
    session.flush()
    current = {"pop_jkt": facility.pop_jkt, "wrap_kid": facility.wrap_kid}
    _audit_facility(session, "updated", actor, facility, changed=changed, **current)
    return facility


def certify(
    session: Session,
    brand_id: str,
    facility_id: str,
    *,
    processes: list[str],
    materials: list[str],
    expires_at: datetime,
    actor: str,
) -> Certification:
    facility = get_facility(session, facility_id)
    if facility.status != FacilityStatus.approved.value:
        raise Conflict("only an approved facility can be certified", code="facility-not-approved")
    if expires_at <= utcnow():
        raise Invalid("expires_at must be in the future", code="certification-expiry-past")
    missing = sorted(set(processes) - set(facility.processes))
    if missing:
        raise Invalid(
            f"the facility does not offer {', '.join(missing)}", code="facility-lacks-process"
        )
    now = utcnow()
    cert = Certification(
        id=new_id("cert"),
        brand_id=brand_id,
        facility_id=facility.id,
        processes=sorted(set(processes)),
        materials=sorted(set(materials)),
        expires_at=expires_at,
        created_at=now,
        updated_at=now,
    )
    session.add(cert)
    session.flush()
    _audit_certification(
        session,
        "granted",
        actor,
        cert,
        processes=cert.processes,
        materials=cert.materials,
        expires_at=format_time(expires_at),
    )
    return cert


_CERTIFICATION_ACTION = {
    CertificationStatus.active: "reinstated",
    CertificationStatus.suspended: "suspended",
    CertificationStatus.revoked: "revoked",
}


def _audit_certification(
    session: Session, action: str, actor: str, cert: Certification, **facts: Any
) -> None:
    subject = {"facility": cert.facility_id, "certification": cert.id}
    kind = f"licensing:certification:{action}"
    log_event(session, kind, actor, brand_id=cert.brand_id, subject=subject, **facts)


def get_certification(session: Session, brand_id: str, cert_id: str) -> Certification:
    cert = session.get(Certification, cert_id)
    if cert is None or cert.brand_id != brand_id:
        raise NotFound("no such certification", code="certification-not-found")
    return cert


def list_certifications(
    session: Session, *, brand_id: str | None = None, facility_id: str | None = None
) -> list[Certification]:
    query = select(Certification).order_by(sa.column("created_at"), sa.column("id"))
    if brand_id is not None:
        query = query.where(Certification.brand_id == brand_id)
    if facility_id is not None:
        query = query.where(Certification.facility_id == facility_id)
    return list(session.exec(query))


def set_certification_status(
    session: Session,
    brand_id: str,
    cert_id: str,
    status: CertificationStatus,
    reason: str,
    *,
    actor: str,
) -> Certification:
    cert = get_certification(session, brand_id, cert_id)
    if cert.status == CertificationStatus.revoked.value:
        raise Conflict("a revoked certification is final", code="certification-revoked")
    cert.status = status.value
    cert.reason = reason
    cert.updated_at = utcnow()
    session.add(cert)
    session.flush()
    _audit_certification(session, _CERTIFICATION_ACTION[status], actor, cert, reason=reason)
    return cert


class CertificationTerms(Protocol):
    """What `certification_covers` reads: a `Certification` or a row of its columns."""

    status: str
    expires_at: datetime
    processes: list[str]
    materials: list[str]


def certification_covers(
    cert: CertificationTerms, process: str, material: str, now: datetime
) -> str:
    """Why `cert` does not cover (process, material) now, or "" when it does."""
    if cert.status == CertificationStatus.suspended.value:
        return "certification-suspended"
    if cert.status == CertificationStatus.revoked.value:
        return "certification-revoked"
    if cert.expires_at <= now:
        return "certification-expired"
    if process not in cert.processes:
        return "process-not-certified"
    if material not in cert.materials:
        return "material-not-certified"
    return ""


def require_certified(
    session: Session, brand_id: str, facility_id: str, process: str, material: str
) -> None:
    """Refuse (403) unless `facility_id` is approved and certified for this now.

    On the issuance and redemption paths, so two prepared Core statements.
    """
    require_approved(session, facility_id)
    require_certification(session, brand_id, facility_id, process, material)


def require_certification(
    session: Session, brand_id: str, facility_id: str, process: str, material: str
) -> None:
    """Refuse (403, naming the reason) unless a current certification covers this."""
    now = utcnow()
    reasons = []
    params = {"brand_id": brand_id, "facility_id": facility_id}
    certifications = shared_read(
        session,
        ("certifications", brand_id, facility_id),
        lambda: _CERTIFICATIONS_OF.all(session, params),
    )
    for cert in certifications:
        reason = certification_covers(cert, process, material, now)
        if not reason:
            return
        reasons.append(reason)
    raise Forbidden(
        "the facility holds no current certification for this process and material",
        code=reasons[-1] if reasons else "not-certified",
    )


def require_approved(session: Session, facility_id: str) -> str:
    """The approved facility's proof-of-possession key thumbprint, or 403 (404 if unknown)."""
    row = shared_read(
        session,
        ("facility", facility_id),
        lambda: _FACILITY_STANDING.first(session, {"facility_id": facility_id}),
    )
    if row is None:
        raise NotFound("no such facility", code="facility-not-found")
    if row.status != FacilityStatus.approved.value:
        raise Forbidden(f"the facility is {row.status}", code="facility-not-approved")
    return str(row.pop_jkt)


_facility = Facility.__table__  # type: ignore[attr-defined]
_certification = Certification.__table__  # type: ignore[attr-defined]
_FACILITY_STANDING = PreparedSelect(
    sa.select(_facility.c.status, _facility.c.pop_jkt).where(
        _facility.c.id == sa.bindparam("facility_id")
    )
)
_CERTIFICATIONS_OF = PreparedSelect(
    sa.select(
        _certification.c.status,
        _certification.c.expires_at,
        _certification.c.processes,
        _certification.c.materials,
    )
    .where(
        _certification.c.brand_id == sa.bindparam("brand_id"),
        _certification.c.facility_id == sa.bindparam("facility_id"),
    )
    .order_by(_certification.c.created_at, _certification.c.id)
)


def issue_facility_token(session: Session, facility_id: str) -> str:
    """A new API token for an approved facility (returned once)."""
    _, plaintext = issue_token(session, TokenKind.facility, "facility", facility_id=facility_id)
    return plaintext


def visible_to(facility: Facility, principal: Principal) -> bool:
    """Operator sees all; a facility sees itself; others see approved facilities."""
    if principal.kind == TokenKind.operator:
        return True
    if principal.kind == TokenKind.facility:
        return principal.facility_id == facility.id
    return facility.status == FacilityStatus.approved.value


def verify_possession(
    session: Session,
    principal: Principal,
    *,
    proof: str | None,
    htm: str,
    htu: str,
    access_token: str,
    checked: CheckedProof | None = None,
    replay_guard: ReplayGuard | None = None,
) -> None:
    """Check the request's DPoP proof against the facility's registered key.

    A stolen facility token is useless without the facility's private key.
    `checked` is the proof as the caller already checked it on its own
    (`check_proof`), if it did. The proof is remembered by `replay_guard`
    (by default, in the session's transaction).
    """
    assert principal.facility_id is not None
    expected_jkt = require_approved(session, principal.facility_id)
    if not proof:
        raise Unauthorized("a DPoP proof header is required", code="dpop-missing")
    if checked is None or checked.proof != proof:
        checked = check_proof(proof, htm=htm, htu=htu, access_token=access_token, now=utcnow())
    if replay_guard is None:
        replay_guard = DbReplayGuard(session)
    finish_proof(checked, expected_jkt=expected_jkt, replay_guard=replay_guard)
