"""Bearer-token authentication as Litestar dependencies, one per role.

A handler asks for the principal it needs by parameter name: ``operator``,
``brand``, ``shop``, ``facility``, ``caller`` (any role), ``reader``
(operator or brand) or ``seller`` (brand or its webshop). Authentication
touches the database, so these run in a worker thread, never on the event loop.
Hot write paths ask for ``credentials`` instead (parsed on the event loop) and
`authorize` in the same transaction as their work: one thread hop, one commit.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any

from litestar import Request
from litestar.di import NamedDependency, Provide
from sqlmodel import Session

from api.services import Services
from inventory.accounts import Principal, TokenKind, authenticate
from inventory.db import utcnow
from inventory.errors import BadRequest, Forbidden, Unauthorized
from licensing import facilities
from licensing.tokens.dpop import CheckedProof, check_proof
from licensing.tokens.replay import ReplayGuard

#: A principal injected by the dependency named like the parameter.
Auth = NamedDependency[Principal]
#: The process-wide services.
Svc = NamedDependency[Services]


def bearer_token(request: Request[Any, Any, Any]) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("an Authorization: Bearer token is required", code="token-missing")
    scheme, _, token = header.partition(" ")
    if scheme.lower() not in ("bearer", "dpop") or not token.strip():
        raise Unauthorized("use Authorization: Bearer <token>", code="token-malformed")
    return token.strip()


@dataclass(frozen=True)
class Credentials:
    """What a request presents, read on the event loop without touching the database."""

    token: str
    proof: str | None
    htm: str
    htu: str
    checked_proof: CheckedProof | None = None


def check_proof_ahead(credentials: Credentials) -> Credentials:
    """`credentials` with their DPoP proof (if any) checked as far as it can be
    without the database (`licensing.tokens.dpop.check_proof`); `authorize`
    then finishes the check in the caller's transaction instead of redoing it."""
    if not credentials.proof:
        return credentials
    checked = check_proof(
        credentials.proof,
        htm=credentials.htm,
        htu=credentials.htu,
        access_token=credentials.token,
        now=utcnow(),
    )
    return replace(credentials, checked_proof=checked)


#: The request's credentials, for routes that `authorize` inside their own transaction.
Creds = NamedDependency[Credentials]


def credentials_of(request: Request[Any, Any, Any], services: Svc) -> Credentials:
    """The request's credentials. Takes `services` as a dependency so that a route
    asking for both resolves them one after the other: Litestar resolves
    independent dependencies in an anyio task group, which costs more per request
    than either of them (measured: ~8 % of a redemption's CPU)."""
    return Credentials(
        token=bearer_token(request),
        proof=request.headers.get("dpop"),
        htm=request.method,
        htu=services.settings.public_url.rstrip("/") + request.url.path,
    )


def authorize(
    session: Session,
    credentials: Credentials,
    kinds: Collection[TokenKind],
    replay_guard: ReplayGuard | None = None,
) -> Principal:
    """Authenticate in the caller's transaction; a facility must also prove possession
    of its key (its proof remembered by `replay_guard`, by default in the
    transaction); a token of another role is refused (403)."""
    principal = authenticate(session, credentials.token)
    if principal.kind == TokenKind.facility:
        facilities.verify_possession(
            session,
            principal,
            proof=credentials.proof,
            htm=credentials.htm,
            htu=credentials.htu,
            access_token=credentials.token,
            checked=credentials.checked_proof,
            replay_guard=replay_guard,
        )
    if principal.kind not in kinds:
        allowed = " or ".join(k.value for k in kinds)
        raise Forbidden(f"this call is for {allowed} tokens", code="wrong-role")
    return principal


def _requiring(*kinds: TokenKind) -> Callable[[Request[Any, Any, Any], Services], Principal]:
    def dependency(request: Request[Any, Any, Any], services: Svc) -> Principal:
        credentials = credentials_of(request, services)
        with services.transaction() as session:
            return authorize(session, credentials, kinds)

    return dependency


def provide_services(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


DEPENDENCIES = {
    "services": Provide(provide_services, sync_to_thread=False),
    "credentials": Provide(credentials_of, sync_to_thread=False),
    "caller": Provide(_requiring(*TokenKind), sync_to_thread=True),
    "operator": Provide(_requiring(TokenKind.operator), sync_to_thread=True),
    "brand": Provide(_requiring(TokenKind.brand), sync_to_thread=True),
    "shop": Provide(_requiring(TokenKind.shop), sync_to_thread=True),
    "facility": Provide(_requiring(TokenKind.facility), sync_to_thread=True),
    "reader": Provide(_requiring(TokenKind.operator, TokenKind.brand), sync_to_thread=True),
    "seller": Provide(_requiring(TokenKind.brand, TokenKind.shop), sync_to_thread=True),
}


def tenant_of(principal: Principal, brand_id: str | None) -> str:
    """The brand a call acts on: a brand's own; the operator names one explicitly."""
    if principal.kind == TokenKind.operator:
        if not brand_id:
            raise BadRequest("the operator must name brand_id", code="brand-id-required")
        return brand_id
    assert principal.brand_id is not None
    return principal.brand_id
