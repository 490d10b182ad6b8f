"""The database log on SQLite and PostgreSQL: append, proofs, checkpoints, tampering."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import Session

import licensing.audit as audit
from licensing.audit import merkle
from licensing.audit.log import DbHashReader, handover_checkpoint

ORIGIN = "partvault.test/audit"
WHEN = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()
VKEY = audit.verifier_key_string(ORIGIN, KEY.public_key())


def ev(i: int, brand: str | None = "brand_a") -> audit.AuditEvent:
    return audit.AuditEvent(
        type="licensing:print:redeem",
        actor="facility:fac_1",
        brand_id=brand,
        subject={"licence": f"lic_{i}"},
        facts={"n": i},
        occurred_at=WHEN,
    )


def fill(engine: Engine, count: int, batch: int = 1) -> None:
    for start in range(0, count, batch):
        with Session(engine) as s:
            audit.append_events(
                s, [ev(i, f"brand_{'ab'[i % 2]}") for i in range(start, min(count, start + batch))]
            )
            s.commit()


def leaves(engine: Engine) -> list[bytes]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text('SELECT leaf_hash FROM audit_entry ORDER BY "index"'))
        return [bytes(r[0]) for r in rows]


def roots_by_size(leaf_hashes: list[bytes]) -> list[bytes]:
    tree, roots = merkle.CompactRange(), [merkle.EMPTY_ROOT]
    for leaf in leaf_hashes:
        tree.append(leaf)
        roots.append(tree.root())
    return roots


def test_queued_appends_append_once_at_the_end_and_never_on_error(engine: Engine) -> None:
    with Session(engine) as s:
        audit.record_event(s, ev(0))  # no queue open: appended at once
        assert audit.log_size(s) == 1
        with audit.queued_appends(s) as queue:
            audit.record_event(s, ev(1))
            audit.record_event(s, ev(2))
            audit.record_event(s, ev(3))
            assert audit.log_size(s) == 1 and len(queue) == 3
            del queue[2:]  # the caller rolled back the work behind the last event
        assert audit.log_size(s) == 3
        with pytest.raises(RuntimeError), audit.queued_appends(s):
            audit.record_event(s, ev(4))
            raise RuntimeError("the work failed")
        assert audit.log_size(s) == 3
        audit.record_event(s, ev(5))  # the queue is closed again
        s.commit()
    assert leaves(engine)[1:] == [merkle.leaf_hash(audit.encode_event(ev(i))) for i in (1, 2, 5)]


def test_append_is_gapless_flushes_and_rolls_back(engine: Engine) -> None:
    with Session(engine) as s:
        receipts = audit.append_events(s, [ev(i) for i in range(5)])
        s.commit()
    assert [r.index for r in receipts] == [0, 1, 2, 3, 4]
    assert receipts[2].leaf_hash == merkle.leaf_hash(audit.encode_event(ev(2)))
    with Session(engine) as s:
        assert audit.append_event(s, ev(5)).index == 5
        assert audit.log_size(s) == 6
        s.rollback()
    with Session(engine) as s:
        assert audit.log_size(s) == 5
        assert audit.append_event(s, ev(5)).index == 5
        s.commit()
    fill_more = 32
    with Session(engine) as s:
        for i in range(6, 6 + fill_more):
            audit.append_event(s, ev(i))
        s.commit()
    size = 6 + fill_more
    with engine.connect() as conn:
        nodes = conn.execute(sa.text("SELECT count(*) FROM audit_node")).scalar_one()
    assert nodes == sum(size >> lvl for lvl in range(size.bit_length()))


def test_db_proofs_verify_at_every_size(engine: Engine) -> None:
    fill(engine, 37, batch=5)
    leaf_hashes = leaves(engine)
    roots = roots_by_size(leaf_hashes)
    with Session(engine) as s:
        for n in range(1, 38):
            assert audit.tree_root(s, n) == roots[n]
            for m in range(0, n, 3):
                proof = audit.inclusion_proof(s, m, n)
                audit.verify_inclusion(leaf_hashes[m], m, n, proof, roots[n])
            for old in range(0, n + 1, 2):
                proof = audit.consistency_proof(s, old, n)
                audit.verify_consistency(old, n, roots[old], roots[n], proof)


def test_proofs_read_log_n_rows_in_one_query(engine: Engine) -> None:
    fill(engine, 200, batch=50)
    with Session(engine) as s:
        reader = DbHashReader(s)
        merkle.inclusion_proof(reader, 77, 199)
        merkle.consistency_proof(reader, 101, 199)
        assert reader.queries == 2
        assert reader.rows <= 2 * 2 * (199).bit_length()


def test_out_of_range_requests(engine: Engine) -> None:
    fill(engine, 4)
    with Session(engine) as s:
        cases: list[tuple[Callable[[], object], str]] = [
            (lambda: audit.inclusion_proof(s, 0, 5), "proof-size-out-of-range"),
            (lambda: audit.inclusion_proof(s, 4, 4), "leaf-index-out-of-range"),
            (lambda: audit.consistency_proof(s, 3, 5), "proof-size-out-of-range"),
            (lambda: audit.consistency_proof(s, 4, 3), "proof-size-out-of-range"),
            (lambda: audit.entries(s, 0, 0), "entries-range-invalid"),
            (lambda: audit.entries(s, -1, 10), "entries-range-invalid"),
        ]
        for call, code in cases:
            with pytest.raises(audit.AuditRangeError) as err:
                call()
            assert err.value.code == code


def test_entries_are_paged_and_redacted_for_other_brands(engine: Engine) -> None:
    fill(engine, 6)
    with Session(engine) as s:
        page = audit.entries(s, 2, 3)
        assert [e.index for e in page] == [2, 3, 4]
        assert page[0].body == audit.encode_event(ev(2, "brand_a"))
        mine = audit.entries(s, 0, 10, brand_id="brand_b")
    assert [e.redacted for e in mine] == [True, False] * 3
    assert mine[0].body is None and mine[0].event_type is None and mine[0].subject is None
    assert mine[1].body is not None and mine[1].brand_id == "brand_b"
    assert [e.leaf_hash for e in mine] == leaves(engine)


def test_latest_checkpoint_is_signed_stored_and_reused(engine: Engine) -> None:
    with Session(engine) as s:
        empty = audit.latest_checkpoint(s, KEY, ORIGIN)
        s.commit()
    assert (empty.size, empty.root) == (0, merkle.EMPTY_ROOT)
    fill(engine, 9)
    with Session(engine) as s:
        first = audit.latest_checkpoint(s, KEY, ORIGIN)
        s.commit()
    with Session(engine) as s:
        again = audit.latest_checkpoint(s, KEY, ORIGIN)
        history = audit.checkpoints(s, ORIGIN)
    assert again.signed_note == first.signed_note
    assert [c.size for c in history] == [0, 9]
    parsed = audit.parse_and_verify_checkpoint(first.signed_note, VKEY)
    assert (parsed.size, parsed.root) == (9, roots_by_size(leaves(engine))[9])


def snapshot(
    engine: Engine, brand: str | None = None
) -> tuple[list[tuple[int, bytes | None, bytes]], list[str]]:
    with Session(engine) as s:
        notes = [c.signed_note for c in audit.checkpoints(s, ORIGIN)]
        rows = audit.entries(s, 0, 1000, brand_id=brand)
    return [(e.index, e.body, e.leaf_hash) for e in rows], notes


def checkpoint_now(engine: Engine) -> str:
    with Session(engine) as s:
        note = audit.latest_checkpoint(s, KEY, ORIGIN).signed_note
        s.commit()
    return note


@pytest.fixture
def signed_log(engine: Engine) -> Iterator[Engine]:
    fill(engine, 10, batch=3)
    checkpoint_now(engine)
    fill_from(engine, 10, 21)
    checkpoint_now(engine)
    yield engine


def fill_from(engine: Engine, start: int, end: int) -> None:
    with Session(engine) as s:
        audit.append_events(s, [ev(i, f"brand_{'ab'[i % 2]}") for i in range(start, end)])
        s.commit()


def test_verify_log_accepts_the_honest_log(signed_log: Engine) -> None:
    rows, notes = snapshot(signed_log)
    since = notes[0]
    fill_from(signed_log, 21, 25)
    rows, notes = snapshot(signed_log)
    report = audit.verify_log(rows, notes, VKEY, since=since)
    assert (report.entries, report.bodies_checked, report.checkpoints_verified) == (25, 25, 2)
    assert (report.latest.size, report.since_size, report.uncovered) == (21, 10, 4)
    redacted_rows, _ = snapshot(signed_log, brand="brand_a")
    mine = audit.verify_log(redacted_rows, notes, VKEY)
    assert (mine.bodies_checked, mine.redacted) == (13, 12)


TAMPERING: dict[str, tuple[list[str], str]] = {
    "edit body": (['UPDATE audit_entry SET body = :body WHERE "index" = 4'], "leaf-hash-mismatch"),
    "edit body and leaf hash": (
        ['UPDATE audit_entry SET body = :body, leaf_hash = :leaf WHERE "index" = 4'],
        "root-mismatch",
    ),
    "edit leaf hash": (
        ['UPDATE audit_entry SET leaf_hash = :leaf WHERE "index" = 4'],
        "leaf-hash-mismatch",
    ),
    "delete a middle row": (['DELETE FROM audit_entry WHERE "index" = 7'], "entry-gap"),
    "delete the last rows": (['DELETE FROM audit_entry WHERE "index" >= 19'], "log-truncated"),
    "swap two rows": (
        [
            'UPDATE audit_entry SET "index" = -1 WHERE "index" = 3',
            'UPDATE audit_entry SET "index" = 3 WHERE "index" = 5',
            'UPDATE audit_entry SET "index" = 5 WHERE "index" = -1',
        ],
        "root-mismatch",
    ),
}


def test_verify_log_detects_each_kind_of_tampering(signed_log: Engine) -> None:
    body = audit.encode_event(ev(400))
    params = {"body": body, "leaf": merkle.leaf_hash(body)}
    with signed_log.connect() as conn:
        for case, (statements, code) in TAMPERING.items():
            tampering = conn.begin()
            for sql in statements:
                conn.execute(sa.text(sql), params)
            with Session(bind=conn) as s:
                notes = [c.signed_note for c in audit.checkpoints(s, ORIGIN)]
                rows = [(e.index, e.body, e.leaf_hash) for e in audit.entries(s, 0, 1000)]
            with pytest.raises(audit.AuditVerificationError) as err:
                audit.verify_log(rows, notes, VKEY)
            assert err.value.code == code, case
            tampering.rollback()
    rows, notes = snapshot(signed_log)
    assert audit.verify_log(rows, notes, VKEY).entries == 21


def test_verify_log_rejects_reordered_input(signed_log: Engine) -> None:
    rows, notes = snapshot(signed_log)
    rows[3], rows[4] = rows[4], rows[3]
    with pytest.raises(audit.AuditVerificationError) as err:
        audit.verify_log(rows, notes, VKEY)
    assert err.value.code == "entry-gap"


def test_verify_log_rejects_checkpoints_by_another_key(signed_log: Engine) -> None:
    rows, notes = snapshot(signed_log)
    other = Ed25519PrivateKey.generate()
    fake = audit.sign_checkpoint(ORIGIN, 21, bytes(32), other)
    with pytest.raises(audit.AuditVerificationError) as err:
        audit.verify_log(rows, [*notes, fake], VKEY)
    assert err.value.code == "checkpoint-unknown-key"


def test_verify_log_detects_a_rewritten_history_since(signed_log: Engine) -> None:
    rows, notes = snapshot(signed_log)
    forked = audit.sign_checkpoint(ORIGIN, 10, bytes(32), KEY)
    with pytest.raises(audit.AuditVerificationError) as err:
        audit.verify_log(rows, notes, VKEY, since=forked)
    assert err.value.code == "since-inconsistent"
    bigger = audit.sign_checkpoint(ORIGIN, 99, bytes(32), KEY)
    with pytest.raises(audit.AuditVerificationError) as err:
        audit.verify_log(rows, notes, VKEY, since=bigger)
    assert err.value.code == "log-rolled-back"


def test_a_missing_node_is_a_storage_error(engine: Engine) -> None:
    fill(engine, 8)
    with engine.begin() as conn:
        conn.execute(sa.text('DELETE FROM audit_node WHERE level = 2 AND "index" = 1'))
    with Session(engine) as s:
        assert len(audit.inclusion_proof(s, 0, 6)) == 3
        with pytest.raises(audit.AuditStorageError) as err:
            audit.inclusion_proof(s, 0, 8)
    assert err.value.code == "audit-node-missing"


def test_an_edited_node_makes_the_next_checkpoint_fail_verification(signed_log: Engine) -> None:
    with signed_log.begin() as conn:
        conn.execute(
            sa.text('UPDATE audit_node SET hash = :h WHERE level = 0 AND "index" = 20'),
            {"h": bytes(32)},
        )
    fill_from(signed_log, 21, 24)
    checkpoint_now(signed_log)
    rows, notes = snapshot(signed_log)
    with pytest.raises(audit.AuditVerificationError) as err:
        audit.verify_log(rows, notes, VKEY)
    assert err.value.code == "root-mismatch"


NEXT, THIRD = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()


def vkey(key: Ed25519PrivateKey) -> str:
    return audit.verifier_key_string(ORIGIN, key.public_key())


def signed_now(
    engine: Engine, key: Ed25519PrivateKey, handover_to: Ed25519PrivateKey | None = None
) -> str:
    """A checkpoint of the current size by `key` (a handover with `handover_to`), stored."""
    with Session(engine) as s:
        if handover_to is not None:
            note = handover_checkpoint(s, key, handover_to, ORIGIN).signed_note
        else:
            size = audit.log_size(s)
            root = audit.tree_root(s, size)
            note = audit.sign_checkpoint(ORIGIN, size, root, key, WHEN)
            row = audit.AuditCheckpoint(
                origin=ORIGIN, size=size, root=root, signed_note=note, created_at=WHEN
            )
            s.add(row)
        s.commit()
    return note


def test_rotations_are_followed_from_any_key_of_the_chain(signed_log: Engine) -> None:
    fill_from(signed_log, 21, 25)
    signed_now(signed_log, KEY, handover_to=NEXT)
    fill_from(signed_log, 25, 30)
    signed_now(signed_log, NEXT)
    signed_now(signed_log, NEXT, handover_to=THIRD)
    fill_from(signed_log, 30, 33)
    signed_now(signed_log, THIRD)
    rows, notes = snapshot(signed_log)
    for pinned in (KEY, NEXT, THIRD):
        report = audit.verify_log(rows, notes, vkey(pinned), since=notes[0])
        assert (report.checkpoints_verified, report.latest.size) == (len(notes), 33)
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(audit.AuditVerificationError) as err:
        audit.verify_log(rows, notes, vkey(stranger))
    assert err.value.code == "checkpoint-unknown-key"


def test_a_handover_needs_both_signatures(signed_log: Engine) -> None:
    fill_from(signed_log, 21, 25)
    handover = signed_now(signed_log, KEY, handover_to=NEXT)
    fill_from(signed_log, 25, 30)
    later = signed_now(signed_log, NEXT)
    rows, notes = snapshot(signed_log)
    body, _, signatures = handover.partition("\n\n")
    by_key_only = f"{body}\n\n{signatures.splitlines()[0]}\n"
    assert audit.parse_and_verify_checkpoint(by_key_only, VKEY).rotation is not None
    forged = [by_key_only if note == handover else note for note in notes]
    with pytest.raises(audit.AuditVerificationError) as err:
        audit.verify_log(rows, forged, VKEY)
    assert err.value.code == "checkpoint-unknown-key"
    assert (
        audit.verify_log(rows, notes, VKEY).latest.size == 30 == audit.read_checkpoint(later).size
    )


def test_a_retired_key_cannot_sign_the_log_s_future(signed_log: Engine) -> None:
    fill_from(signed_log, 21, 25)
    signed_now(signed_log, KEY, handover_to=NEXT)
    fill_from(signed_log, 25, 30)
    signed_now(signed_log, KEY)
    rows, notes = snapshot(signed_log)
    with pytest.raises(audit.AuditVerificationError) as err:
        audit.verify_log(rows, notes, VKEY)
    assert err.value.code == "checkpoint-unknown-key"
