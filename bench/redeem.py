"""Licence issuance and redemption throughput over HTTP, against the real server.

Run: ``python bench/redeem.py [--db URL] [--workers 1,2] [--seconds 5] [--connections 16]
[--group-commit process|thread]``

For each worker count it starts ``partvault serve --workers W`` on a fresh
SQLite file (default) or a fresh database created on the PostgreSQL server of
``--db`` (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``), sets
up a brand, a profiled part, an uploaded revision and a certified facility over
HTTP, and then measures requests per second of

  (a) ``GET /health`` (a trivial Litestar endpoint of the same server; ``GET
      /ready``, which runs ``SELECT 1`` in a worker thread, is printed for context),
  (b) ``POST /v1/licences`` (licence issuance: sign + audit leaf),
  (c) ``POST /v1/licences/{jti}/redeem`` (token + DPoP + licence check, the
      counting UPDATE, the print job and its audit leaf), and, for context, the
      same requests with one unknown body member, which the route refuses (422)
      before any work runs: what HTTP alone costs for this request shape,

  (d), (e) the same two with an ``Idempotency-Key`` on every request (what a
      client that retries safely sends: the key is claimed and the answer
      stored in the same transaction),
  (f) (c) with the requests taking turns over 8 licences (several bureaus at
      once: each batch locks several licence rows),

with the same load generator: a minimal asyncio HTTP/1.1 keep-alive client on
N connections (much cheaper per request than httpx, so the client steals as
little as possible of the 2 cores it shares with the server). DPoP proofs are
signed before the redemption phases start, so their cost is not counted (it is
printed separately). Prints each rate with its latency (median and 99th
percentile, as the client sees it) and the cores the server's processes and
the whole machine kept busy (read from /proc: Linux only), the ratios
issuance/trivial (goal >= 0.3) and redemption/trivial (goal >= 0.2), and of
each keyed phase to its unkeyed one. It also splits a redemption's server time into HTTP (the refused
phase) and work, next to what the goal leaves the work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("PARTVAULT_SHARED", REPO.parent / "shared"))
MESH = SHARED / "fixtures" / "meshes" / "20mm-xyz-cube.stl"
PROFILE = {
    "process": "SLA",
    "material": "Tough 2000",
    "layer_height_mm": 0.05,
    "supports": "auto",
    "tolerance_mm": 0.1,
}
GOALS = {"issue": 0.3, "redeem": 0.2}
SPREAD = 8  # licences redeemed at once in phase (f)


# --------------------------------------------------------------------------- server


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    base: str
    admin: str
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    data_dir: Path, database_url: str, workers: int, group_commit: str = "process"
) -> Server:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTVAULT_")} | {
        "PARTVAULT_DATA_DIR": str(data_dir),
        "PARTVAULT_DATABASE_URL": database_url,
        "PARTVAULT_PUBLIC_URL": base,
        "PARTVAULT_LOG_LEVEL": "WARNING",
        "PARTVAULT_GROUP_COMMIT": group_commit,
    }
    out, log = data_dir.parent / f"stdout-{workers}.txt", data_dir.parent / f"stderr-{workers}.txt"
    with out.open("wb") as stdout, log.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "api.cli",
                "serve",
                "--workers",
                str(workers),
                "--port",
                str(port),
            ],
            cwd=REPO,
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                break
        time.sleep(0.2)
    else:
        stop_server(proc)
        raise SystemExit("server never became ready")
    time.sleep(1.0 * workers)  # let every worker finish importing before measuring
    tokens = [w for w in out.read_text().split() if w.startswith("pv_admin_")]
    if len(tokens) != 1:
        stop_server(proc)
        raise SystemExit("no admin token printed on first start")
    return Server(proc, port, base, tokens[0], log)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def database(db: str | None, tmp: Path) -> Iterator[str]:
    """A fresh database: a SQLite file in `tmp`, or a new database on `db`'s server."""
    if db is None:
        yield f"sqlite:///{tmp / 'data' / 'partvault.db'}"
        return
    name = f"pv_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(db, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield db.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --------------------------------------------------------------------------- setup


@dataclass
class Tenant:
    brand: str
    facility_id: str
    facility_token: str
    pop_key: Any
    revision_id: str


