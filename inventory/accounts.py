"""Brands and API tokens.

A token is ``pv_<kind>_<43 random url-safe chars>``: shown once, stored only as
its SHA-256 (the random part carries 256 bits, so a fast hash is the right
tool; a slow password hash would only cost latency). Lookup is by hash and the
match is re-checked in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, select

from inventory.crypto.keyring import KeyRing, rewrap_rows
from inventory.db import PreparedSelect, UTCDateTime, new_id, shared_read, utcnow
from inventory.errors import Conflict, NotFound, Unauthorized
from licensing.audit import log_event

LAST_USED_GRANULARITY = timedelta(seconds=60)


class TokenKind(StrEnum):
    operator = "operator"
    brand = "brand"
    shop = "shop"
    facility = "facility"


TOKEN_PREFIX = {
    TokenKind.operator: "pv_admin_",
    TokenKind.brand: "pv_brand_",
    TokenKind.shop: "pv_shop_",
    TokenKind.facility: "pv_fac_",
}


class Brand(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200, sa_column_kwargs={"unique": True})
    reprints_per_licence: int = Field(default=0)
    """Failed prints a licence may re-print without a new purchase (brand policy)."""
    watermark_key: bytes = Field(sa_type=sa.LargeBinary)
    """The brand's forensic watermark key, wrapped by the key ring."""
    created_at: datetime = Field(sa_type=UTCDateTime)


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"

    id: str = Field(primary_key=True, max_length=40)
    kind: str = Field(max_length=16)
    name: str = Field(max_length=200)
    brand_id: str | None = Field(default=None, foreign_key="brand.id", index=True, max_length=40)
    facility_id: str | None = Field(default=None, index=True, max_length=40)
    token_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True})
    display_prefix: str = Field(max_length=24)
    created_at: datetime = Field(sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's kind and the tenant it is bound to."""

    kind: TokenKind
    token_id: str
    brand_id: str | None = None
    facility_id: str | None = None

    @property
    def actor(self) -> str:
        """The audit log's ``kind:id``: a brand or facility by its tenant, others by token."""
        tenants = {TokenKind.brand: self.brand_id, TokenKind.facility: self.facility_id}
        return f"{self.kind.value}:{tenants.get(self.kind) or self.token_id}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_brand(session: Session, name: str, keyring: KeyRing) -> Brand:
    brand_id = new_id("brand")
    brand = Brand(
        id=brand_id,
        name=name,
        watermark_key=keyring.wrap(secrets.token_bytes(32), _watermark_context(brand_id)),
        created_at=utcnow(),
    )
    session.add(brand)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict(f"a brand named {name!r} exists", code="brand-name-taken") from None
    return brand


def _watermark_context(brand_id: str) -> bytes:
    return b"partvault:watermark-key:" + brand_id.encode()


def watermark_key(keyring: KeyRing, brand: Brand) -> bytes:
    """The brand's 32-byte watermark key: one brand can neither read nor forge another's marks."""
    return keyring.unwrap(brand.watermark_key, _watermark_context(brand.id))


def rewrap_watermark_keys(session: Session, keyring: KeyRing) -> int:
    rows = session.exec(select(Brand)).all()
    changed = rewrap_rows(keyring, rows, "watermark_key", lambda b: _watermark_context(b.id))
    session.add_all(changed)
    session.flush()
    return len(changed)


def list_brands(session: Session) -> list[Brand]:
    return list(session.exec(select(Brand).order_by(sa.column("created_at"), sa.column("id"))))


def get_brand(session: Session, brand_id: str) -> Brand:
    brand = session.get(Brand, brand_id)
    if brand is None:
        raise NotFound("no such brand", code="brand-not-found")
    return brand


def reprint_allowance(session: Session, brand_id: str) -> int:
    """The failed prints a new licence of this brand may re-print (its current policy)."""
    brand = shared_read(
        session, ("reprints", brand_id), lambda: _REPRINTS_OF.first(session, {"brand_id": brand_id})
    )
    if brand is None:
        raise NotFound("no such brand", code="brand-not-found")
    return int(brand.reprints_per_licence)


def set_reprint_policy(session: Session, brand_id: str, reprints: int, *, actor: str) -> Brand:
    """Failed prints a new licence of this brand may re-print (0: none)."""
    brand = get_brand(session, brand_id)
    brand.reprints_per_licence = reprints
    session.add(brand)
    session.flush()
    subject = {"brand": brand_id}
    kind = "inventory:brand:policy_set"
    log_event(
        session, kind, actor, brand_id=brand_id, subject=subject, reprints_per_licence=reprints
    )
    return brand


def issue_token(
    session: Session,
    kind: TokenKind,
    name: str,
    *,
    brand_id: str | None = None,
    facility_id: str | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; the plaintext is returned once and never stored."""
    if kind in (TokenKind.brand, TokenKind.shop):
        get_brand(session, brand_id or "")
    plaintext = TOKEN_PREFIX[kind] + secrets.token_urlsafe(32)
    row = ApiToken(
        id=new_id("tok"),
        kind=kind.value,
        name=name,
        brand_id=brand_id,
        facility_id=facility_id,
        token_hash=hash_token(plaintext),
        display_prefix=plaintext[: len(TOKEN_PREFIX[kind]) + 4],
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, plaintext


def authenticate(session: Session, token: str) -> Principal:
    """Resolve a bearer token to its principal; unknown or revoked → 401.

    On every request, so it runs two prepared Core statements (the lookup and,
    at most once a minute, the last-use stamp) rather than ORM loads.
    """
    digest = hash_token(token)
    row = shared_read(
        session,
        ("token", digest),
        lambda: _TOKEN_BY_HASH.first(session, {"digest": digest}),
    )
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        raise Unauthorized("unknown or malformed API token", code="token-invalid")
    if row.revoked_at is not None:
        raise Unauthorized("this API token was revoked", code="token-revoked")
    now = utcnow()
    stale_before = now - LAST_USED_GRANULARITY
    if row.last_used_at is None or row.last_used_at < stale_before:
        params = {"token_id": row.id, "now": now, "stale": stale_before}
        shared_read(session, ("touch", row.id), lambda: _touch(session, params))
    return Principal(TokenKind(row.kind), row.id, row.brand_id, row.facility_id)


def _touch(session: Session, params: dict[str, Any]) -> None:
    session.execute(_TOUCH_TOKEN, params)


_brands = Brand.__table__  # type: ignore[attr-defined]
_REPRINTS_OF = PreparedSelect(
    sa.select(_brands.c.reprints_per_licence).where(_brands.c.id == sa.bindparam("brand_id"))
)
_tokens = ApiToken.__table__  # type: ignore[attr-defined]
_TOKEN_BY_HASH = PreparedSelect(
    sa.select(
        _tokens.c.id,
        _tokens.c.kind,
        _tokens.c.brand_id,
        _tokens.c.facility_id,
        _tokens.c.token_hash,
        _tokens.c.last_used_at,
        _tokens.c.revoked_at,
    ).where(_tokens.c.token_hash == sa.bindparam("digest"))
)
#: Conditional, so that concurrent requests that all read a stale stamp write it
#: once: the others wait for that one row lock, re-check, and update nothing.
_TOUCH_TOKEN = (
    sa.update(_tokens)
    .where(
        _tokens.c.id == sa.bindparam("token_id"),
        sa.or_(_tokens.c.last_used_at.is_(None), _tokens.c.last_used_at < sa.bindparam("stale")),
    )
    .values(last_used_at=sa.bindparam("now"))
)


def list_tokens(session: Session, *, brand_id: str | None = None) -> list[ApiToken]:
    query = select(ApiToken).order_by(sa.column("created_at"), sa.column("id"))
    if brand_id is not None:
        query = query.where(ApiToken.brand_id == brand_id)
    return list(session.exec(query))


def revoke_token(session: Session, token_id: str, *, brand_id: str | None = None) -> ApiToken:
    """Revoke a token; a brand may only revoke its own tokens (others are 404)."""
    row = session.get(ApiToken, token_id)
    if row is None or (brand_id is not None and row.brand_id != brand_id):
        raise NotFound("no such token", code="token-not-found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        session.flush()
    return row


def rotate_operator_token(session: Session) -> str:
    """Revoke every operator token and issue a new one (returned once)."""
    now = utcnow()
    session.execute(
        sa.update(ApiToken)
        .where(sa.column("kind") == TokenKind.operator.value, sa.column("revoked_at").is_(None))
        .values(revoked_at=now)
    )
    _, plaintext = issue_token(session, TokenKind.operator, "operator")
    return plaintext


def ensure_operator_token(session: Session) -> str | None:
    """On first start, create the operator token and return it; later, None."""
    exists = session.exec(
        select(ApiToken.id).where(ApiToken.kind == TokenKind.operator.value).limit(1)
    ).first()
    if exists is not None:
        return None
    _, plaintext = issue_token(session, TokenKind.operator, "operator")
    return plaintext
