"""An in-process client of the real app on a migrated SQLite or PostgreSQL database.

Migrations run once per backend (`alembic upgrade head`): each SQLite test gets
a copy of the migrated file, each PostgreSQL test the one migrated database
with every table emptied.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import PROFILE, Api, Bureau, register_bureau
from litestar import Litestar
from litestar.testing import TestClient
from tests_support import create_pg_database, drop_pg_database

from api.app import build_app
from api.bootstrap import prepare
from api.config import Settings
from api.logs import configure_logging
from api.services import Services


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    from migrations.runner import upgrade

    sqlite_file = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{sqlite_file}")
    pg_url = create_pg_database()
    upgrade(pg_url)
    try:
        yield {"sqlite": str(sqlite_file), "postgresql": pg_url}
    finally:
        drop_pg_database(pg_url)


def _pg_emptied(url: str) -> str:
    """The session's migrated PostgreSQL database with every table emptied."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        tables = [t for t in sa.inspect(conn).get_table_names() if t != "alembic_version"]
        conn.execute(sa.text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"))
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(
    request: pytest.FixtureRequest, tmp_path: Path, templates: dict[str, str]
) -> Iterator[Settings]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if request.param == "sqlite":
        shutil.copy(templates["sqlite"], data_dir / "partvault.db")
        url = f"sqlite:///{data_dir / 'partvault.db'}"
    else:
        url = _pg_emptied(templates["postgresql"])
    env = {
        "PARTVAULT_DATA_DIR": str(data_dir),
        "PARTVAULT_DATABASE_URL": url,
        # in-process apps commit on a thread: a committing process per test would cost
        # a second or two each; test_committer.py and the tests that start the real
        # server (default: a committing process) cover the process
        "PARTVAULT_GROUP_COMMIT": "thread",
    }
    yield Settings.from_env(env)


@functools.cache
def _app(max_json_bytes: int) -> Litestar:
    """One app per test process: building it costs more than most tests."""
    return build_app(max_json_bytes=max_json_bytes)


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    """The real app on this test's own services, database and data folder."""
    admin = prepare(settings)
    assert admin is not None
    configure_logging(settings.log_level)
    app = _app(settings.max_json_bytes)
    app.state.services = Services.from_settings(settings)
    with TestClient(app=app) as client:
        yield Api(client=client, admin=admin, settings=settings)


@pytest.fixture(scope="session")
def cube_stl(meshes_dir: Path) -> bytes:
    return (meshes_dir / "20mm-xyz-cube.stl").read_bytes()


@dataclass
class World:
    """A brand with a profiled part, one uploaded revision and a certified bureau."""

    api: Api
    brand_id: str
    brand: str
    part: dict[str, Any]
    revision: dict[str, Any]
    bureau: Bureau
    certification: dict[str, Any]

    def licence(self, prints: int = 3, **overrides: Any) -> dict[str, Any]:
        body = {
            "facility_id": self.bureau.id,
            "revision_id": self.revision["id"],
            "prints": prints,
            "expires_at": "2099-01-01T00:00:00Z",
        } | overrides
        return self.api.ok("POST", "/v1/licences", self.brand, json=body)


@pytest.fixture
def world(api: Api, cube_stl: bytes) -> World:
    brand_id, brand = api.brand("Acme")
    part = api.ok("POST", "/v1/parts", brand, json={"sku": "CUBE-20", "name": "Calibration cube"})
    api.ok("POST", f"/v1/parts/{part['id']}/profiles", brand, json=PROFILE)
    revision = api.ok(
        "POST",
        f"/v1/parts/{part['id']}/revisions",
        brand,
        params={"filename": "20mm-xyz-cube.stl"},
        content=cube_stl,
        headers={"content-type": "application/octet-stream"},
    )
    bureau = register_bureau(api)
    certification = api.ok(
        "POST",
        "/v1/certifications",
        brand,
        json={
            "facility_id": bureau.id,
            "processes": ["SLA"],
            "materials": ["Tough 2000"],
            "expires_at": "2099-01-01T00:00:00Z",
        },
    )
    return World(api, brand_id, brand, part, revision, bureau, certification)
