"""Canonical event encoding and C2SP signed-note checkpoints."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from licensing.audit import (
    AuditEvent,
    AuditEventInvalid,
    AuditVerificationError,
    encode_event,
    parse_and_verify_checkpoint,
    sign_checkpoint,
    verifier_key_string,
)

ORIGIN = "partvault.example/audit"
WHEN = datetime(2026, 11, 23, 11, 26, 41, 5, tzinfo=UTC)


def event(**changes: object) -> AuditEvent:
    fields: dict[str, object] = {
        "type": "licensing:print:redeem",
        "actor": "facility:fac_0a1b",
        "brand_id": "brand_42",
        "subject": {"licence": "lic_1", "print": "prt_9"},
        "facts": {
            "serial": "S-0001",
            "remaining": 3,
            "ok": True,
            "note": None,
            "tags": ["a", 1, False],
        },
        "occurred_at": WHEN,
    }
    fields.update(changes)
    return AuditEvent(**fields)  # type: ignore[arg-type]


def test_encoding_is_exact_and_deterministic() -> None:
    expected = (
        b'{"actor":"facility:fac_0a1b","brand_id":"brand_42","facts":{"note":null,'
        b'"ok":true,"remaining":3,"serial":"S-0001","tags":["a",1,false]},'
        b'"occurred_at":"2026-11-23T11:26:41.000005Z","subject":{"licence":"lic_1",'
        b'"print":"prt_9"},"type":"licensing:print:redeem","v":1}'
    )
    assert encode_event(event()) == expected
    reordered = event(facts=dict(reversed(list(event().facts.items()))))
    assert encode_event(reordered) == expected


def test_encoding_normalises_time_zone_and_keeps_unicode() -> None:
    cet = timezone(timedelta(hours=1))
    same = event(occurred_at=WHEN.astimezone(cet), facts={"name": "Zahnrad ü \u2603 \n"})
    body = encode_event(same)
    assert b'"occurred_at":"2026-11-23T11:26:41.000005Z"' in body
    assert '"name":"Zahnrad ü \u2603 \\n"'.encode() in body


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"type": "licensing:print"}, "event-type-invalid"),
        ({"type": "Licensing:print:redeem"}, "event-type-invalid"),
        ({"actor": "facility"}, "event-actor-invalid"),
        ({"brand_id": "brand 42"}, "event-id-invalid"),
        ({"subject": {"licence": "lic 1"}}, "event-id-invalid"),
        ({"subject": {"Licence": "lic_1"}}, "event-key-invalid"),
        ({"facts": {"weight": 1.5}}, "fact-value-invalid"),
        ({"facts": {"big": 2**53}}, "fact-value-invalid"),
        ({"facts": {"nested": {"a": 1}}}, "fact-value-invalid"),
        ({"facts": {"list": [[1]]}}, "fact-value-invalid"),
        ({"facts": {"s": "\ud800"}}, "event-text-invalid"),
        ({"occurred_at": datetime(2026, 1, 1)}, "event-time-naive"),
    ],
)
def test_invalid_events_are_refused(changes: dict[str, object], code: str) -> None:
    with pytest.raises(AuditEventInvalid) as err:
        encode_event(event(**changes))
    assert err.value.code == code


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_checkpoint_format_matches_c2sp() -> None:
    key = Ed25519PrivateKey.generate()
    root = hashlib.sha256(b"root").digest()
    note = sign_checkpoint(ORIGIN, 12345, root, key, WHEN)
    body, sig_line = note.split("\n\n")
    assert (
        body == f"{ORIGIN}\n12345\n{base64.b64encode(root).decode()}\n"
        "time 2026-11-23T11:26:41.000005Z"
    )
    assert sig_line.startswith(f"\u2014 {ORIGIN} ") and sig_line.endswith("\n")
    blob = base64.b64decode(sig_line.split(" ")[2])
    key_id = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + raw(key)).digest()[:4]
    assert blob[:4] == key_id and len(blob) == 68
    key.public_key().verify(blob[4:], (body + "\n").encode())
    vkey = verifier_key_string(ORIGIN, key.public_key())
    typed_key = base64.b64encode(b"\x01" + raw(key)).decode()
    assert vkey == f"{ORIGIN}+{key_id.hex()}+{typed_key}"
    checkpoint = parse_and_verify_checkpoint(note, vkey)
    assert (checkpoint.origin, checkpoint.size, checkpoint.root) == (ORIGIN, 12345, root)
    assert checkpoint.time == "2026-11-23T11:26:41.000005Z"


def test_checkpoint_by_another_key_fails() -> None:
    ours, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    note = sign_checkpoint(ORIGIN, 1, bytes(32), theirs)
    with pytest.raises(AuditVerificationError) as err:
        parse_and_verify_checkpoint(note, verifier_key_string(ORIGIN, ours.public_key()))
    assert err.value.code == "checkpoint-unknown-key"


def test_forged_signature_with_our_key_id_fails() -> None:
    ours, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    vkey = verifier_key_string(ORIGIN, ours.public_key())
    good = sign_checkpoint(ORIGIN, 1, bytes(32), ours)
    forged = sign_checkpoint(ORIGIN, 1, bytes(32), theirs)
    our_id = base64.b64decode(good.split(" ")[-1])[:4]
    their_sig = base64.b64decode(forged.split(" ")[-1])[4:]
    note = forged.rsplit(" ", 1)[0] + " " + base64.b64encode(our_id + their_sig).decode() + "\n"
    with pytest.raises(AuditVerificationError) as err:
        parse_and_verify_checkpoint(note, vkey)
    assert err.value.code == "checkpoint-signature-invalid"


def test_edited_checkpoint_fails_and_unknown_cosignatures_are_ignored() -> None:
    key, witness = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    vkey = verifier_key_string(ORIGIN, key.public_key())
    note = sign_checkpoint(ORIGIN, 7, bytes(32), key)
    with pytest.raises(AuditVerificationError) as err:
        parse_and_verify_checkpoint(note.replace("\n7\n", "\n8\n"), vkey)
    assert err.value.code == "checkpoint-signature-invalid"
    body = note.split("\n\n")[0] + "\n"
    extra = base64.b64encode(b"\x00\x01\x02\x03" + witness.sign(body.encode())).decode()
    cosigned = note + f"\u2014 witness.example/w1 {extra}\n"
    assert parse_and_verify_checkpoint(cosigned, vkey).size == 7


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n.replace("\n\n", "\n"),
        lambda n: n.replace("\u2014", "-"),
        lambda n: n.replace("\n7\n", "\n07\n"),
        lambda n: n + "\x07",
        lambda n: n[:-1],
    ],
)
def test_malformed_checkpoints_are_rejected(mangle: object) -> None:
    key = Ed25519PrivateKey.generate()
    note = sign_checkpoint(ORIGIN, 7, bytes(32), key)
    with pytest.raises(AuditVerificationError):
        parse_and_verify_checkpoint(mangle(note), verifier_key_string(ORIGIN, key.public_key()))  # type: ignore[operator]


def test_malformed_verifier_keys_are_rejected() -> None:
    key = Ed25519PrivateKey.generate()
    vkey = verifier_key_string(ORIGIN, key.public_key())
    name, kid, blob = vkey.split("+", 2)
    for bad in [
        f"{name}+{kid}",
        f"{name}+00000000+{blob}",
        f"{name}+{kid}+AAAA",
        f"other.example+{kid}+{blob}",
    ]:
        with pytest.raises(AuditVerificationError) as err:
            parse_and_verify_checkpoint(sign_checkpoint(ORIGIN, 1, bytes(32), key), bad)
        assert err.value.code == "verifier-key-malformed"


def test_verifier_keys_whose_base64_contains_plus_round_trip() -> None:
    keys = (Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32) for seed in range(256))
    key = next(
        k for k in keys if "+" in verifier_key_string(ORIGIN, k.public_key()).split("+", 2)[2]
    )
    note = sign_checkpoint(ORIGIN, 3, bytes(32), key)
    assert (
        parse_and_verify_checkpoint(note, verifier_key_string(ORIGIN, key.public_key())).size == 3
    )


def test_documented_example_is_reproducible() -> None:
    """The worked example in docs/audit.md, byte for byte."""
    from licensing.audit import leaf_hash

    body = encode_event(
        AuditEvent(
            type="licensing:print:redeemed",
            actor="facility:fac_0a1b",
            brand_id="brand_42",
            subject={
                "licence": "lic_1",
                "facility": "fac_0a1b",
                "part": "part_7",
                "revision": "rev_3",
            },
            facts={
                "serial": "1c3f5a7e9b2d4f60",
                "prints_used": 3,
                "royalty_cents": 250,
                "currency": "EUR",
            },
            occurred_at=WHEN,
        )
    )
    assert body == (
        b'{"actor":"facility:fac_0a1b","brand_id":"brand_42","facts":{"currency":"EUR",'
        b'"prints_used":3,"royalty_cents":250,"serial":"1c3f5a7e9b2d4f60"},'
        b'"occurred_at":"2026-11-23T11:26:41.000005Z","subject":{"facility":"fac_0a1b",'
        b'"licence":"lic_1","part":"part_7","revision":"rev_3"},'
        b'"type":"licensing:print:redeemed","v":1}'
    )
    leaf = leaf_hash(body)
    assert leaf.hex() == "33dd91757c029e4e99afedc22b85a6adfe648636076981aa1f517560efef461e"
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    vkey = verifier_key_string("partvault.example/audit", key.public_key())
    assert vkey == "partvault.example/audit+5a296df8+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
    note = sign_checkpoint(
        "partvault.example/audit", 1, leaf, key, datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    )
    assert note == (
        "partvault.example/audit\n1\nM92RdXwCnk6Zr+3CK4Wmrf5khjYHaYGqH1F1YO/vRh4=\n"
        "time 2026-11-23T12:00:00.000000Z\n\n"
        "\u2014 partvault.example/audit Wilt+Ps/LxulnEt3ulBSym+SCkVpH95v96wqwRQpSvf8TMhE"
        "t/2wEK196qJ/N4ej9I5sYm2MxERCf22TB6PZpObaFQY=\n"
    )
