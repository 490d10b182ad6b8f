"""The committing process (``PARTVAULT_GROUP_COMMIT=process``, the default).

The real app on each backend, with its batches committed by a process of its
own: the server process must not commit them itself, every answer (success,
refusal, replay) must cross the pipe intact, and a committing process that dies
must cost only the batch it held, whose requests learn that their outcome is
unknown.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
import uvloop

from api import groupcommit
from api.auth import Credentials
from api.committer import CommittingProcess, _portable
from api.config import Settings
from api.groupcommit import Deferred, Request
from api.routes.licences import check_issue, record_licences
from inventory.accounts import TokenKind
from inventory.db import utcnow
from inventory.errors import Conflict
from licensing.licences import LicenceTerms

PROBLEM = "application/problem+json"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, group_commit="process")


@pytest.fixture
def committing(world: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The world's committing process; the server process itself may commit no batch."""

    def not_here(*_: Any) -> Any:
        raise AssertionError("the server process committed a batch itself")

    monkeypatch.setattr(groupcommit, "commit", not_here)
    process = groupcommit._processes[world.api.client.app.state.services]
    assert process._process is not None and process._process.is_alive()
    assert process._process.pid != os.getpid()
    return process


def _redeem(world: Any, licence: dict[str, Any], **kwargs: Any) -> Any:
    return world.bureau.call(
        "POST",
        f"/v1/licences/{licence['jti']}/redeem",
        json={"licence": licence["token"]},
        **kwargs,
    )


def _scalar(world: Any, sql: str, **params: Any) -> Any:
    with world.api.client.app.state.services.engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def _prints_used(world: Any, jti: str) -> int:
    return int(_scalar(world, "SELECT prints_used FROM licence WHERE jti = :j", j=jti))


def test_concurrent_redemptions_commit_in_the_committing_process(world, committing):
    issued = world.licence(prints=5)  # issued in the committing process too
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _redeem(world, issued), range(8)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] * 5 + [409] * 3
    refused = [a for a in answers if a.status_code == 409]
    assert {a.headers["content-type"] for a in refused} == {PROBLEM}
    assert {a.json()["code"] for a in refused} == {"licence-exhausted"}
    serials = {a.json()["serial"] for a in answers if a.status_code == 201}
    assert len(serials) == 5
    assert _prints_used(world, issued["jti"]) == 5
    jobs = "SELECT count(*) FROM print_job WHERE licence_jti = :j"
    assert _scalar(world, jobs, j=issued["jti"]) == 5
    audited = "SELECT count(*) FROM audit_entry WHERE event_type = 'licensing:print:redeemed'"
    assert _scalar(world, audited) == 5