def set_up(base: str, admin: str) -> Tenant:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    with httpx.Client(base_url=base, timeout=60) as client:

        def ok(method: str, path: str, token: str, **kwargs: Any) -> Any:
            headers = kwargs.pop("headers", {}) | {"Authorization": f"Bearer {token}"}
            response = client.request(method, path, headers=headers, **kwargs)
            if response.status_code >= 300:
                raise SystemExit(f"{method} {path}: {response.status_code} {response.text}")
            return response.json()

        brand_id = ok("POST", "/v1/brands", admin, json={"name": "Bench"})["id"]
        brand = ok(
            "POST",
            "/v1/tokens",
            admin,
            json={"kind": "brand", "name": "bench", "brand_id": brand_id},
        )["token"]
        part = ok("POST", "/v1/parts", brand, json={"sku": "CUBE-20", "name": "Cube"})
        ok("POST", f"/v1/parts/{part['id']}/profiles", brand, json=PROFILE)
        revision = ok(
            "POST",
            f"/v1/parts/{part['id']}/revisions",
            brand,
            params={"filename": MESH.name},
            content=MESH.read_bytes(),
            headers={"content-type": "application/octet-stream"},
        )
        pop = ed25519.Ed25519PrivateKey.generate()
        wrap = rsa.generate_private_key(public_exponent=65537, key_size=2048)

        def pem(key: Any) -> str:
            return (
                key.public_key()
                .public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                .decode()
            )

        facility = ok(
            "POST",
            "/v1/facilities",
            admin,
            json={
                "name": "Bench Hub",
                "address": "1 rue de la République, 69001 Lyon",
                "country": "FR",
                "latitude": 45.764,
                "longitude": 4.8357,
                "processes": ["SLA"],
                "materials": ["Tough 2000"],
                "printer_models": ["Form 3L"],
                "build_volume_mm": [335, 200, 300],
                "capacity": 4,
                "contact_email": "ops@bench.example",
                "rates": {
                    "per_cm3_cents": {"Tough 2000": 45},
                    "per_hour_cents": 800,
                    "setup_fee_cents": 500,
                },
                "pop_public_key": pem(pop),
                "wrap_public_key": pem(wrap),
            },
        )
        facility_id = facility["facility"]["id"]
        ok(
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
    return Tenant(brand, facility_id, facility["token"], pop, revision["id"])


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""

    def encode(self, port: int) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        if self.body or self.method == "POST":
            lines += ["content-type: application/json", f"content-length: {len(self.body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    writer.write(raw)
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length, chunked = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while (size := int((await reader.readline()).strip(), 16)) > 0:
            await reader.readexactly(size + 2)
        await reader.readline()
    else:
        await reader.readexactly(length)
    return status


@dataclass
class Run:
    """What one phase measured: requests done, seconds taken, statuses, latencies."""

    done: int
    elapsed: float
    statuses: Counter[int]
    latencies: list[float]

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def _drive(port: int, raws: list[bytes], connections: int, seconds: float) -> Run:
    """Send `raws` in order on `connections` keep-alive connections until they run out
    or `seconds` pass. The connections are opened first, one at a time: opened at
    once, the first worker process to wake would accept them all."""
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    queue = iter(raws)
    opened = []
    for _ in range(connections):
        opened.append(await asyncio.open_connection("127.0.0.1", port))
        await asyncio.sleep(0.005)
    deadline = time.perf_counter() + seconds

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for raw in queue:
                sent = time.perf_counter()
                statuses[await _one(reader, writer, raw)] += 1
                latencies.append(time.perf_counter() - sent)
                if time.perf_counter() > deadline:
                    return
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(reader, writer) for reader, writer in opened))
    elapsed = time.perf_counter() - start
    return Run(sum(statuses.values()), elapsed, statuses, latencies)


def measure(
    server: Server,
    raws: list[bytes],
    connections: int,
    seconds: float,
    label: str,
    expect: int = 0,
) -> float:
    """Requests per second of one phase; every answer must be a 2xx (or `expect`).

    Also prints the cores the server's processes kept busy during the phase, and
    the whole machine (server, load generator, database server): a server at
    about one core while the machine has one to spare is bound by one process's
    GIL, not by the hardware."""
    cpu, busy = _server_cpu(server), _machine_busy()
    run = asyncio.run(_drive(server.port, raws, connections, seconds))
    cpu, busy = _server_cpu(server) - cpu, _machine_busy() - busy
    rate = run.done / run.elapsed
    bad = {s: n for s, n in run.statuses.items() if s != expect and not 200 <= s < 300}
    print(
        f"  {label:<28} {run.done:6d} requests in {run.elapsed:5.2f} s = {rate:8.1f} req/s"
        f"  latency p50 {run.percentile(0.5) * 1e3:5.1f} ms, p99 {run.percentile(0.99) * 1e3:6.1f} ms"
        f"  cores: server {cpu / run.elapsed:4.2f}, machine {busy / run.elapsed:4.2f}"
        + (f"  NON-2xx: {bad}" if bad else "")
    )
    if bad:
        raise SystemExit(f"{label}: unexpected statuses {bad}")
    return rate


