"""Helpers shared by test folders (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization

# Shared fixture files beside the checkout (../shared), or where PARTVAULT_SHARED says.
SHARED = Path(os.environ.get("PARTVAULT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MESHES = SHARED / "fixtures" / "meshes"
BAD = SHARED / "fixtures" / "bad"

#: How long a test waits for a `partvault serve` it started to answer /ready. A
#: failure deadline, not a timing: a loaded 2-core CI machine boots a server
#: several times slower than an idle one.
BOOT_SECONDS = 120

PG_ADMIN_URL = os.environ.get(
    "PARTVAULT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def create_pg_database() -> str:
    """Create a fresh, uniquely named PostgreSQL database and return its URL."""
    name = f"pv_test_{secrets.token_hex(6)}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def write_private_pem(key: Any, path: Path) -> Path:
    """`key` (a cryptography private key) as an unencrypted PKCS#8 PEM file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def wait_ready(
    url: str,
    proc: subprocess.Popen[Any],
    log: Callable[[], str] = lambda: "",
    seconds: float = BOOT_SECONDS,
) -> None:
    """Poll ``url/ready`` until it answers 200; fail with the tail of `log` if
    `proc` exits first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{log()[-4000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"server never became ready:\n{log()[-4000:]}")
        time.sleep(0.2)
