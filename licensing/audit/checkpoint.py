"""C2SP tlog-checkpoint bodies signed as C2SP signed notes with Ed25519.

Checkpoint text (each line ends in a newline)::

    <origin>
    <decimal size>
    <base64 root hash>
    time <RFC 3339 UTC>          (extension line; the design signs the time)
    key-rotation <retired verifier key> <current verifier key>   (handovers only)

followed by a blank line and ``— <key name> base64(key ID ‖ signature)``; a
handover (the checkpoint at a key rotation) carries one such line per key.
The key ID is SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte public key)[:4] and the
verifier key string is ``<name>+<8 hex key ID>+base64(0x01 ‖ public key)``
(c2sp.org/signed-note, golang.org/x/mod/sumdb/note). The key name is the origin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from licensing.audit.errors import AuditVerificationError
from licensing.audit.events import format_time

ED25519_TYPE = b"\x01"
SIG_PREFIX = "\u2014 "
MAX_NOTE_BYTES = 16_384
MAX_SIGNATURES = 16
_NAME = re.compile(r"[^\s+]+")
_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")
_TIME_EXT = "time "
_ROTATION_EXT = "key-rotation "


class NoteSigner(Protocol):
    """An Ed25519 signing key (``Ed25519PrivateKey`` or a key-ring wrapper)."""

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``data``."""
        ...

    def public_key(self) -> Ed25519PublicKey:
        """Return the matching public key."""
        ...


@dataclass(frozen=True)
class Checkpoint:
    """A verified tree head: origin, size, root hash and the signed time."""

    origin: str
    size: int
    root: bytes
    time: str | None
    note: str
    #: (retired, current) verifier keys when this checkpoint hands the log over
    rotation: tuple[str, str] | None = None


@dataclass(frozen=True)
class VerifierKey:
    """A parsed ``name+hexid+base64key`` verifier key."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey


def _fail(code: str, detail: str) -> AuditVerificationError:
    return AuditVerificationError(detail, code=code)


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4] (signed-note Ed25519 key ID)."""
    return hashlib.sha256(name.encode() + b"\n" + ED25519_TYPE + _raw(public_key)).digest()[:4]


