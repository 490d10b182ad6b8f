"""The database replay cache on SQLite and PostgreSQL, across sessions and connections."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from inventory import db
from inventory.errors import Unauthorized
from licensing.tokens.dpop import make_proof, verify_proof
from licensing.tokens.replay import (
    DbReplayGuard,
    DpopReplay,
    ReplayBatch,
    prune_replay_cache,
    remember,
    replay_digest,
)
from licensing.tokens.thumbprint import key_thumbprint

HTU = "https://api.partvault.example/v1/licences/lic_1/redeem"


@pytest.fixture
def redeem(facility_key: Ed25519PrivateKey, licence: str, tools: SimpleNamespace) -> Any:
    """Verify a proof for the licence on a session, as the redeem route will."""

    def run(session: Session, proof: str) -> None:
        verify_proof(
            proof,
            htm="POST",
            htu=HTU,
            access_token=licence,
            expected_jkt=key_thumbprint(facility_key.public_key()),
            replay_guard=DbReplayGuard(session),
            now=tools.NOW,
        )

    return run


@pytest.fixture
def proof(facility_key: Ed25519PrivateKey, licence: str, tools: SimpleNamespace) -> str:
    return make_proof(facility_key, htm="POST", htu=HTU, access_token=licence, now=tools.NOW)


def test_replay_in_one_session_keeps_the_transaction_usable(
    engine: Engine, redeem: Any, proof: str, tools: SimpleNamespace
) -> None:
    with Session(engine) as session:
        redeem(session, proof)
        tools.expect(lambda: redeem(session, proof), 401, "dpop-replayed")
        session.add(DpopReplay(digest="f" * 64, expires_at=tools.NOW))  # caller's work goes on
        session.commit()
        assert len(session.exec(select(DpopReplay)).all()) == 2


def test_replay_across_sessions_after_commit(
    engine: Engine, redeem: Any, proof: str, tools: SimpleNamespace
) -> None:
    with Session(engine) as first:
        redeem(first, proof)
        first.commit()
    with Session(engine) as second:
        tools.expect(lambda: redeem(second, proof), 401, "dpop-replayed")


def test_concurrent_redeem_on_two_connections_admits_one(
    engine: Engine, redeem: Any, proof: str
) -> None:
    outcome: list[BaseException | None] = []

    def second_process() -> None:
        with Session(engine) as other:
            try:
                redeem(other, proof)
                other.commit()
                outcome.append(None)
            except Unauthorized as exc:
                outcome.append(exc)

    with Session(engine) as first:
        redeem(first, proof)  # flushed, not committed: the row is locked
        thread = threading.Thread(target=second_process)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive(), "second insert must wait for the first transaction"
        first.commit()
    thread.join(timeout=10)
    assert len(outcome) == 1
    assert isinstance(outcome[0], Unauthorized) and outcome[0].code == "dpop-replayed"


def test_rolled_back_redeem_frees_the_jti(engine: Engine, redeem: Any, proof: str) -> None:
    with Session(engine) as first:
        redeem(first, proof)
        first.rollback()
    with Session(engine) as second:
        redeem(second, proof)
        second.commit()


def test_prune_removes_only_expired_entries(engine: Engine, tools: SimpleNamespace) -> None:
    with Session(engine) as session:
        remember(session, "old", tools.NOW - timedelta(seconds=1))
        remember(session, "edge", tools.NOW)
        remember(session, "new", tools.NOW + timedelta(seconds=30))
        assert prune_replay_cache(session, tools.NOW) == 1
        session.commit()
        rows = session.exec(select(DpopReplay)).all()
        assert len(rows) == 2
        remember(session, "old", tools.NOW + timedelta(seconds=60))  # pruned → insertable
        tools.expect(lambda: remember(session, "new", tools.NOW), 401, "dpop-replayed")


def test_prune_deletes_at_most_its_limit(engine: Engine, tools: SimpleNamespace) -> None:
    with Session(engine) as session:
        for jti in ("a", "b", "c"):
            remember(session, jti, tools.NOW - timedelta(seconds=1))
        remember(session, "fresh", tools.NOW + timedelta(seconds=30))
        assert prune_replay_cache(session, tools.NOW, limit=2) == 2
        assert prune_replay_cache(session, tools.NOW, limit=2) == 1
        assert prune_replay_cache(session, tools.NOW, limit=2) == 0
        session.commit()
        assert len(session.exec(select(DpopReplay)).all()) == 1


def test_stored_digest_hides_the_jti(engine: Engine, tools: SimpleNamespace) -> None:
    with Session(engine) as session:
        remember(session, "jkt\x00my-proof-id-1234567", tools.NOW)
        session.commit()
    with engine.connect() as conn:
        (digest,) = conn.execute(sa.text("SELECT digest FROM dpop_replay")).one()
    assert len(digest) == 64 and "my-proof-id" not in digest


def test_a_batch_remembers_its_proofs_at_once_and_names_the_replays(
    engine: Engine, tools: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen before in a committed transaction or earlier in the batch: replayed;
    the others are remembered, by one statement."""
    later = tools.NOW + timedelta(seconds=60)
    with Session(engine) as session:
        remember(session, "old", later)
        session.commit()
    statements: list[str] = []
    on_driver = db._on_driver

    def recording(connection: Any, sql: str, params: Any = None) -> Any:
        statements.append(sql)
        return on_driver(connection, sql, params)

    monkeypatch.setattr(db, "_on_driver", recording)
    batch = ReplayBatch()
    for request, jti in enumerate(["new-1", "old", "new-2", "new-1"]):
        batch.guard(request).remember(jti, later)
    with Session(engine) as session:
        assert batch.remember_all(session) == {1, 3}
        assert batch.remember_all(session) == set()  # nothing left to remember
        session.commit()
    assert [s.split("(")[0].strip() for s in statements] == ["INSERT INTO dpop_replay"]
    with Session(engine) as session:
        tools.expect(lambda: remember(session, "new-2", later), 401, "dpop-replayed")
        stored = {row.digest for row in session.exec(select(DpopReplay)).all()}
        assert stored == {replay_digest(jti) for jti in ("old", "new-1", "new-2")}
