"""Exactly-once counting under contention, against the real server with 4 processes.

The service is started as `python -m api.cli serve --workers 4` on a fresh
SQLite file (one writer lock shared by every process) and on a fresh
PostgreSQL database, set up over HTTP like a brand and an operator would, and
then a licence for 37 prints is redeemed by 200 concurrent requests, each with
its own proof of possession. Exactly 37 must win; every other request must be
a clean 409 ``licence-exhausted`` (never a 5xx), and the counter, the print
jobs and the audit leaves must all agree. The same again with every request
sent twice at once under one Idempotency-Key (a bureau retrying): each key
counts at most once, and both copies get the same answer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from api_helpers import PROFILE, facility_body, facility_keys
from tests_support import BOOT_SECONDS, create_pg_database, drop_pg_database, wait_ready

from inventory.db import utcnow
from licensing.tokens import make_proof

# one pytest-xdist worker runs them all: one server per backend, not one per test
pytestmark = pytest.mark.xdist_group("concurrency")

PRINTS = 37
ATTEMPTS = 200
CLIENT_THREADS = 40
WORKERS = 4
REDEEMED = (
    "SELECT count(*) FROM audit_entry WHERE event_type = 'licensing:print:redeemed'"
    " AND subject LIKE :subject"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running `partvault serve` subprocess and its operator token."""

    proc: subprocess.Popen[bytes]
    base: str
    database_url: str
    admin: str
    stdout: Path
    stderr: Path


def _launch(folder: Path, database_url: str) -> Server:
    """Start `partvault serve --workers 4` in its own process group (not yet ready)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTVAULT_")} | {
        "PARTVAULT_DATA_DIR": str(folder / "data"),
        "PARTVAULT_DATABASE_URL": database_url,
        "PARTVAULT_PUBLIC_URL": base,
        "PARTVAULT_LOG_LEVEL": "WARNING",
    }
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "api.cli",
                "serve",
                "--workers",
                str(WORKERS),
                "--port",
                str(port),
            ],
            cwd=folder,
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # its own process group: the workers stop with it
        )
    return Server(proc, base, database_url, "", out, err)


def _await_ready(server: Server) -> None:
    """Wait for /ready, then read the operator token printed on first start."""
    # five processes boot on two cores shared with the other test worker
    wait_ready(server.base, server.proc, server.stderr.read_text, 2 * BOOT_SECONDS)
    printed = server.stdout.read_text()
    tokens = [word for word in printed.split() if word.startswith("pv_admin_")]
    assert len(tokens) == 1, f"no admin token on stdout: {printed!r}"
    server.admin = tokens[0]


def _stop(server: Server) -> None:
    """SIGTERM the server's process group, SIGKILL whatever is left after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`partvault serve --workers 4` on a fresh database of the backend."""
    backend = request.param
    folder = tmp_path_factory.mktemp(f"serve-{backend}")
    pg_url = create_pg_database() if backend == "postgresql" else None
    url = pg_url or f"sqlite:///{folder / 'data' / 'partvault.db'}"
    started = _launch(folder, url)
    try:
        _await_ready(started)
        yield started
    finally:
        _stop(started)
        if pg_url:
            drop_pg_database(pg_url)


