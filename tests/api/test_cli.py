"""The `partvault` command: first start, token rotation, config."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from tests_support import wait_ready


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTVAULT_")}
    return env | extra


def _serve(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    # uvicorn finishes in-flight work, runs shutdown hooks, then re-raises SIGTERM
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err
    return out, err


def test_serve_with_no_configuration_prints_admin_token_once(tmp_path):
    port = _free_port()
    first = _serve(tmp_path, port)
    wait_ready(f"http://127.0.0.1:{port}", first)
    out, _ = _stop(first)
    token = out.strip().splitlines()[-1]
    assert token.startswith("pv_admin_")
    data = tmp_path / "partvault-data"
    assert (data / "partvault.db").exists()
    assert (data.stat().st_mode & 0o777) == 0o700

    second = _serve(tmp_path, port)
    wait_ready(f"http://127.0.0.1:{port}", second)
    me = httpx.get(f"http://127.0.0.1:{port}/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["kind"] == "operator"
    out2, err2 = _stop(second)
    assert "pv_admin_" not in out2 + err2


def test_admin_token_rotate_revokes_the_old_one(tmp_path):
    env = _env(tmp_path)
    run = [sys.executable, "-m", "api.cli", "admin", "token", "--rotate"]
    first = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    second = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    old, new = first.stdout.strip(), second.stdout.strip()
    assert old.startswith("pv_admin_") and new.startswith("pv_admin_") and old != new

    from api.config import Settings
    from api.services import Services
    from inventory.accounts import authenticate
    from inventory.errors import Unauthorized

    settings = Settings.from_env({"PARTVAULT_DATA_DIR": str(tmp_path / "partvault-data")})
    services = Services.from_settings(settings)
    with services.transaction() as session:
        assert authenticate(session, new).kind == "operator"
        try:
            authenticate(session, old)
        except Unauthorized as exc:
            assert exc.code == "token-revoked"
        else:
            raise AssertionError("the rotated-out token still works")
    services.close()


def test_config_show_lists_every_variable(tmp_path):
    env = _env(tmp_path, PARTVAULT_PORT="9999", COLUMNS="250")
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "config", "show"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    for variable in ("PARTVAULT_DATABASE_URL", "PARTVAULT_OBJECT_STORE", "PARTVAULT_KEYRING"):
        assert variable in result.stdout
    assert "9999" in result.stdout


def test_bad_integer_setting_is_refused(tmp_path):
    env = _env(tmp_path, PARTVAULT_PORT="eighty")
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "config", "show"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "PARTVAULT_PORT" in result.stderr


def test_database_pool_size_bounds_postgresql_connections_per_process(tmp_path):
    import sqlalchemy as sa
    from tests_support import create_pg_database, drop_pg_database

    from api.config import Settings
    from api.services import Services
    from inventory.db import make_engine

    url = create_pg_database()
    env = {"PARTVAULT_DATA_DIR": str(tmp_path), "PARTVAULT_DATABASE_URL": url}
    services = Services.from_settings(
        Settings.from_env(env | {"PARTVAULT_DATABASE_POOL_SIZE": "2"})
    )
    engine = make_engine(url, pool_size=2, pool_timeout=0.2)
    held = []
    try:
        assert services.engine.pool.size() == 2  # type: ignore[attr-defined]
        held = [engine.connect() for _ in range(4)]  # 2 kept + 2 in a burst
        try:
            engine.connect()
        except sa.exc.TimeoutError:
            pass
        else:
            raise AssertionError("a fifth connection was opened past twice the pool size")
    finally:
        for conn in held:
            conn.close()
        engine.dispose()
        services.close()
        drop_pg_database(url)


def test_mesh_stack_loads_when_a_worker_starts_not_on_import(tmp_path: Path) -> None:
    """Importing the app or the CLI leaves trimesh and scipy out; a worker's startup
    loads them, then freezes the heap (out of later garbage collections)."""
    probe = (
        "import gc, sys\n"
        "def loaded(): return sorted({m.split('.')[0] for m in sys.modules} & {'trimesh', 'scipy'})\n"
        "import api.app, api.cli, inventory.ingest, watermark\n"
        "from api.bootstrap import prepare\n"
        "from api.config import Settings\n"
        "from litestar.testing import TestClient\n"
        "print(loaded())\n"
        "settings = Settings.from_env()\n"
        "prepare(settings)\n"
        "app = api.app.create_app(settings)\n"
        "print(loaded(), gc.get_freeze_count())\n"
        "with TestClient(app):\n"
        "    print(loaded(), gc.get_freeze_count() > 10_000)\n"
    )
    env = _env(tmp_path, PARTVAULT_DATA_DIR=str(tmp_path / "data"))
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.split("\n")[:3] == ["[]", "[] 0", "['scipy', 'trimesh'] True"]
