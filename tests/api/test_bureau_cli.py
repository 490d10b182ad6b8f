"""`partvault bureau redeem`: a bureau redeems prints and fetches their designs from
the command line, retrying safely when an answer is lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from tests_support import write_private_pem

from api import client as client_module
from api.cli import main
from licensing.delivery import open_delivery


class _InProcess(client_module.Client):
    """The CLI's client, talking to the test's app in-process."""

    test_client: Any = None

    def __init__(self, url: str, token: str | None, **_: Any) -> None:
        self.http = self.test_client
        self.auth = {"Authorization": f"Bearer {token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs["headers"] = kwargs.get("headers", {}) | self.auth
        return super().request(method, path, **kwargs)

    def save(self, path: str, destination: Path, **kwargs: Any) -> int:
        kwargs["headers"] = kwargs.get("headers", {}) | self.auth
        return super().save(path, destination, **kwargs)


class _LosesFirstAnswer(_InProcess):
    """The first redemption reaches the server and commits, but its answer is lost."""

    lost = 0

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = super().request(method, path, **kwargs)
        if path.endswith("/redeem") and not _LosesFirstAnswer.lost:
            _LosesFirstAnswer.lost += 1
            raise httpx.ReadError("connection reset while reading the answer")
        return response


@pytest.fixture
def redeem(world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    key = write_private_pem(world.bureau.pop_key, tmp_path / "ed25519.pem")

    def run(licence: dict[str, Any], *args: str, client: type[_InProcess] = _InProcess) -> Result:
        client.test_client = world.api.client
        monkeypatch.setattr(client_module, "Client", client)
        licence_file = tmp_path / f"{licence['jti']}.jwt"
        licence_file.write_text(licence["token"] + "\n")
        env = {
            "PARTVAULT_URL": world.api.settings.public_url,
            "PARTVAULT_TOKEN": world.bureau.token,
        }
        command = ["bureau", "redeem", str(licence_file), "--key", str(key), *args]
        return CliRunner().invoke(main, command, env=env, catch_exceptions=False)

    return run


def _used(world: Any, jti: str) -> int:
    return int(world.api.ok("GET", f"/v1/licences/{jti}", world.brand)["prints_used"])


def test_redeems_prints_and_fetches_designs_only_the_bureau_opens(world, redeem, tmp_path):
    licence = world.licence(prints=3)
    folder = tmp_path / "designs"
    result = redeem(licence, "--prints", "2", "--download", str(folder))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2 and all(f"of {licence['jti']}: serial " in line for line in lines)
    assert _used(world, licence["jti"]) == 2
    files = sorted(folder.iterdir())
    assert [f.suffix for f in files] == [".3mf", ".3mf"]  # no partial file left beside them
    rsa_key = write_private_pem(world.bureau.wrap_key, tmp_path / "rsa.pem")
    opened = open_delivery(files[0], rsa_key, tmp_path / "part.stl")
    assert opened.consumer_id == world.bureau.id and opened.triangles >= 12  # refined to mark


def test_a_lost_answer_is_asked_again_and_counts_once(world, redeem):
    licence = world.licence(prints=3)
    _LosesFirstAnswer.lost = 0
    result = redeem(licence, client=_LosesFirstAnswer)
    assert result.exit_code == 0, result.output
    assert _LosesFirstAnswer.lost == 1 and len(result.output.splitlines()) == 1
    assert _used(world, licence["jti"]) == 1
    engine = sa.create_engine(world.api.settings.database_url)
    with engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT status FROM idempotency_record")).scalars().all()
    engine.dispose()
    assert keys == ["done"]  # one key for the print, its answer replayed on the retry


def test_stops_at_the_first_refusal(world, redeem):
    licence = world.licence(prints=1)
    result = redeem(licence, "--prints", "3")
    assert result.exit_code == 1
    assert result.stdout.count("serial") == 1
    assert "licence-exhausted" in result.stderr
    assert _used(world, licence["jti"]) == 1


def test_a_licence_that_does_not_verify_redeems_nothing(world, redeem):
    licence = world.licence(prints=2)
    head, payload, signature = licence["token"].split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    result = redeem(licence | {"token": f"{head}.{payload}.{flipped}"})
    assert result.exit_code == 1 and "refused: licence-" in result.stderr
    assert _used(world, licence["jti"]) == 0


class _BreaksMidway(httpx.SyncByteStream):
    def __iter__(self) -> Any:
        yield b"PK\x03\x04 first part of the package"
        raise httpx.ReadError("connection reset")


def test_save_leaves_no_partial_file(tmp_path):
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/missing":
            return httpx.Response(404, json={"code": "job-not-found", "detail": "no such job"})
        return httpx.Response(200, stream=_BreaksMidway())

    api = client_module.Client("http://vault.test", "t")
    api.http = httpx.Client(base_url="http://vault.test", transport=httpx.MockTransport(answer))
    with pytest.raises(client_module.ApiError) as missing:
        api.save("/missing", tmp_path / "a.3mf")
    assert missing.value.status == 404
    with pytest.raises(httpx.ReadError):
        api.save("/broken", tmp_path / "b.3mf")
    assert list(tmp_path.iterdir()) == []
