"""Facilities (print bureaus) and brands' certifications of them."""

from __future__ import annotations

from typing import Literal

import msgspec
from litestar import get, patch, post
from litestar.params import FromPath, JSONBody

from api.auth import Auth, Svc
from api.schemas import (
    CertificationIn,
    CertificationOut,
    FacilityApproved,
    FacilityIn,
    FacilityOut,
    FacilityUpdate,
    StatusChange,
)
from inventory.accounts import TokenKind
from inventory.errors import NotFound
from licensing import facilities
from licensing.facilities import CertificationStatus, FacilityStatus


@post("/v1/facilities", sync_to_thread=True, tags=["facilities"])
def register_facility(
    data: JSONBody[FacilityIn], operator: Auth, services: Svc
) -> FacilityApproved:
    """The operator registers an approved facility; its API token is returned once."""
    with services.transaction() as session:
        row = facilities.register_facility(
            session, msgspec.to_builtins(data), approved=True, actor=operator.actor
        )
        token = facilities.issue_facility_token(session, row.id)
        return FacilityApproved(facility=FacilityOut.of(row), token=token)


@post("/v1/facilities/applications", sync_to_thread=True, tags=["facilities"])
def apply_as_facility(data: JSONBody[FacilityIn], services: Svc) -> FacilityOut:
    """Self-service registration: the facility waits for the operator's approval."""
    with services.transaction() as session:
        row = facilities.register_facility(
            session, msgspec.to_builtins(data), approved=False, actor="public:application"
        )
        return FacilityOut.of(row)


@post("/v1/facilities/{facility_id:str}/approve", sync_to_thread=True, tags=["facilities"])
def approve_facility(facility_id: FromPath[str], operator: Auth, services: Svc) -> FacilityApproved:
    with services.transaction() as session:
        row = facilities.set_facility_status(
            session, facility_id, FacilityStatus.approved, actor=operator.actor
        )
        token = facilities.issue_facility_token(session, row.id)
        return FacilityApproved(facility=FacilityOut.of(row), token=token)


@post("/v1/facilities/{facility_id:str}/suspend", sync_to_thread=True, tags=["facilities"])
def suspend_facility(facility_id: FromPath[str], operator: Auth, services: Svc) -> FacilityOut:
    with services.transaction() as session:
        row = facilities.set_facility_status(
            session, facility_id, FacilityStatus.suspended, actor=operator.actor
        )
        return FacilityOut.of(row)


@get("/v1/facilities", sync_to_thread=True, tags=["facilities"])
def list_facilities(caller: Auth, services: Svc) -> list[FacilityOut]:
    """Operator: all. Brands and shops: the approved directory. A facility: itself."""
    with services.transaction() as session:
        if caller.kind == TokenKind.facility:
            assert caller.facility_id is not None
            return [FacilityOut.of(facilities.get_facility(session, caller.facility_id))]
        status = None if caller.kind == TokenKind.operator else FacilityStatus.approved.value
        return [FacilityOut.of(f) for f in facilities.list_facilities(session, status=status)]


@get("/v1/facilities/{facility_id:str}", sync_to_thread=True, tags=["facilities"])
def get_facility(facility_id: FromPath[str], caller: Auth, services: Svc) -> FacilityOut:
    with services.transaction() as session:
        row = facilities.get_facility(session, facility_id)
        if not facilities.visible_to(row, caller):
            raise NotFound("no such facility", code="facility-not-found")
        return FacilityOut.of(row)


@patch("/v1/facilities/{facility_id:str}", sync_to_thread=True, tags=["facilities"])
def update_facility(
    facility_id: FromPath[str], data: JSONBody[FacilityUpdate], caller: Auth, services: Svc
) -> FacilityOut:
    """The facility itself (or the operator) edits its profile or rotates its keys."""
    if caller.kind not in (TokenKind.operator, TokenKind.facility) or (
        caller.kind == TokenKind.facility and caller.facility_id != facility_id
    ):
        raise NotFound("no such facility", code="facility-not-found")
    with services.transaction() as session:
        row = facilities.update_facility(session, facility_id, data.changes(), actor=caller.actor)
        return FacilityOut.of(row)


@post("/v1/certifications", sync_to_thread=True, tags=["facilities"])
def certify_facility(
    data: JSONBody[CertificationIn], brand: Auth, services: Svc
) -> CertificationOut:
    assert brand.brand_id is not None
    with services.transaction() as session:
        row = facilities.certify(
            session,
            brand.brand_id,
            data.facility_id,
            processes=[p.value for p in data.processes],
            materials=data.materials,
            expires_at=data.expires_at,
            actor=brand.actor,
        )
        return CertificationOut.of(row)


@get("/v1/certifications", sync_to_thread=True, tags=["facilities"])
def list_certifications(caller: Auth, services: Svc) -> list[CertificationOut]:
    """A brand sees its own certifications, a facility those it holds, the operator all."""
    with services.transaction() as session:
        rows = facilities.list_certifications(
            session,
            brand_id=caller.brand_id if caller.kind in (TokenKind.brand, TokenKind.shop) else None,
            facility_id=caller.facility_id if caller.kind == TokenKind.facility else None,
        )
        return [CertificationOut.of(c) for c in rows]


Transition = Literal["suspend", "reinstate", "revoke"]
NEW_STATUS = {
    "suspend": CertificationStatus.suspended,
    "reinstate": CertificationStatus.active,
    "revoke": CertificationStatus.revoked,
}


@post("/v1/certifications/{cert_id:str}/{action:str}", sync_to_thread=True, tags=["facilities"])
def change_certification(
    cert_id: FromPath[str],
    action: FromPath[Transition],
    data: JSONBody[StatusChange],
    brand: Auth,
    services: Svc,
) -> CertificationOut:
    assert brand.brand_id is not None
    with services.transaction() as session:
        row = facilities.set_certification_status(
            session, brand.brand_id, cert_id, NEW_STATUS[action], data.reason, actor=brand.actor
        )
        return CertificationOut.of(row)


ROUTES = [
    register_facility,
    apply_as_facility,
    approve_facility,
    suspend_facility,
    list_facilities,
    get_facility,
    update_facility,
    certify_facility,
    list_certifications,
    change_certification,
]
