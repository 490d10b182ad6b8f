"""A facility's watermarked, encrypted copy of a design, and tracing leaked files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from litestar import Request, get, post
from litestar.params import FromPath
from litestar.response import Stream

from api.auth import Auth, Svc
from api.idempotency import in_thread
from api.schemas import TraceResult
from api.services import Services
from api.uploads import spool_body
from inventory.accounts import Principal
from licensing import deliveries, licences, tracing

CHUNK = 1024 * 1024


@get("/v1/jobs/{serial:str}/design", tags=["delivery"])
async def download_design(serial: FromPath[str], facility: Auth, services: Svc) -> Stream:
    """The job's design as 3MF Secure Content: watermarked with the serial, its content key
    wrapped to the facility's RSA key. Limited fetches (PARTVAULT_MAX_DOWNLOADS), each audited."""
    number = licences.parse_serial(serial)
    ticket = await in_thread(_reserve, services, facility, number)
    spool = services.settings.data_dir / "spool"
    path = await in_thread(_package, services, ticket, spool)
    return Stream(
        _stream_and_remove(path),
        media_type="model/3mf",
        headers={
            "content-disposition": f'attachment; filename="{serial}.3mf"',
            "content-length": str(path.stat().st_size),
        },
    )


def _reserve(services: Services, facility: Principal, serial: int) -> deliveries.Ticket:
    with services.transaction() as session:
        return deliveries.reserve_download(
            session,
            services.keyring,
            facility,
            serial,
            max_downloads=services.settings.max_downloads,
            issuer=services.tokens.issuer,
        )


def _package(services: Services, ticket: deliveries.Ticket, spool: Path) -> Path:
    """Write the package to a temporary file (ciphertext only); on failure give the fetch back."""
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=spool, prefix="delivery-", suffix=".3mf")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            deliveries.package(services.store, ticket, out, spool)
    except BaseException:
        path.unlink(missing_ok=True)
        with services.transaction() as session:
            deliveries.release_download(session, ticket.serial)
        raise
    return path


def _stream_and_remove(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
    finally:
        path.unlink(missing_ok=True)


@post("/v1/trace", request_max_body_size=None, tags=["delivery"])
async def trace_leak(request: Request[Any, Any, Any], brand: Auth, services: Svc) -> TraceResult:
    """Upload a suspect STL, 3MF or OBJ (raw body, `?filename=`); learn which print job,
    licence and facility it came from, or that it carries no mark of this brand."""
    filename = request.query_params.get("filename", "suspect.stl")
    settings = services.settings
    spool = await spool_body(request, settings.data_dir / "spool", settings.max_upload_bytes)
    try:
        found = await in_thread(_trace, services, brand, spool, filename)
    finally:
        spool.unlink(missing_ok=True)
    return TraceResult.of(found)


def _trace(services: Services, brand: Principal, path: Path, filename: str) -> tracing.Trace:
    assert brand.brand_id is not None
    with services.transaction() as session:
        return tracing.trace(
            session,
            services.keyring,
            brand.brand_id,
            path,
            filename,
            limits=services.ingest_limits,
            actor=f"brand:{brand.brand_id}",
        )


ROUTES = [download_design, trace_leak]
