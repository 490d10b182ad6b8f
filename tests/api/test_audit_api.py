"""The audit log over HTTP: key, signed checkpoints, proofs, entries; `partvault audit verify`.

Proofs asked for during concurrent appends are covered at the domain level in
tests/audit/test_concurrency.py (`test_proofs_during_appends_verify_at_the_stated_size`);
the routes here only pass the stated size through.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests_support import wait_ready

from licensing.audit import (
    AuditVerificationError,
    leaf_hash,
    parse_and_verify_checkpoint,
    verifier_key_string,
    verify_consistency,
    verify_inclusion,
)


def _b(text: str) -> bytes:
    return base64.b64decode(text)


def _print(world: Any, licence: dict[str, Any], outcome: str | None = None) -> dict[str, Any]:
    job = world.bureau.ok(
        "POST", f"/v1/licences/{licence['jti']}/redeem", json={"licence": licence["token"]}
    )
    if outcome is not None:
        body = {"status": outcome} | ({"reason": "warped"} if outcome == "failed" else {})
        world.bureau.ok("POST", f"/v1/jobs/{job['serial']}/report", json=body)
    return dict(job)


def _checkpoint(world: Any) -> Any:
    api = world.api
    key = api.ok("GET", "/v1/audit/key", world.brand)["verifier_key"]
    response = api.call("GET", "/v1/audit/checkpoint", world.brand)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse_and_verify_checkpoint(response.text, key)


def test_key_and_checkpoint_are_signed_by_the_stored_key(world):
    api = world.api
    key = api.ok("GET", "/v1/audit/key", world.brand)
    assert key["origin"] == "127.0.0.1:8000/audit"
    assert key["verifier_key"].startswith("127.0.0.1:8000/audit+")
    first = _checkpoint(world)
    again = _checkpoint(world)
    assert again.note == first.note  # the stored note is served until the log grows
    _print(world, world.licence(prints=1))
    grown = _checkpoint(world)
    assert grown.size > first.size
    history = api.ok("GET", "/v1/audit/checkpoints", world.brand)["items"]
    assert [c["signed_note"] for c in history] == [first.note, grown.note]
    since = api.ok("GET", "/v1/audit/checkpoints", world.brand, params={"since_size": grown.size})[
        "items"
    ]
    assert [c["size"] for c in since] == [grown.size]
    # the key survives restarts (prepare is idempotent) and stays the same
    from api.bootstrap import prepare

    prepare(api.settings)
    assert api.ok("GET", "/v1/audit/key", world.brand) == key
    assert api.call("GET", "/v1/audit/checkpoint").status_code == 401


def test_inclusion_and_consistency_proofs_verify_against_signed_roots(world):
    api, brand = world.api, world.brand
    licence = world.licence(prints=3)
    _print(world, licence, "printed")
    old = _checkpoint(world)
    _print(world, licence, "failed")
    _print(world, licence)
    new = _checkpoint(world)
    assert new.size > old.size
    entries = api.ok("GET", "/v1/audit/entries", brand)["items"]
    assert len(entries) == new.size
    for entry in entries:
        proof = api.ok(
            "GET",
            "/v1/audit/proof/inclusion",
            brand,
            params={"index": entry["index"], "size": new.size},
        )
        assert proof["size"] == new.size and proof["leaf_hash"] == entry["leaf_hash"]
        verify_inclusion(
            _b(proof["leaf_hash"]),
            entry["index"],
            new.size,
            [_b(p) for p in proof["proof"]],
            new.root,
        )
        if entry["index"] < old.size:
            at_old = api.ok(
                "GET",
                "/v1/audit/proof/inclusion",
                brand,
                params={"index": entry["index"], "size": old.size},
            )
            verify_inclusion(
                _b(at_old["leaf_hash"]),
                entry["index"],
                old.size,
                [_b(p) for p in at_old["proof"]],
                old.root,
            )
    consistency = api.ok(
        "GET",
        "/v1/audit/proof/consistency",
        brand,
        params={"old_size": old.size, "new_size": new.size},
    )
    hashes = [_b(p) for p in consistency["proof"]]
    verify_consistency(old.size, new.size, old.root, new.root, hashes)
    with pytest.raises(AuditVerificationError):
        verify_consistency(old.size, new.size, new.root, new.root, hashes)
    # the default size is the current one; a shop may fetch proofs too
    shop = api.shop(brand)
    default = api.ok("GET", "/v1/audit/proof/consistency", shop, params={"old_size": old.size})
    assert default["new_size"] >= new.size


def _other_brand(api: Any, cube_stl: bytes) -> tuple[str, str]:
    """A second brand with one logged event (a revision upload)."""
    other_id, other = api.brand("Globex")
    part = api.ok("POST", "/v1/parts", other, json={"sku": "G-1", "name": "Globex gear"})
    api.ok(
        "POST",
        f"/v1/parts/{part['id']}/revisions",
        other,
        params={"filename": "gear.stl"},
        content=cube_stl,
        headers={"content-type": "application/octet-stream"},
    )
    return other_id, other


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        ("/v1/audit/proof/inclusion", {"index": 0, "size": 10_000}, "proof-size-out-of-range"),
        ("/v1/audit/proof/inclusion", {"index": 10_000}, "leaf-index-out-of-range"),
        (
            "/v1/audit/proof/consistency",
            {"old_size": 10_000, "new_size": 1},
            "proof-size-out-of-range",
        ),
    ],
)
def test_out_of_range_proofs_are_problems(world, path, params, code):
    response = world.api.call("GET", path, world.brand, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code


def test_a_brand_sees_its_bodies_and_only_hashes_of_others(world, cube_stl):
    api = world.api
    other_id, other = _other_brand(api, cube_stl)
    _print(world, world.licence(prints=1), "printed")

    def everything(token: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        start: int | None = 0
        while start is not None:
            page = api.ok("GET", "/v1/audit/entries", token, params={"start": start, "limit": 3})
            assert len(page["items"]) <= 3
            items += page["items"]
            start = page["next_start"]
        return items

    mine, theirs, full = everything(world.brand), everything(other), everything(api.admin)
    assert [e["index"] for e in mine] == list(range(len(full)))
    assert [e["leaf_hash"] for e in mine] == [e["leaf_hash"] for e in full]
    assert all(not e["redacted"] and e["body"] for e in full)
    for entry in full:
        assert leaf_hash(_b(entry["body"])) == _b(entry["leaf_hash"])
    own = [e for e in mine if not e["redacted"]]
    assert own and all(e["brand_id"] == world.brand_id for e in own)
    assert {"licensing:print:redeemed", "licensing:print:printed"} <= {e["event_type"] for e in own}
    hidden = [e for e in mine if e["redacted"]]
    assert any(
        f["brand_id"] == other_id for f in full if f["index"] in {h["index"] for h in hidden}
    )
    for entry in hidden:
        assert set(entry) >= {"index", "leaf_hash"} and entry["body"] is None
        assert entry["event_type"] is None and entry["subject"] is None
    globex = [e for e in theirs if not e["redacted"]]
    assert globex and all(e["brand_id"] == other_id for e in globex)
    shop = api.shop(world.brand)
    assert api.call("GET", "/v1/audit/entries", shop).status_code == 403
    bad = api.call("GET", "/v1/audit/entries", world.brand, params={"limit": 5000})
    assert bad.status_code in (400, 422)


# --- partvault audit verify ---------------------------------------------------
#
# The command runs in-process (click's runner) with its HTTP client bound to the
# test client, so the many tampering cases cost no process start-up; one test
# runs it for real: `python -m api.cli` against `partvault serve` in a subprocess.


class Cli:
    def __init__(self, tester: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        from api import client

        test_client = tester.client

        class InProcess(client.Client):
            def __init__(self, url: str, token: str | None, **_: Any) -> None:
                self.http = test_client
                self.auth = {"Authorization": f"Bearer {token}"}

            def request(self, method: str, path: str, **kwargs: Any) -> Any:
                kwargs["headers"] = kwargs.get("headers", {}) | self.auth
                return super().request(method, path, **kwargs)

        monkeypatch.setattr(client, "Client", InProcess)

    def __call__(self, token: str, *args: str) -> Any:
        from click.testing import CliRunner

        from api.cli import main

        env = {"PARTVAULT_URL": "http://testserver.local", "PARTVAULT_TOKEN": token}
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def cli(world: Any, monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(world.api, monkeypatch)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_audit_verify_runs_against_a_real_server(world, tmp_path):
    settings = world.api.settings
    _print(world, world.licence(prints=1), "printed")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTVAULT_")} | {
        "PARTVAULT_DATA_DIR": str(settings.data_dir),
        "PARTVAULT_DATABASE_URL": settings.database_url,
        "PARTVAULT_WEBHOOK_DISPATCHER": "off",
        "PARTVAULT_LOG_LEVEL": "WARNING",
    }
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(url, server)
        saved = tmp_path / "checkpoint.txt"
        run = subprocess.run(
            [sys.executable, "-m", "api.cli", "audit", "verify", "--save", str(saved)],
            env=env | {"PARTVAULT_URL": url, "PARTVAULT_TOKEN": world.brand},
            capture_output=True,
            text=True,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("OK 127.0.0.1:8000/audit:")
    assert "trusting the server's key" in run.stderr
    key = world.api.ok("GET", "/v1/audit/key", world.brand)["verifier_key"]
    assert parse_and_verify_checkpoint(saved.read_text(), key).size > 0


def _sql(settings: Any, *statements: str, **params: Any) -> None:
    engine = sa.create_engine(settings.database_url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement), params)
    engine.dispose()


def _row(settings: Any, index: int) -> dict[str, Any]:
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text('SELECT * FROM audit_entry WHERE "index" = :i'), {"i": index}
        ).one()
    engine.dispose()
    return dict(row._mapping)


def _brand_ids(settings: Any) -> list[str | None]:
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text('SELECT brand_id FROM audit_entry ORDER BY "index"')).all()
    engine.dispose()
    return [r[0] for r in rows]


def _restore(settings: Any, row: dict[str, Any]) -> None:
    _sql(settings, 'DELETE FROM audit_entry WHERE "index" = :index', index=row["index"])
    columns = ", ".join(f'"{c}"' for c in row)
    values = ", ".join(f":{c}" for c in row)
    _sql(settings, f"INSERT INTO audit_entry ({columns}) VALUES ({values})", **row)


def test_audit_verify_passes_honest_log_and_fails_on_tampering(world, cli, tmp_path, cube_stl):
    settings = world.api.settings
    other_id, _ = _other_brand(world.api, cube_stl)
    licence = world.licence(prints=3)
    _print(world, licence, "printed")
    _print(world, licence, "failed")
    saved, key_file = tmp_path / "checkpoint.txt", tmp_path / "key.txt"
    key = world.api.ok("GET", "/v1/audit/key", world.brand)["verifier_key"]
    key_file.write_text(key)

    honest = cli(world.brand, "audit", "verify", "--save", str(saved))
    assert honest.exit_code == 0, honest.stderr
    assert "trusting the server's key" in honest.stderr  # no pinned key: warn
    assert "OK" in honest.stdout
    first_note = saved.read_text()
    assert parse_and_verify_checkpoint(first_note, key).size > 0

    _print(world, licence)  # the log grows; the saved checkpoint is still a prefix
    pinned = ["audit", "verify", "--key", key, "--since", str(saved)]
    grown = cli(world.brand, *pinned, "--save", str(saved))
    assert grown.exit_code == 0, grown.stderr + grown.stdout
    assert "trusting" not in grown.stderr
    assert saved.read_text() != first_note
    api_admin = world.api.admin
    assert cli(api_admin, *pinned).exit_code == 0

    # a brand entry (body visible to the brand), its neighbour and another brand's
    brands = _brand_ids(settings)
    own = max(i for i, b in enumerate(brands[:-1]) if b == world.brand_id)
    original, neighbour = _row(settings, own), _row(settings, own + 1)
    brandless = _row(settings, brands.index(other_id))  # redacted for the brand

    tampered_body = original["body"].replace(b'"licensing', b'"licensinG')
    _sql(settings, 'UPDATE audit_entry SET body = :b WHERE "index" = :i', b=tampered_body, i=own)
    edited = cli(world.brand, *pinned)
    assert edited.exit_code != 0 and "leaf-hash-mismatch" in edited.stderr
    _restore(settings, original)

    fake, hidden = b"\x00" * 32, brandless["index"]
    _sql(settings, 'UPDATE audit_entry SET leaf_hash = :h WHERE "index" = :i', h=fake, i=hidden)
    rehashed = cli(world.brand, *pinned)  # redacted for the brand: only the root tells
    assert rehashed.exit_code != 0 and "root-mismatch" in rehashed.stderr
    as_operator = cli(api_admin, *pinned)  # the operator sees the body
    assert as_operator.exit_code != 0 and "leaf-hash-mismatch" in as_operator.stderr
    _restore(settings, brandless)

    _sql(settings, 'DELETE FROM audit_entry WHERE "index" = :i', i=own)
    deleted = cli(world.brand, *pinned)
    assert deleted.exit_code != 0 and "entry-gap" in deleted.stderr
    _restore(settings, original)

    # swap two rows' contents (a reordering of history)
    for row, index in ((original, own + 1), (neighbour, own)):
        _restore(settings, row | {"index": index})
    reordered = cli(world.brand, *pinned)
    assert reordered.exit_code != 0, reordered.stdout
    assert "root-mismatch" in reordered.stderr or "leaf-hash-mismatch" in reordered.stderr
    _restore(settings, original)
    _restore(settings, neighbour)
    assert cli(world.brand, *pinned).exit_code == 0

    # a saved checkpoint from a different history (same key, other root) is refused
    from api.services import Services
    from licensing.audit import sign_checkpoint
    from licensing.audit.signer import current_log_signer

    services = Services.from_settings(settings)
    with services.transaction() as session:
        signer = current_log_signer(session, services.keyring)
        forged = sign_checkpoint(services.audit_origin, 2, b"\x07" * 32, signer)
        rolled = sign_checkpoint(services.audit_origin, 10_000, b"\x07" * 32, signer)
    services.close()
    (tmp_path / "forged.txt").write_text(forged)
    fork = cli(
        world.brand, "audit", "verify", "--key", key, "--since", str(tmp_path / "forged.txt")
    )
    assert fork.exit_code != 0 and "since-inconsistent" in fork.stderr
    (tmp_path / "rolled.txt").write_text(rolled)
    back = cli(
        world.brand, "audit", "verify", "--key", key, "--since", str(tmp_path / "rolled.txt")
    )
    assert back.exit_code != 0 and "log-rolled-back" in back.stderr

    # a key other than the pinned one is refused
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from licensing.audit import verifier_key_string

    other_key = verifier_key_string(key.split("+")[0], Ed25519PrivateKey.generate().public_key())
    wrong = cli(world.brand, "audit", "verify", "--key", other_key)
    assert wrong.exit_code != 0 and "checkpoint-" in wrong.stderr
    assert Path(saved).exists()


def test_checkpoint_key_rotation_keeps_pinned_keys_verifying(world, cli, tmp_path):
    """`keys rotate-checkpoint`: a brand pinned to the old key, or to the new one,
    still verifies the whole log; the rotation is an audit event naming both keys."""
    from click.testing import CliRunner

    from api.cli import main

    settings = world.api.settings
    licence = world.licence(prints=2)
    _print(world, licence, "printed")
    old = world.api.ok("GET", "/v1/audit/key", world.brand)["verifier_key"]
    saved = tmp_path / "checkpoint.txt"
    assert cli(world.brand, "audit", "verify", "--key", old, "--save", str(saved)).exit_code == 0

    env = {
        "PARTVAULT_DATA_DIR": str(settings.data_dir),
        "PARTVAULT_DATABASE_URL": settings.database_url,
    }
    rotated = CliRunner().invoke(main, ["keys", "rotate-checkpoint"], env=env)
    assert rotated.exit_code == 0, rotated.output
    new = rotated.stdout.strip()
    assert new != old and world.api.ok("GET", "/v1/audit/key", world.brand)["verifier_key"] == new

    _print(world, licence, "printed")
    for pinned in (old, new):
        run = cli(world.brand, "audit", "verify", "--key", pinned, "--since", str(saved))
        assert run.exit_code == 0, run.stderr + run.stdout
    from_old = cli(world.brand, "audit", "verify", "--key", old)
    assert f"the log was handed over to key {new}" in from_old.stderr
    stranger = verifier_key_string(
        "127.0.0.1:8000/audit", Ed25519PrivateKey.generate().public_key()
    )
    refused = cli(world.brand, "audit", "verify", "--key", stranger)
    assert refused.exit_code == 1 and "checkpoint-unknown-key" in refused.stderr
    entries = world.api.ok("GET", "/v1/audit/entries", world.api.admin)["items"]
    (event,) = [e for e in entries if e["event_type"] == "licensing:checkpoint_key:rotated"]
    facts = json.loads(base64.b64decode(event["body"]))["facts"]
    assert facts == {"retired": old, "current": new}


def test_every_state_change_is_logged_with_its_actor(world):
    """Catalog, policy, facility and certification changes land in the log; a brand
    reads its own events in full and the operator's facility events redacted."""
    api = world.api
    part, cert = world.part["id"], world.certification["id"]
    api.ok("PATCH", f"/v1/parts/{part}", world.brand, json={"royalty_per_print_cents": 90})
    api.ok(
        "POST", f"/v1/brands/{world.brand_id}/policy", world.brand, json={"reprints_per_licence": 2}
    )
    for action in ("suspend", "reinstate", "revoke"):
        api.ok("POST", f"/v1/certifications/{cert}/{action}", world.brand, json={"reason": "audit"})
    world.bureau.ok("PATCH", f"/v1/facilities/{world.bureau.id}", json={"capacity": 3})
    api.ok("POST", f"/v1/facilities/{world.bureau.id}/suspend", api.admin)

    entries = api.ok("GET", "/v1/audit/entries", api.admin)["items"]
    brand, facility = f"brand:{world.brand_id}", f"facility:{world.bureau.id}"
    operator = "operator:" + world.api.ok("GET", "/v1/tokens", api.admin)[0]["id"]
    assert [(e["event_type"], e["actor"]) for e in entries] == [
        ("inventory:part:created", brand),
        ("inventory:profile:set", brand),
        ("inventory:revision:uploaded", brand),
        ("licensing:facility:registered", operator),
        ("licensing:certification:granted", brand),
        ("inventory:part:updated", brand),
        ("inventory:brand:policy_set", brand),
        ("licensing:certification:suspended", brand),
        ("licensing:certification:reinstated", brand),
        ("licensing:certification:revoked", brand),
        ("licensing:facility:updated", facility),
        ("licensing:facility:suspended", operator),
    ]
    facts = {e["event_type"]: json.loads(_b(e["body"]))["facts"] for e in entries}
    assert facts["inventory:part:updated"] == {
        "changed": ["royalty_per_print_cents"],
        "status": "active",
        "royalty_per_print_cents": 90,
        "currency": "EUR",
    }
    assert facts["licensing:certification:granted"]["processes"] == ["SLA"]
    assert facts["licensing:certification:revoked"] == {"reason": "audit"}
    assert facts["licensing:facility:updated"]["changed"] == ["capacity"]
    seen = api.ok("GET", "/v1/audit/entries", world.brand)["items"]
    redacted = {e["index"] for e in seen if e["redacted"]}
    assert redacted == {
        e["index"] for e in entries if e["event_type"].startswith("licensing:facility:")
    }