def _server_cpu(server: Server) -> float:
    """CPU seconds the server's processes (supervisor, workers and their committing
    processes) used so far."""
    return sum(_process_cpu(pid) for pid in _process_tree(server.proc.pid))


def _process_tree(pid: int) -> list[int]:
    children = [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    return [pid, *(p for child in children for p in _process_tree(child))]


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """CPU seconds all cores have spent neither idle nor waiting for I/O."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- phases


def keyed(requests: list[Request]) -> list[Request]:
    """The same requests, each with an Idempotency-Key of its own."""
    return [
        Request(r.method, r.path, r.headers | {"idempotency-key": secrets.token_hex(12)}, r.body)
        for r in requests
    ]


def issue_requests(tenant: Tenant, count: int, prints: int = 1) -> list[Request]:
    body = json.dumps(
        {
            "facility_id": tenant.facility_id,
            "revision_id": tenant.revision_id,
            "prints": prints,
            "expires_at": "2099-01-01T00:00:00Z",
        }
    ).encode()
    headers = {"authorization": f"Bearer {tenant.brand}"}
    return [Request("POST", "/v1/licences", headers, body)] * count


def redeem_requests(
    server: Server, tenant: Tenant, count: int, spread: int = 1
) -> tuple[list[Request], float]:
    """`count` redemptions, each with a fresh proof, taking turns over `spread` fresh
    licences (or more: one per 100,000 prints)."""
    from inventory.db import utcnow
    from licensing.tokens import make_proof

    with httpx.Client(base_url=server.base, timeout=60) as client:
        licences = []
        for _ in range(max(spread, -(-count // 100_000))):
            response = client.post(
                "/v1/licences",
                headers={"Authorization": f"Bearer {tenant.brand}"},
                json={
                    "facility_id": tenant.facility_id,
                    "revision_id": tenant.revision_id,
                    "prints": 100_000,
                    "expires_at": "2099-01-01T00:00:00Z",
                },
            )
            response.raise_for_status()
            licences.append(response.json())
    requests = []
    started = time.perf_counter()
    now = utcnow()
    for i in range(count):
        licence = licences[i % len(licences)]
        path = f"/v1/licences/{licence['jti']}/redeem"
        proof = make_proof(
            tenant.pop_key,
            htm="POST",
            htu=server.base + path,
            access_token=tenant.facility_token,
            now=now,
        )
        headers = {"authorization": f"Bearer {tenant.facility_token}", "dpop": proof}
        body = json.dumps({"licence": licence["token"]}).encode()
        requests.append(Request("POST", path, headers, body))
    return requests, (time.perf_counter() - started) / count


def refused(requests: list[Request]) -> list[Request]:
    """The same requests with one unknown member after the licence: the route decodes
    the whole body and refuses it (422) before any work runs."""
    return [
        Request(r.method, r.path, r.headers, r.body[:-1] + b', "unknown": 1}') for r in requests
    ]


def bench(server: Server, tenant: Tenant, connections: int, seconds: float) -> dict[str, float]:
    port = server.port
    health = [Request("GET", "/health", {}).encode(port)]
    # warm every worker (imports, pools, caches) before measuring anything
    measure(server, health * 2000, connections, 2, "warm-up /health")
    measure(
        server,
        [r.encode(port) for r in issue_requests(tenant, 200)],
        connections,
        2,
        "warm-up issuance",
    )
    rates = {"trivial": measure(server, health * 10**6, connections, seconds, "(a) GET /health")}
    # for context only: the cheapest endpoint that touches the database (a thread + SELECT 1)
    ready = [Request("GET", "/ready", {}).encode(port)]
    rates["ready"] = measure(server, ready * 10**6, connections, seconds, "(info) GET /ready")
    issue = [r.encode(port) for r in issue_requests(tenant, 1)]
    rates["issue"] = measure(server, issue * 10**6, connections, seconds, "(b) POST /v1/licences")
    # proofs are valid for 60 s: sign enough for the phase, just before it
    estimate = int(max(rates["issue"], 50) * seconds * 3) + 500
    redeem, sign_cost = redeem_requests(server, tenant, estimate)
    raws = [r.encode(port) for r in redeem]
    rates["redeem"] = measure(server, raws, connections, seconds, "(c) POST .../redeem")
    raws = [r.encode(port) for r in refused(redeem[:1])]
    label = "(info) (c) refused: bad body"
    rates["http"] = measure(server, raws * 10**6, connections, seconds, label, expect=422)
    issue = [r.encode(port) for r in keyed(issue_requests(tenant, estimate))]
    rates["issue_keyed"] = measure(server, issue, connections, seconds, "(d) (b) + Idempotency-Key")
    redeem, _ = redeem_requests(server, tenant, estimate)
    raws = [r.encode(port) for r in keyed(redeem)]
    rates["redeem_keyed"] = measure(server, raws, connections, seconds, "(e) (c) + Idempotency-Key")
    redeem, _ = redeem_requests(server, tenant, estimate, spread=SPREAD)
    raws = [r.encode(port) for r in redeem]
    label = f"(f) (c) over {SPREAD} licences"
    rates["redeem_spread"] = measure(server, raws, connections, seconds, label)
    print(f"  client-side proof signing: {sign_cost * 1e6:.0f} us per proof (not counted)")
    return rates


def print_budget(rates: dict[str, float]) -> None:
    """How much of a redemption's time is its work, and how much the goal leaves.

    At saturation 1/rate is the server time per request; the refused phase has
    the same request line, headers and body, and runs no work. The difference
    is what the work (proof, token, licence, count, job, audit, commit) costs.
    """
    http = 1 / rates["http"]
    work = 1 / rates["redeem"] - http
    budget = 1 / (GOALS["redeem"] * rates["trivial"]) - http
    print(
        f"  redemption = HTTP {http * 1e6:.0f} us + work {work * 1e6:.0f} us per request;"
        f" the goal leaves the work {budget * 1e6:.0f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="PostgreSQL server URL (a fresh database is created on it)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each phase")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument(
        "--group-commit",
        choices=("process", "thread"),
        default="process",
        help="where each server process commits its batches (PARTVAULT_GROUP_COMMIT)",
    )
    args = parser.parse_args()
    backend = "PostgreSQL" if args.db else "SQLite"
    summary = []
    for workers in [int(w) for w in args.workers.split(",")]:
        with (
            tempfile.TemporaryDirectory(prefix="pv-bench-") as tmp,
            database(args.db, Path(tmp)) as url,
        ):
            data = Path(tmp) / "data"
            print(
                f"{backend}, {workers} worker(s), group commit in a {args.group_commit},"
                f" {args.connections} connections, "
                f"{args.seconds:g} s per phase"
            )
            server = start_server(data, url, workers, args.group_commit)
            try:
                tenant = set_up(server.base, server.admin)
                rates = bench(server, tenant, args.connections, args.seconds)
            finally:
                stop_server(server.proc)
        ratios = {k: rates[k] / rates["trivial"] for k in GOALS}
        for kind, goal in GOALS.items():
            verdict = "ok" if ratios[kind] >= goal else "MISSES GOAL"
            print(f"  ratio {kind}/trivial = {ratios[kind]:.3f} (goal >= {goal}) {verdict}")
        print_budget(rates)
        for kind in GOALS:
            ratios[f"{kind}_keyed"] = rates[f"{kind}_keyed"] / rates[kind]
            print(f"  ratio {kind} keyed/unkeyed = {ratios[f'{kind}_keyed']:.3f}")
        summary.append((workers, rates, ratios))
    print(f"\nsummary ({backend}):")
    print(
        "  workers  trivial/s  ready/s  refused/s  issue/s  redeem/s  issue/trivial  redeem/trivial"
        f"  keyed issue/s  keyed redeem/s  redeem over {SPREAD}/s"
    )
    for workers, rates, ratios in summary:
        print(
            f"  {workers:7d}  {rates['trivial']:9.1f}  {rates['ready']:7.1f}  {rates['http']:9.1f}"
            f"  {rates['issue']:7.1f}  "
            f"{rates['redeem']:8.1f}  {ratios['issue']:13.3f}  {ratios['redeem']:14.3f}"
            f"  {rates['issue_keyed']:13.1f}  {rates['redeem_keyed']:14.1f}"
            f"  {rates['redeem_spread']:15.1f}"
        )


if __name__ == "__main__":
    main()
