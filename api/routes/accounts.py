"""Brands, API tokens and who-am-I."""

from __future__ import annotations

from litestar import delete, get, post
from litestar.params import FromPath, JSONBody

from api.auth import Auth, Svc, tenant_of
from api.schemas import (
    BrandCreate,
    BrandOut,
    BrandPolicy,
    BrandPolicyOut,
    TokenCreate,
    TokenCreated,
    TokenOut,
    Whoami,
)
from inventory import accounts
from inventory.accounts import TokenKind
from inventory.errors import Forbidden, Invalid, NotFound


@post("/v1/brands", sync_to_thread=True, tags=["accounts"])
def create_brand(data: JSONBody[BrandCreate], operator: Auth, services: Svc) -> BrandOut:
    with services.transaction() as session:
        return BrandOut.of(accounts.create_brand(session, data.name, services.keyring))


@get("/v1/brands", sync_to_thread=True, tags=["accounts"])
def list_brands(operator: Auth, services: Svc) -> list[BrandOut]:
    with services.transaction() as session:
        return [BrandOut.of(b) for b in accounts.list_brands(session)]


@get("/v1/brands/{brand_id:str}", sync_to_thread=True, tags=["accounts"])
def get_brand(brand_id: FromPath[str], reader: Auth, services: Svc) -> BrandOut:
    if reader.kind == TokenKind.brand and reader.brand_id != brand_id:
        raise NotFound("no such brand", code="brand-not-found")
    with services.transaction() as session:
        return BrandOut.of(accounts.get_brand(session, brand_id))


@post("/v1/tokens", sync_to_thread=True, tags=["accounts"])
def create_token(data: JSONBody[TokenCreate], reader: Auth, services: Svc) -> TokenCreated:
    """Operator: any kind. Brand: brand or shop tokens for its own brand only."""
    kind = TokenKind(data.kind)
    foreign = kind == TokenKind.facility or data.brand_id not in (None, reader.brand_id)
    if reader.kind == TokenKind.brand and foreign:
        raise Forbidden("a brand issues brand and shop tokens for itself", code="wrong-role")
    brand_id = tenant_of(reader, data.brand_id) if kind != TokenKind.facility else None
    if kind == TokenKind.facility and not data.facility_id:
        raise Invalid("a facility token names facility_id", code="facility-id-required")
    with services.transaction() as session:
        row, plaintext = accounts.issue_token(
            session, kind, data.name, brand_id=brand_id, facility_id=data.facility_id
        )
        return TokenCreated.issued(row, plaintext)


@get("/v1/tokens", sync_to_thread=True, tags=["accounts"])
def list_tokens(reader: Auth, services: Svc) -> list[TokenOut]:
    brand_id = reader.brand_id if reader.kind == TokenKind.brand else None
    with services.transaction() as session:
        return [TokenOut.of(t) for t in accounts.list_tokens(session, brand_id=brand_id)]


@delete("/v1/tokens/{token_id:str}", status_code=200, sync_to_thread=True, tags=["accounts"])
def revoke_token(token_id: FromPath[str], reader: Auth, services: Svc) -> TokenOut:
    brand_id = reader.brand_id if reader.kind == TokenKind.brand else None
    with services.transaction() as session:
        return TokenOut.of(accounts.revoke_token(session, token_id, brand_id=brand_id))


@get("/v1/me", sync_to_thread=False, tags=["accounts"])
def whoami(caller: Auth) -> Whoami:
    return Whoami(
        kind=caller.kind.value,
        token_id=caller.token_id,
        brand_id=caller.brand_id,
        facility_id=caller.facility_id,
    )


@post("/v1/brands/{brand_id:str}/policy", sync_to_thread=True, tags=["accounts"])
def set_brand_policy(
    brand_id: FromPath[str], data: JSONBody[BrandPolicy], reader: Auth, services: Svc
) -> BrandPolicyOut:
    """How many failed prints a licence may re-print (default 0: a failed print is spent)."""
    owner = tenant_of(reader, brand_id)
    if owner != brand_id:
        raise NotFound("no such brand", code="brand-not-found")
    with services.transaction() as session:
        brand = accounts.set_reprint_policy(
            session, brand_id, data.reprints_per_licence, actor=reader.actor
        )
        return BrandPolicyOut(brand_id=brand.id, reprints_per_licence=brand.reprints_per_licence)


ROUTES = [
    create_brand,
    list_brands,
    get_brand,
    create_token,
    list_tokens,
    revoke_token,
    whoami,
    set_brand_policy,
]
