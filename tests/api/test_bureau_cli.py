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
def bureau_cli(world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run ``partvault bureau …`` as the world's bureau, with its proof key file."""
    key = write_private_pem(world.bureau.pop_key, tmp_path / "ed25519.pem")

    def run(*args: str, client: type[_InProcess] = _InProcess) -> Result:
        client.test_client = world.api.client
        monkeypatch.setattr(client_module, "Client", client)
        env = {
            "PARTVAULT_URL": world.api.settings.public_url,
            "PARTVAULT_TOKEN": world.bureau.token,
        }
        command = ["bureau", *args, "--key", str(key)]
        return CliRunner().invoke(main, command, env=env, catch_exceptions=False)

    return run


@pytest.fixture
def redeem(bureau_cli: Any, tmp_path: Path) -> Any:
    def run(licence: dict[str, Any], *args: str, client: type[_InProcess] = _InProcess) -> Result:
        licence_file = tmp_path / f"{licence['jti']}.jwt"
        licence_file.write_text(licence["token"] + "\n")
        return bureau_cli("redeem", str(licence_file), *args, client=client)

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


def test_download_fetches_a_redeemed_print_again(world, redeem, bureau_cli, tmp_path):
    licence = world.licence(prints=1)
    serial = redeem(licence).stdout.split("serial ")[1].strip()
    folder = tmp_path / "again"
    fetched = bureau_cli("download", serial, "--to", str(folder))
    assert fetched.exit_code == 0, fetched.output
    assert fetched.stdout.strip() == str(folder / f"{serial}.3mf")
    rsa_key = write_private_pem(world.bureau.wrap_key, tmp_path / "rsa.pem")
    assert open_delivery(folder / f"{serial}.3mf", rsa_key, tmp_path / "p.stl").triangles >= 12
    unknown = bureau_cli("download", "0123456789abcdef", "--to", str(folder))
    assert unknown.exit_code == 1 and "job-not-found" in unknown.stderr
    assert sorted(p.name for p in folder.iterdir()) == [f"{serial}.3mf"]


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