def _ok(client: httpx.Client, method: str, path: str, token: str, **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", {}) | {"Authorization": f"Bearer {token}"}
    response = client.request(method, path, headers=headers, **kwargs)
    assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
    return response.json()


@dataclass
class Setup:
    brand: str
    facility_token: str
    pop_key: Any
    licence: dict[str, Any]


def _set_up(client: httpx.Client, admin: str, mesh: bytes, name: str) -> Setup:
    """Brand `name`, profiled part, uploaded revision, certified facility, licence for 37."""
    brand_row = _ok(client, "POST", "/v1/brands", admin, json={"name": name})
    brand = _ok(
        client,
        "POST",
        "/v1/tokens",
        admin,
        json={"kind": "brand", "name": "acme api", "brand_id": brand_row["id"]},
    )["token"]
    part = _ok(client, "POST", "/v1/parts", brand, json={"sku": "CUBE-20", "name": "Cube"})
    _ok(client, "POST", f"/v1/parts/{part['id']}/profiles", brand, json=PROFILE)
    revision = _ok(
        client,
        "POST",
        f"/v1/parts/{part['id']}/revisions",
        brand,
        params={"filename": "20mm-xyz-cube.stl"},
        content=mesh,
        headers={"content-type": "application/octet-stream"},
    )
    pop, _, pop_pem, wrap_pem = facility_keys()
    created = _ok(
        client,
        "POST",
        "/v1/facilities",
        admin,
        json=facility_body(pop_pem, wrap_pem, name=f"{name} Print Hub"),
    )
    facility_id = created["facility"]["id"]
    _ok(
        client,
        "POST",
        "/v1/certifications",
        brand,
        json={
            "facility_id": facility_id,
            "processes": ["SLA"],
            "materials": ["Tough 2000"],
            "expires_at": "2099-01-01T00:00:00Z",
        },
    )
    licence = _ok(
        client,
        "POST",
        "/v1/licences",
        brand,
        json={
            "facility_id": facility_id,
            "revision_id": revision["id"],
            "prints": PRINTS,
            "expires_at": "2099-01-01T00:00:00Z",
        },
    )
    return Setup(brand, created["token"], pop, licence)


def _facility_headers(server: Server, setup: Setup, method: str, path: str) -> dict[str, str]:
    proof = make_proof(
        setup.pop_key,
        htm=method,
        htu=server.base + path,
        access_token=setup.facility_token,
        now=utcnow(),
    )
    return {"Authorization": f"Bearer {setup.facility_token}", "DPoP": proof}


def _client(server: Server) -> httpx.Client:
    # idle connections are dropped long before uvicorn's 5 s keep-alive timeout closes
    # them server-side: reusing one the server is closing is a client-side race
    limits = httpx.Limits(
        max_connections=CLIENT_THREADS,
        max_keepalive_connections=CLIENT_THREADS,
        keepalive_expiry=1.0,
    )
    return httpx.Client(base_url=server.base, timeout=60, limits=limits)


def _race(
    client: httpx.Client, server: Server, path: str, body: Any, headers: list[dict[str, str]]
) -> list[httpx.Response]:
    """POST `body` to `path` once per header set, from CLIENT_THREADS threads at once."""

    def post(h: dict[str, str]) -> httpx.Response:
        try:
            return client.post(path, json=body, headers=h)
        except httpx.TransportError as exc:
            log = server.stderr.read_text()[-3000:]
            raise AssertionError(f"{exc!r}; server log:\n{log}") from exc

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        responses = list(pool.map(post, headers))
    assert not [r for r in responses if r.status_code >= 500], (
        [r.text for r in responses if r.status_code >= 500][:1],
        server.stderr.read_text()[-3000:],
    )
    return responses


def _assert_counted(client: httpx.Client, server: Server, setup: Setup, serials: set[str]) -> None:
    """Counter, print jobs and audit leaves of the licence all say `serials`."""
    jti = setup.licence["jti"]
    counted = _ok(client, "GET", f"/v1/licences/{jti}", setup.brand)
    assert counted["prints_used"] == len(serials)
    jobs = client.get("/v1/jobs", headers=_facility_headers(server, setup, "GET", "/v1/jobs"))
    assert jobs.status_code == 200, jobs.text
    assert {job["serial"] for job in jobs.json()} == serials
    assert len(jobs.json()) == len(serials)
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            redeemed = conn.execute(sa.text(REDEEMED), {"subject": f"%{jti}%"}).scalar_one()
            assert redeemed == len(serials)
            jobs_of = "SELECT count(*) FROM print_job WHERE licence_jti = :jti"
            assert conn.execute(sa.text(jobs_of), {"jti": jti}).scalar_one() == len(serials)
            used = "SELECT prints_used FROM licence WHERE jti = :jti"
            assert conn.execute(sa.text(used), {"jti": jti}).scalar_one() == len(serials)
    finally:
        engine.dispose()


def test_200_concurrent_redemptions_count_exactly_37(server: Server, meshes_dir: Path) -> None:
    with _client(server) as client:
        mesh = (meshes_dir / "20mm-xyz-cube.stl").read_bytes()
        setup = _set_up(client, server.admin, mesh, "Acme")
        path = f"/v1/licences/{setup.licence['jti']}/redeem"
        # every request its own fresh proof, signed before the race starts
        headers = [_facility_headers(server, setup, "POST", path) for _ in range(ATTEMPTS)]
        responses = _race(client, server, path, {"licence": setup.licence["token"]}, headers)

        statuses = Counter(r.status_code for r in responses)
        assert statuses == {201: PRINTS, 409: ATTEMPTS - PRINTS}, statuses
        refusals = [r for r in responses if r.status_code == 409]
        assert {r.headers["content-type"] for r in refusals} == {"application/problem+json"}
        assert {r.json()["code"] for r in refusals} == {"licence-exhausted"}
        serials = {r.json()["serial"] for r in responses if r.status_code == 201}
        assert len(serials) == PRINTS
        _assert_counted(client, server, setup, serials)


def test_retries_under_one_idempotency_key_count_once_across_processes(
    server: Server, meshes_dir: Path
) -> None:
    keys = ATTEMPTS // 2
    with _client(server) as client:
        mesh = (meshes_dir / "20mm-xyz-cube.stl").read_bytes()
        setup = _set_up(client, server.admin, mesh, "Retry & Co")
        path = f"/v1/licences/{setup.licence['jti']}/redeem"
        # each key sent twice at once, each copy with its own proof (a proof is single-use)
        headers = [
            _facility_headers(server, setup, "POST", path) | {"Idempotency-Key": f"retry-{k}"}
            for k in range(keys)
            for _ in range(2)
        ]
        responses = _race(client, server, path, {"licence": setup.licence["token"]}, headers)

        pairs = [responses[i : i + 2] for i in range(0, len(responses), 2)]
        for first, second in pairs:
            assert first.status_code == second.status_code and first.content == second.content
            replayed = sorted(str(r.headers.get("idempotent-replayed")) for r in (first, second))
            assert replayed == ["None", "true"]
        statuses = Counter(first.status_code for first, _ in pairs)
        assert statuses == {201: PRINTS, 409: keys - PRINTS}, statuses
        serials = {first.json()["serial"] for first, _ in pairs if first.status_code == 201}
        assert len(serials) == PRINTS
        _assert_counted(client, server, setup, serials)
