"""Licences: issue, read, revoke, redeem print by print; print jobs and reports; JWKS."""

from __future__ import annotations

from functools import partial
from typing import Any

from litestar import Response, get, post
from litestar.params import FromPath, JSONBody

from api.auth import Auth, Creds, Svc
from api.groupcommit import Deferred
from api.idempotency import CreatingPost, IdempotencyKey, run_creating
from api.schemas import LicenceIn, LicenceOut, PrintJobOut, PrintReport, RedeemIn, StatusChange
from api.services import Services
from inventory.accounts import Principal, TokenKind
from inventory.db import utcnow
from inventory.errors import PartvaultError
from licensing import licences
from licensing.licences import JobStatus, LicenceTerms
from licensing.orders import orders
from licensing.tokens import current_signer, jwks, sign_revocation_list


@post("/v1/licences", tags=["licences"])
async def issue_licence(
    data: JSONBody[LicenceIn],
    credentials: Creds,
    services: Svc,
    idempotency_key: IdempotencyKey = None,
) -> Response[bytes]:
    """Issue a signed licence for `prints` prints of a revision to a certified facility."""
    terms = LicenceTerms(
        facility_id=data.facility_id,
        revision_id=data.revision_id,
        prints=data.prints,
        not_before=data.not_before or utcnow(),
        expires_at=data.expires_at,
    )
    post = CreatingPost(
        credentials=credentials,
        kinds=(TokenKind.brand,),
        key=idempotency_key,
        path="/v1/licences",
        payload=data,
        work=Deferred(partial(check_issue, terms), record_licences),
    )
    return await run_creating(services, post)


def check_issue(
    terms: LicenceTerms, services: Services, session: Any, brand: Principal
) -> licences.CheckedIssue:
    """Check an issuance (in the committing process: a module-level function pickles)."""
    signer = current_signer(session, services.keyring)
    return licences.check_issue(
        session, signer, services.tokens, brand.brand_id or "", terms, actor=brand.actor
    )


def record_licences(session: Any, checked: list[licences.CheckedIssue]) -> list[LicenceOut]:
    """Sign and record the checked licences of a batch together."""
    return [LicenceOut.of(row) for row in licences.record_licences(session, checked)]


@get("/v1/licences", sync_to_thread=True, tags=["licences"])
def list_licences(caller: Auth, services: Svc) -> list[LicenceOut]:
    """A brand sees its licences, a facility those issued to it, the operator all."""
    with services.transaction() as session:
        return [LicenceOut.of(row) for row in licences.list_licences(session, caller)]


@get("/v1/licences/{jti:str}", sync_to_thread=True, tags=["licences"])
def get_licence(jti: FromPath[str], caller: Auth, services: Svc) -> LicenceOut:
    with services.transaction() as session:
        return LicenceOut.of(licences.get_licence(session, caller, jti))


@post("/v1/licences/{jti:str}/revoke", sync_to_thread=True, tags=["licences"])
def revoke_licence(
    jti: FromPath[str], data: JSONBody[StatusChange], brand: Auth, services: Svc
) -> LicenceOut:
    assert brand.brand_id is not None
    with services.transaction() as session:
        row = licences.revoke(
            session, brand.brand_id, jti, data.reason, actor=f"brand:{brand.brand_id}"
        )
        return LicenceOut.of(row)


@post("/v1/licences/{jti:str}/redeem", tags=["licences"])
async def redeem_licence(
    jti: FromPath[str],
    data: JSONBody[RedeemIn],
    credentials: Creds,
    services: Svc,
    idempotency_key: IdempotencyKey = None,
) -> Response[bytes]:
    """Count one print (if any remain) and open its print job; the facility's
    proof of possession is checked with its token, in the same transaction."""
    post = CreatingPost(
        credentials=credentials,
        kinds=(TokenKind.facility,),
        key=idempotency_key,
        path=f"/v1/licences/{jti}/redeem",
        payload=data,
        work=Deferred(partial(check_redemption, jti, data.licence), count_redemptions),
    )
    return await run_creating(services, post)


def check_redemption(
    jti: str, token: str, services: Services, session: Any, facility: Principal
) -> licences.CheckedRedemption:
    """Check a redemption (in the committing process: a module-level function pickles)."""
    return licences.check_redemption(session, facility, jti, token, context=services.tokens)


def count_redemptions(
    session: Any, checked: list[licences.CheckedRedemption]
) -> list[PrintJobOut | PartvaultError]:
    """Count the checked redemptions of a batch together; an order whose licence
    prints for the first time is in production."""
    outcomes: list[PrintJobOut | PartvaultError] = []
    for job in licences.count_prints(session, checked):
        if isinstance(job, PartvaultError):
            outcomes.append(job)
        else:
            orders.on_print_redeemed(session, job)
            outcomes.append(PrintJobOut.of(job))
    return outcomes


@get("/v1/jobs", sync_to_thread=True, tags=["licences"])
def list_jobs(caller: Auth, services: Svc) -> list[PrintJobOut]:
    with services.transaction() as session:
        return [PrintJobOut.of(job) for job in licences.list_jobs(session, caller)]


@get("/v1/jobs/{serial:str}", sync_to_thread=True, tags=["licences"])
def get_job(serial: FromPath[str], caller: Auth, services: Svc) -> PrintJobOut:
    with services.transaction() as session:
        job = licences.get_job(session, caller, licences.parse_serial(serial))
        return PrintJobOut.of(job)


@post("/v1/jobs/{serial:str}/report", sync_to_thread=True, tags=["licences"])
def report_job(
    serial: FromPath[str], data: JSONBody[PrintReport], facility: Auth, services: Svc
) -> PrintJobOut:
    """The facility reports a print as printed or failed (with a reason)."""
    with services.transaction() as session:
        job = licences.report(
            session,
            facility,
            licences.parse_serial(serial),
            status=JobStatus(data.status),
            reason=data.reason,
            measurements=dict(data.measurements),
        )
        orders.on_print_reported(session, job)
        return PrintJobOut.of(job)


@get("/.well-known/jwks.json", sync_to_thread=True, tags=["licences"])
def licence_jwks(services: Svc) -> dict[str, Any]:
    """The public keys that verify licences (current and still-needed old ones)."""
    with services.transaction() as session:
        return jwks(session, utcnow())


@get("/v1/licences/revoked", sync_to_thread=True, tags=["licences"], media_type="application/jwt")
def revocation_list(services: Svc) -> str:
    """A signed list (JWT, typ pv-crl+jwt) of revoked, unexpired licences."""
    with services.transaction() as session:
        signer = current_signer(session, services.keyring)
        revoked = [
            (row.jti, row.revoked_at, row.revoke_reason)
            for row in licences.revoked_licences(session)
            if row.revoked_at is not None
        ]
        return sign_revocation_list(signer, revoked, issuer=services.tokens.issuer, now=utcnow())


ROUTES = [
    issue_licence,
    list_licences,
    get_licence,
    revoke_licence,
    redeem_licence,
    list_jobs,
    get_job,
    report_job,
    licence_jwks,
    revocation_list,
]