def verifier_key_string(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key a brand pins: ``<name>+<hex key ID>+<base64(0x01‖key)>``."""
    _check_name(name)
    encoded = base64.b64encode(ED25519_TYPE + _raw(public_key)).decode()
    return f"{name}+{key_id(name, public_key).hex()}+{encoded}"


def parse_verifier_key(text: str) -> VerifierKey:
    """Parse and self-check a verifier key string, or raise ``verifier-key-malformed``."""
    parts = text.strip().split("+", 2)
    if len(parts) != 3 or not _NAME.fullmatch(parts[0]) or len(parts[1]) != 8:
        raise _fail("verifier-key-malformed", "expected name+hexid+base64key")
    raw = _b64(parts[2], "verifier-key-malformed")
    if len(raw) != 33 or raw[:1] != ED25519_TYPE:
        raise _fail("verifier-key-malformed", "key is not an Ed25519 (0x01) key")
    try:
        public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
    except ValueError as exc:
        raise _fail("verifier-key-malformed", "not an Ed25519 public key") from exc
    if key_id(parts[0], public_key).hex() != parts[1].lower():
        raise _fail("verifier-key-malformed", "key ID does not match the key")
    return VerifierKey(parts[0], bytes.fromhex(parts[1]), public_key)


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise _fail("checkpoint-origin-invalid", "origin must be non-empty, no spaces or '+'")


def _b64(text: str, code: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _fail(code, "invalid base64") from exc
    if base64.b64encode(raw).decode() != text:
        raise _fail(code, "non-canonical base64")
    return raw


def checkpoint_body(
    origin: str,
    size: int,
    root: bytes,
    time: datetime | None,
    rotation: tuple[str, str] | None = None,
) -> str:
    """The note text of a checkpoint (ends in a newline)."""
    _check_name(origin)
    if size < 0 or len(root) != 32:
        raise _fail("checkpoint-malformed", "size must be ≥ 0 and the root 32 bytes")
    lines = [origin, str(size), base64.b64encode(root).decode()]
    if time is not None:
        lines.append(_TIME_EXT + format_time(time))
    if rotation is not None:
        lines.append(_ROTATION_EXT + " ".join(rotation))
    return "".join(line + "\n" for line in lines)


def sign_checkpoint(
    origin: str,
    size: int,
    root: bytes,
    signer: NoteSigner,
    time: datetime | None = None,
    *,
    handover_to: NoteSigner | None = None,
) -> str:
    """Sign a checkpoint as a C2SP signed note under the key name ``origin``.

    With `handover_to`, the checkpoint hands the log over from `signer`'s key
    to that one: it names both verifier keys and carries both signatures, so
    each key vouches for the other (see `licensing.audit.verify`).
    """
    signers = [signer] if handover_to is None else [signer, handover_to]
    rotation = None
    if handover_to is not None:
        rotation = (
            verifier_key_string(origin, signer.public_key()),
            verifier_key_string(origin, handover_to.public_key()),
        )
    body = checkpoint_body(origin, size, root, time, rotation)
    lines = "".join(_signature_line(origin, s, body) for s in signers)
    return f"{body}\n{lines}"


def _signature_line(origin: str, signer: NoteSigner, body: str) -> str:
    signature = key_id(origin, signer.public_key()) + signer.sign(body.encode())
    return f"{SIG_PREFIX}{origin} {base64.b64encode(signature).decode()}\n"


def _split_note(text: str) -> tuple[str, list[str]]:
    if len(text.encode("utf-8", "replace")) > MAX_NOTE_BYTES:
        raise _fail("checkpoint-malformed", "note too large")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise _fail("checkpoint-malformed", "control character in note")
    cut = text.rfind("\n\n")
    if cut < 0 or not text.endswith("\n"):
        raise _fail("checkpoint-malformed", "no blank line before the signatures")
    lines = text[cut + 2 : -1].split("\n")
    if not 0 < len(lines) <= MAX_SIGNATURES:
        raise _fail("checkpoint-malformed", "between 1 and 16 signature lines expected")
    return text[: cut + 1], lines


def _signature_for(line: str, key: VerifierKey) -> bytes | None:
    if not line.startswith(SIG_PREFIX):
        raise _fail("checkpoint-malformed", "signature line must start with an em dash")
    name, _, encoded = line[len(SIG_PREFIX) :].partition(" ")
    raw = _b64(encoded, "checkpoint-malformed")
    if len(raw) < 5:
        raise _fail("checkpoint-malformed", "signature too short")
    if name != key.name or raw[:4] != key.key_id:
        return None
    return raw[4:]


def verify_note(text: str, verifier_key: str | VerifierKey) -> str:
    """Verify a signed note against one trusted key and return its text.

    Signatures by unknown keys are ignored; a failing signature by the
    trusted key rejects the note, and so does the absence of one.
    """
    key = (
        verifier_key if isinstance(verifier_key, VerifierKey) else parse_verifier_key(verifier_key)
    )
    body, lines = _split_note(text)
    signatures = [s for s in (_signature_for(line, key) for line in lines) if s is not None]
    if not signatures:
        raise _fail("checkpoint-unknown-key", f"no signature by {key.name}")
    for signature in signatures:
        try:
            key.public_key.verify(signature, body.encode())
        except InvalidSignature as exc:
            raise _fail("checkpoint-signature-invalid", "signature does not verify") from exc
    return body


def parse_checkpoint_body(body: str, note: str) -> Checkpoint:
    """Parse verified checkpoint text (origin, size, root, optional extensions)."""
    lines = body[:-1].split("\n")
    if len(lines) < 3 or any(not line for line in lines):
        raise _fail("checkpoint-malformed", "expected origin, size and root lines")
    origin, size, root_b64 = lines[:3]
    if not _SIZE.fullmatch(size):
        raise _fail("checkpoint-malformed", "size is not a canonical decimal")
    root = _b64(root_b64, "checkpoint-malformed")
    if len(root) != 32:
        raise _fail("checkpoint-malformed", "root hash is not 32 bytes")
    times = [x[len(_TIME_EXT) :] for x in lines[3:] if x.startswith(_TIME_EXT)]
    rotations = [
        x[len(_ROTATION_EXT) :].split(" ") for x in lines[3:] if x.startswith(_ROTATION_EXT)
    ]
    if len(rotations) > 1 or any(len(keys) != 2 for keys in rotations):
        raise _fail("checkpoint-malformed", "a key-rotation line names two keys, once")
    rotation = (rotations[0][0], rotations[0][1]) if rotations else None
    return Checkpoint(origin, int(size), root, times[0] if times else None, note, rotation)


def read_checkpoint(text: str) -> Checkpoint:
    """Parse a signed checkpoint WITHOUT verifying any signature (to pick the key)."""
    return parse_checkpoint_body(_split_note(text)[0], text)


def parse_and_verify_checkpoint(text: str, verifier_key: str | VerifierKey) -> Checkpoint:
    """Verify the signature, parse the body and check origin == key name."""
    key = (
        verifier_key if isinstance(verifier_key, VerifierKey) else parse_verifier_key(verifier_key)
    )
    checkpoint = parse_checkpoint_body(verify_note(text, key), text)
    if checkpoint.origin != key.name:
        raise _fail("checkpoint-origin-mismatch", "origin does not match the key name")
    return checkpoint
