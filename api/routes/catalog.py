"""Parts, print profiles and the public catalog."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter

from api.auth import Auth, Svc, tenant_of
from api.schemas import (
    CatalogItem,
    CatalogPage,
    PartCreate,
    PartOut,
    PartPage,
    PartUpdate,
    PrintProfileIn,
    PrintProfileOut,
)
from inventory import catalog

Limit = Annotated[int, QueryParameter(ge=1, le=200)]
Cursor = Annotated[str | None, QueryParameter(max_length=200)]
BrandFilter = Annotated[str | None, QueryParameter(max_length=40)]

PUBLIC_STATUSES = ("active", "discontinued")


@post("/v1/parts", sync_to_thread=True, tags=["catalog"])
def create_part(
    data: JSONBody[PartCreate], reader: Auth, services: Svc, brand_id: BrandFilter = None
) -> PartOut:
    owner = tenant_of(reader, brand_id)
    with services.transaction() as session:
        fields = msgspec.structs.asdict(data)
        return PartOut.of(catalog.create_part(session, owner, **fields, actor=reader.actor))


@get("/v1/parts", sync_to_thread=True, tags=["catalog"])
def list_parts(
    reader: Auth,
    services: Svc,
    brand_id: BrandFilter = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PartPage:
    owner = tenant_of(reader, brand_id)
    with services.transaction() as session:
        page = catalog.list_parts(session, owner, cursor=cursor, limit=limit)
        return PartPage(items=[PartOut.of(p) for p in page.items], next_cursor=page.next_cursor)


@get("/v1/parts/{part_id:str}", sync_to_thread=True, tags=["catalog"])
def get_part(
    part_id: FromPath[str], reader: Auth, services: Svc, brand_id: BrandFilter = None
) -> PartOut:
    owner = tenant_of(reader, brand_id)
    with services.transaction() as session:
        return PartOut.of(catalog.get_part(session, owner, part_id))


@patch("/v1/parts/{part_id:str}", sync_to_thread=True, tags=["catalog"])
def update_part(
    part_id: FromPath[str],
    data: JSONBody[PartUpdate],
    reader: Auth,
    services: Svc,
    brand_id: BrandFilter = None,
) -> PartOut:
    owner = tenant_of(reader, brand_id)
    with services.transaction() as session:
        part = catalog.update_part(session, owner, part_id, data.changes(), actor=reader.actor)
        return PartOut.of(part)


@post("/v1/parts/{part_id:str}/profiles", sync_to_thread=True, tags=["catalog"])
def add_profile(
    part_id: FromPath[str],
    data: JSONBody[PrintProfileIn],
    reader: Auth,
    services: Svc,
    brand_id: BrandFilter = None,
) -> PrintProfileOut:
    owner = tenant_of(reader, brand_id)
    settings = msgspec.to_builtins(data)
    with services.transaction() as session:
        profile = catalog.add_print_profile(session, owner, part_id, settings, actor=reader.actor)
        return PrintProfileOut.of(profile)


@get("/v1/parts/{part_id:str}/profiles", sync_to_thread=True, tags=["catalog"])
def list_profiles(
    part_id: FromPath[str], reader: Auth, services: Svc, brand_id: BrandFilter = None
) -> list[PrintProfileOut]:
    owner = tenant_of(reader, brand_id)
    with services.transaction() as session:
        return [PrintProfileOut.of(p) for p in catalog.list_profiles(session, owner, part_id)]


@get("/v1/catalog", sync_to_thread=True, tags=["catalog"])
def public_catalog(
    seller: Auth, services: Svc, cursor: Cursor = None, limit: Limit = 50
) -> CatalogPage:
    """The brand's catalog as a webshop sees it: metadata, no geometry, no withdrawn parts."""
    owner = tenant_of(seller, None)
    with services.transaction() as session:
        page = catalog.list_parts(
            session, owner, cursor=cursor, limit=limit, statuses=PUBLIC_STATUSES
        )
        items = [CatalogItem.of(p, catalog.current_profile(session, p)) for p in page.items]
        return CatalogPage(items=items, next_cursor=page.next_cursor)


@get("/v1/catalog/{sku:str}", sync_to_thread=True, tags=["catalog"])
def public_catalog_item(sku: FromPath[str], seller: Auth, services: Svc) -> CatalogItem:
    owner = tenant_of(seller, None)
    with services.transaction() as session:
        part = catalog.get_public_part(session, owner, sku, PUBLIC_STATUSES)
        return CatalogItem.of(part, catalog.current_profile(session, part))


ROUTES = [
    create_part,
    list_parts,
    get_part,
    update_part,
    add_profile,
    list_profiles,
    public_catalog,
    public_catalog_item,
]
