"""Operator and bureau commands of the `partvault` CLI against a real data folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from inventory.db import utcnow
from licensing.orders import idempotency
from licensing.tokens.replay import remember


def _cli(settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTVAULT_")}
    env |= {
        "PARTVAULT_DATA_DIR": str(settings.data_dir),
        "PARTVAULT_DATABASE_URL": settings.database_url,
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", *args], env=env, capture_output=True, text=True
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _scalar(settings, sql: str):
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as conn:
        value = conn.execute(sa.text(sql)).scalar_one()
    engine.dispose()
    return value


def test_keys_rotate_rewraps_without_touching_designs(world, cube_stl):
    settings = world.api.settings
    objects = sorted((settings.data_dir / "objects").rglob("*"))
    before = {p: p.read_bytes() for p in objects if p.is_file()}
    old_key = _scalar(settings, "SELECT wrapped_key FROM revision")
    result = _cli(settings, "keys", "rotate")
    assert "re-wrapped 1 data keys" in result.stderr
    new_key = _scalar(settings, "SELECT wrapped_key FROM revision")
    assert bytes(new_key) != bytes(old_key)
    assert {p: p.read_bytes() for p in before} == before
    download = world.api.call("GET", f"/v1/revisions/{world.revision['id']}/design", world.brand)
    assert download.status_code == 200 and download.content == cube_stl
    licence = world.licence(prints=1)  # the re-wrapped signing key still signs
    assert licence["token"]


def test_rotate_signing_keeps_old_licences_verifiable(world):
    old = world.licence(prints=1)
    kid = _cli(world.api.settings, "keys", "rotate-signing").stdout.strip()
    jwks = world.api.ok("GET", "/.well-known/jwks.json")
    assert kid in {k["kid"] for k in jwks["keys"]} and len(jwks["keys"]) == 2
    new = world.licence(prints=1)
    assert new["token"] != old["token"]
    for licence in (old, new):
        job = world.bureau.call(
            "POST", f"/v1/licences/{licence['jti']}/redeem", json={"licence": licence["token"]}
        )
        assert job.status_code == 201, job.text


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # no backend-specific SQL
def test_licence_verify_offline(world, tmp_path):
    licence = world.licence(prints=2)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(world.api.ok("GET", "/.well-known/jwks.json")))
    ok = _cli(world.api.settings, "licence", "verify", licence["token"], "--jwks", str(jwks))
    assert "VALID" in ok.stderr and licence["jti"] in ok.stdout
    head, body, sig = licence["token"].split(".")
    tampered = f"{head}.{body}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"
    bad = _cli(world.api.settings, "licence", "verify", tampered, "--jwks", str(jwks), check=False)
    assert bad.returncode == 1 and "INVALID" in bad.stderr


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # no backend-specific SQL
def test_bureau_keygen_writes_private_keys_0600(tmp_path, settings):
    _cli(settings, "bureau", "keygen", str(tmp_path / "keys"))
    private = [p for p in (tmp_path / "keys").iterdir() if not p.name.endswith(".pub.pem")]
    assert len(private) == 2
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in private)
    again = _cli(settings, "bureau", "keygen", str(tmp_path / "keys"), check=False)
    assert again.returncode != 0  # never overwrites a key


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # no backend-specific SQL
def test_reconcile_removes_old_orphans_and_flags_missing(world):
    settings = world.api.settings
    services = world.api.client.app.state.services
    services.store.put("designs/orphan-left-by-a-crash", iter([b"ciphertext"]))
    young = _cli(settings, "storage", "reconcile", "--grace", "3600")
    assert "kept young orphan designs/orphan-left-by-a-crash" in young.stderr
    removed = _cli(settings, "storage", "reconcile", "--grace", "0")
    assert "removed orphan designs/orphan-left-by-a-crash" in removed.stderr
    assert not services.store.exists("designs/orphan-left-by-a-crash")
    assert services.store.exists(_scalar(settings, "SELECT object_key FROM revision"))
    services.store.delete(_scalar(settings, "SELECT object_key FROM revision"))
    missing = _cli(settings, "storage", "reconcile", check=False)
    assert missing.returncode == 2 and world.revision["id"] in missing.stderr


def test_database_prune_deletes_expired_rows(api):
    engine = api.client.app.state.services.engine
    now = utcnow()
    with Session(engine) as session:
        remember(session, "jkt\x00stale-proof", now - timedelta(seconds=1))
        remember(session, "jkt\x00live-proof", now + timedelta(seconds=60))
        stale = idempotency.begin(session, "tok_1", "old-key", "fp", now=now - timedelta(hours=25))
        assert isinstance(stale, idempotency.Started)
        session.commit()
    out = _cli(api.settings, "database", "prune").stdout
    assert "dpop_replay: 1 expired rows deleted" in out
    assert "idempotency_record: 1 expired rows deleted" in out
    assert _scalar(api.settings, "SELECT count(*) FROM dpop_replay") == 1
    assert _scalar(api.settings, "SELECT count(*) FROM idempotency_record") == 0