def test_refusals_and_replays_cross_the_pipe_intact(world, committing):
    licence = world.licence(prints=2)
    key = {"Idempotency-Key": "across-the-pipe"}
    first = _redeem(world, licence, headers=key)
    again = _redeem(world, licence, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    other = world.licence(prints=1)
    mismatch = world.bureau.call(
        "POST", f"/v1/licences/{licence['jti']}/redeem", json={"licence": other["token"]}
    )
    assert mismatch.status_code == 400
    assert mismatch.headers["content-type"] == PROBLEM
    assert mismatch.json()["code"] == "licence-jti-mismatch"
    revoked = world.licence(prints=1)
    world.api.ok(
        "POST", f"/v1/licences/{revoked['jti']}/revoke", world.brand, json={"reason": "recall"}
    )
    refused = _redeem(world, revoked)
    assert (refused.status_code, refused.json()["code"]) == (403, "licence-revoked")
    unknown_revision = world.api.call(
        "POST",
        "/v1/licences",
        world.brand,
        json={
            "facility_id": world.bureau.id,
            "revision_id": "rev_unknown",
            "prints": 1,
            "expires_at": "2099-01-01T00:00:00Z",
        },
    )
    assert unknown_revision.status_code == 404
    assert unknown_revision.json()["code"] == "revision-not-found"
    assert _prints_used(world, licence["jti"]) == 1


def test_a_committing_process_that_died_while_idle_is_replaced(world, committing):
    licence = world.licence(prints=2)
    dead = committing._process
    os.kill(dead.pid, signal.SIGKILL)
    dead.join(10)
    redeemed = _redeem(world, licence)
    assert redeemed.status_code == 201, redeemed.text
    assert committing._process is not None and committing._process.pid != dead.pid
    assert _prints_used(world, licence["jti"]) == 1


def test_a_batch_whose_committing_process_dies_gets_503_and_counts_nothing(world, committing):
    """The committing process is killed while its batch waits for the database
    (held by the test): the outcome is unknown to the server, so the request is
    answered 503 ``commit-outcome-unknown``; nothing was committed, and the next
    redemption (in a new committing process) counts normally."""
    licence = world.licence(prints=2)
    services = world.api.client.app.state.services
    answered: list[Any] = []
    with _writes_held(services, licence["jti"]):
        caller = threading.Thread(target=lambda: answered.append(_redeem(world, licence)))
        caller.start()
        time.sleep(1.0)  # the batch reaches the committing process and waits there
        assert not answered
        os.kill(committing._process.pid, signal.SIGKILL)
        caller.join(30)
    assert answered[0].status_code == 503
    assert answered[0].headers["content-type"] == PROBLEM
    assert answered[0].json()["code"] == "commit-outcome-unknown"
    assert _prints_used(world, licence["jti"]) == 0
    assert _redeem(world, licence).status_code == 201
    assert _prints_used(world, licence["jti"]) == 1


class _writes_held:
    """Hold what a redemption of `jti` must write: SQLite's writer turn, or the
    licence's row on PostgreSQL."""

    def __init__(self, services: Any, jti: str) -> None:
        self.services, self.jti = services, jti

    def __enter__(self) -> None:
        if self.services.engine.dialect.name == "sqlite":
            self.held: Any = self.services.writer_turn
            self.held.__enter__()
            return
        self.held = self.services.engine.connect()
        self.transaction = self.held.begin()
        self.held.execute(
            sa.text("SELECT 1 FROM licence WHERE jti = :j FOR UPDATE"), {"j": self.jti}
        )

    def __exit__(self, *exc: Any) -> None:
        if self.services.engine.dialect.name == "sqlite":
            self.held.__exit__(*exc)
            return
        self.transaction.rollback()
        self.held.close()


def test_an_outcome_that_does_not_pickle_is_sent_as_its_type_and_text():
    class Local(Exception):
        pass

    portable = _portable(Local("disk on fire"))
    assert type(portable) is RuntimeError and str(portable) == "Local: disk on fire"
    refusal = Conflict("every print of this licence has been redeemed", code="licence-exhausted")
    assert _portable(refusal) is refusal
    assert _portable(b"{}") == b"{}"


def test_the_setting_accepts_process_or_thread_only(tmp_path):
    env = {"PARTVAULT_DATA_DIR": str(tmp_path)}
    assert Settings.from_env(env).group_commit == "process"
    assert Settings.from_env(env | {"PARTVAULT_GROUP_COMMIT": " Thread"}).group_commit == "thread"
    with pytest.raises(SystemExit, match="PARTVAULT_GROUP_COMMIT must be one of process, thread"):
        Settings.from_env(env | {"PARTVAULT_GROUP_COMMIT": "fork"})


def test_the_committing_process_ends_cleanly_when_its_server_process_stops(world, committing):
    assert world.licence(prints=1)["prints_total"] == 1
    process = committing._process
    groupcommit.stop_committing(world.api.client.app.state.services)
    assert not process.is_alive() and process.exitcode == 0  # ended at EOF, not killed


def test_a_batch_answered_in_several_pieces_crosses_under_uvloop(world):
    """Forty licences issued in one batch: their answer (over 16 KiB) leaves the
    committing process in two writes. uvloop makes the pipe it watches
    non-blocking; the pipe must be blocking again, or reading the answer fails
    whenever the second piece has not arrived yet (seen in bench/redeem.py)."""
    services = world.api.client.app.state.services
    now = utcnow()
    terms = LicenceTerms(world.bureau.id, world.revision["id"], 1, now, now + timedelta(days=1))
    credentials = Credentials(world.brand, None, "POST", world.api.settings.public_url)
    work = Deferred(partial(check_issue, terms), record_licences)
    requests = [Request(credentials, (TokenKind.brand,), work) for _ in range(40)]
    process = CommittingProcess(services.settings, groupcommit.MAX_BATCH)

    async def issue_all() -> tuple[list[Any], bool]:
        outcomes = await asyncio.gather(*(process.run(r) for r in requests))
        assert process._pipe is not None
        return outcomes, os.get_blocking(process._pipe.fileno())

    process.start()
    try:
        outcomes, blocking = uvloop.run(issue_all())
    finally:
        process.stop()
    assert blocking
    assert sum(len(o) for o in outcomes) > 16 * 1024
    assert len({msgspec.json.decode(o)["jti"] for o in outcomes}) == 40


def test_a_request_that_does_not_pickle_fails_alone(world):
    """A request whose work cannot cross to the committing process (a bug: a
    closure instead of a module-level function) fails with its pickling error;
    the request queued in the same batch commits."""
    services = world.api.client.app.state.services
    now = utcnow()
    terms = LicenceTerms(world.bureau.id, world.revision["id"], 1, now, now + timedelta(days=1))
    credentials = Credentials(world.brand, None, "POST", world.api.settings.public_url)
    good = Request(
        credentials, (TokenKind.brand,), Deferred(partial(check_issue, terms), record_licences)
    )
    closure = Request(credentials, (TokenKind.brand,), Deferred(lambda *_: None, record_licences))
    process = CommittingProcess(services.settings, groupcommit.MAX_BATCH)

    async def in_one_batch() -> list[Any]:
        return await asyncio.gather(process.run(closure), process.run(good), return_exceptions=True)

    process.start()
    try:
        failure, issued = asyncio.run(in_one_batch())
    finally:
        process.stop()
    assert isinstance(failure, (pickle.PicklingError, AttributeError, TypeError))
    assert msgspec.json.decode(issued)["prints_total"] == 1
