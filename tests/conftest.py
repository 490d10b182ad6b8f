"""Fixtures shared by every test folder.

Fixture files live in ``../shared/fixtures`` beside the checkout and are read in
place. PostgreSQL is required: when it cannot be reached the tests fail, they
never skip.
"""

from __future__ import annotations

import functools
import locale
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from tests_support import BAD, MESHES, create_pg_database, drop_pg_database

# One BLAS thread per process, set before numpy loads: pytest-xdist already runs a
# worker per core, and OpenBLAS threads on top oversubscribe them (2.5x slower
# watermark detection measured with two workers).
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")


def mesh_files() -> list[Path]:
    files = sorted(MESHES.iterdir())
    if not files:
        raise RuntimeError(f"no fixture meshes in {MESHES}")
    return files


def bad_files() -> list[Path]:
    return sorted(BAD.iterdir())


@pytest.fixture(autouse=True)
def _process_locale_kept() -> Iterator[None]:
    """lib3mf's writer switches the process's C locale to "C", after which Python
    decodes text (e.g. a subprocess's output) as ASCII in whatever test runs next
    in that process: each test leaves the locale as it found it."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    if locale.setlocale(locale.LC_ALL) != saved:
        locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture(scope="session")
def meshes_dir() -> Path:
    assert MESHES.is_dir(), f"fixtures missing: {MESHES}"
    return MESHES


@pytest.fixture(scope="session")
def bad_dir() -> Path:
    assert BAD.is_dir(), f"fixtures missing: {BAD}"
    return BAD


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database URL on each backend (no tables)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'pv.db'}"
        return
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine with every table of the metadata created (domain-level tests)."""
    from sqlmodel import SQLModel

    import inventory.db  # noqa: F401  (naming convention)

    eng = sa.create_engine(db_url)
    SQLModel.metadata.create_all(eng)
    try:
        yield eng
    finally:
        eng.dispose()


# ---------------------------------------------------------------------------
# Vault section (object stores, KMS): a real moto server over HTTP.
# Owned by the vault work; reuse it for API tests that need S3 or KMS.
# ---------------------------------------------------------------------------

_MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": None,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_PROFILE": None,
    "AWS_ENDPOINT_URL": None,
    "AWS_CONFIG_FILE": "/nonexistent/partvault-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/partvault-test-aws-credentials",
}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL (``http://127.0.0.1:<port>``) of a moto server in this process.

    Dummy AWS credentials are put in the environment for the whole session and
    restored afterwards. Moto's state is per process and shared by every server
    started in it.
    """
    from moto.server import ThreadedMotoServer

    saved = {name: os.environ.get(name) for name in _MOTO_ENV}
    _set_env(_MOTO_ENV)
    restore = _atomic_object_writes()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        restore()
        _set_env(saved)


def _atomic_object_writes() -> Callable[[], None]:
    """Make moto's conditional writes atomic, as S3's are; returns the undo.

    Moto checks ``If-None-Match: *`` and then writes, in two steps on its
    request threads, so two racing creates can both succeed (seen once under
    load). S3 decides a conditional write atomically: one wins, the others get
    412. The server's object writes (PUT, and POST for CompleteMultipartUpload)
    take one lock so the race tests measure partvault's handling, not moto's.
    """
    from moto.s3.responses import S3Response

    lock = threading.Lock()
    originals = {name: getattr(S3Response, name) for name in ("put_object", "_key_response_post")}

    def serialised(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return method(*args, **kwargs)

        return locked

    for name, method in originals.items():
        setattr(S3Response, name, serialised(method))

    def restore() -> None:
        for name, method in originals.items():
            setattr(S3Response, name, method)

    return restore


def _set_env(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
