"""Design revisions: streamed upload, measurements, original download, shredding."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import anyio
from litestar import Request, delete, get, post
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream

from api.auth import Auth, Svc
from api.schemas import RevisionOut
from api.services import Services
from api.uploads import spool_body
from inventory import catalog, designs
from inventory.accounts import Principal
from inventory.catalog import Revision

Filename = Annotated[str, QueryParameter(min_length=1, max_length=255)]
Unit = Annotated[
    str | None, QueryParameter(pattern=r"^(micron|millimeter|centimeter|meter|inch|foot)$")
]
Notes = Annotated[str, QueryParameter(max_length=4000)]


@post(
    "/v1/parts/{part_id:str}/revisions",
    request_max_body_size=None,
    status_code=201,
    tags=["designs"],
)
async def upload_revision(
    request: Request[Any, Any, Any],
    part_id: FromPath[str],
    brand: Auth,
    services: Svc,
    filename: Filename,
    unit: Unit = None,
    allow_open: Annotated[bool, QueryParameter()] = False,
    notes: Notes = "",
) -> RevisionOut:
    """Stream a design (STL, 3MF or OBJ) as the raw request body; it is validated,
    measured, encrypted and stored. Nothing is kept if it is refused."""
    settings = services.settings
    spool = await spool_body(request, settings.data_dir / "spool", settings.max_upload_bytes)
    upload = designs.Upload(spool, filename, unit, allow_open, notes)
    try:
        revision = await anyio.to_thread.run_sync(partial(_store, services, brand, part_id, upload))
    finally:
        spool.unlink(missing_ok=True)
    return RevisionOut.of(revision)


def _store(services: Services, brand: Principal, part_id: str, upload: designs.Upload) -> Revision:
    assert brand.brand_id is not None
    with services.transaction() as session:
        return designs.store_revision(
            session,
            services.store,
            services.keyring,
            brand.brand_id,
            part_id,
            upload,
            limits=services.ingest_limits,
            actor=f"brand:{brand.brand_id}",
        )


@get("/v1/parts/{part_id:str}/revisions", sync_to_thread=True, tags=["designs"])
def list_revisions(part_id: FromPath[str], brand: Auth, services: Svc) -> list[RevisionOut]:
    assert brand.brand_id is not None
    with services.transaction() as session:
        return [RevisionOut.of(r) for r in catalog.list_revisions(session, brand.brand_id, part_id)]


@get("/v1/revisions/{revision_id:str}", sync_to_thread=True, tags=["designs"])
def get_revision(revision_id: FromPath[str], brand: Auth, services: Svc) -> RevisionOut:
    assert brand.brand_id is not None
    with services.transaction() as session:
        return RevisionOut.of(catalog.get_revision(session, brand.brand_id, revision_id))


@get("/v1/revisions/{revision_id:str}/design", sync_to_thread=True, tags=["designs"])
def download_original(revision_id: FromPath[str], brand: Auth, services: Svc) -> Stream:
    """The brand's own original, decrypted and byte-identical (sha256 in a header)."""
    assert brand.brand_id is not None
    with services.transaction() as session:
        revision, plaintext = designs.open_revision(
            session, services.store, services.keyring, brand.brand_id, revision_id
        )
    return Stream(
        plaintext,
        media_type="application/octet-stream",
        headers={
            "content-disposition": f'attachment; filename="{_safe(revision.filename)}"',
            "content-length": str(revision.size_bytes),
            "x-content-sha256": revision.sha256,
        },
    )


def _safe(filename: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in filename)


@delete("/v1/revisions/{revision_id:str}", status_code=200, sync_to_thread=True, tags=["designs"])
def shred_revision(revision_id: FromPath[str], brand: Auth, services: Svc) -> RevisionOut:
    """Crypto-shred a revision: its data key is destroyed, its download answers 410."""
    assert brand.brand_id is not None
    with services.transaction() as session:
        revision = designs.shred_revision(
            session, brand.brand_id, revision_id, actor=f"brand:{brand.brand_id}"
        )
    designs.discard_object(services.store, revision.object_key)
    return RevisionOut.of(revision)


ROUTES = [
    upload_revision,
    list_revisions,
    get_revision,
    download_original,
    shred_revision,
]
