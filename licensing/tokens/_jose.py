"""Compact JWS plumbing shared by licences, proofs and revocation lists.

Every token partvault reads goes through the same three steps, in this order:

1. `read_header` parses the protected header without touching any key and
   refuses anything but ``alg: EdDSA``, the exact ``typ`` of the token kind and
   any ``crit`` (partvault understands no JWS extension);
2. `verify_signature` checks the Ed25519 signature with a key the *caller*
   chose (the header names no key and no algorithm but EdDSA gets this far);
3. `decode_claims` decodes the signed payload into a typed msgspec Struct.

Errors carry a code prefixed by the token kind (``licence-…``, ``dpop-…``,
``crl-…``) and never quote token or key material.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from inventory.errors import Forbidden, Unauthorized

ALG = "EdDSA"
MAX_TOKEN_CHARS = 8192
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

T = TypeVar("T")


@dataclass(frozen=True)
class Kind:
    """A token kind: its exact ``typ`` and the prefix of its error codes."""

    typ: str
    prefix: str
    label: str

    def fail(self, what: str, detail: str) -> Unauthorized:
        """A 401: the token is not an authentic, well-formed token of this kind."""
        return Unauthorized(f"{self.label}: {detail}", code=f"{self.prefix}-{what}")

    def refuse(self, what: str, detail: str) -> Forbidden:
        """A 403: the token is authentic but may not be used here or now."""
        return Forbidden(f"{self.label}: {detail}", code=f"{self.prefix}-{what}")


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url decoding; raises ValueError on anything else."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not unpadded base64url") from exc
    if b64url(data) != text:
        raise ValueError("non-canonical base64url")
    return data


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """Sorted keys, no whitespace, ASCII only: the bytes partvault signs."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def encode_compact(
    header: Mapping[str, Any], payload: bytes, sign: Callable[[bytes], bytes]
) -> str:
    """A compact JWS: canonical header, the payload, and ``sign(signing input)``."""
    signing_input = f"{b64url(canonical_json(header))}.{b64url(payload)}"
    return f"{signing_input}.{b64url(sign(signing_input.encode('ascii')))}"


def read_header(token: object, kind: Kind) -> dict[str, Any]:
    """Parse and vet the protected header before any key is looked at."""
    return vet_header(header_segment(token, kind), kind)


def header_segment(token: object, kind: Kind) -> str:
    """The first segment of a compact token: text of three segments, not too long."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise kind.fail("malformed", "missing, not text, or too long")
    segments = token.split(".")
    if len(segments) != 3:
        raise kind.fail("malformed", "not a compact JWS")
    return segments[0]


def vet_header(segment: str, kind: Kind) -> dict[str, Any]:
    """The header in `segment`: base64url JSON, ``alg`` EdDSA, this kind's ``typ``
    and no ``crit``."""
    try:
        header = json.loads(b64url_decode(segment), object_pairs_hook=_unique_keys)
    except ValueError as exc:
        raise kind.fail("malformed", "header is not base64url JSON") from exc
    if not isinstance(header, dict):
        raise kind.fail("malformed", "header is not a JSON object")
    if header.get("alg") != ALG:
        raise kind.fail("alg-not-allowed", f"only {ALG} is accepted")
    if header.get("typ") != kind.typ:
        raise kind.fail("typ-invalid", f"typ must be {kind.typ}")
    if "crit" in header:
        raise kind.fail("crit-unsupported", "no critical header extension is understood")
    return header


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object hook refusing duplicate member names."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def verify_signature(token: str, key: Ed25519PublicKey, kind: Kind) -> bytes:
    """Check the EdDSA signature with `key` and return the signed payload bytes.

    `token` has passed `read_header`: three segments and a vetted header, so
    the algorithm is EdDSA and `key` (the caller's choice) an Ed25519 key. The
    signature covers the first two segments exactly as sent (RFC 7515 §5.2).
    """
    signing_input, _, signature = token.rpartition(".")
    try:
        key.verify(b64url_decode(signature), signing_input.encode("ascii"))
        return b64url_decode(signing_input.partition(".")[2])
    except InvalidSignature as exc:
        raise kind.fail("signature-invalid", "signature does not verify") from exc
    except ValueError as exc:
        raise kind.fail("malformed", "not a valid JWS") from exc


def decode_claims(payload: bytes, struct: type[T], kind: Kind) -> T:
    """Decode the signed payload into `struct`; missing or mistyped claims fail."""
    try:
        return msgspec.json.decode(payload, type=struct)
    except msgspec.ValidationError as exc:
        raise kind.fail("claims-invalid", f"claims do not validate ({_where(exc)})") from exc
    except msgspec.DecodeError as exc:
        raise kind.fail("malformed", "payload is not JSON") from exc


def _where(exc: msgspec.ValidationError) -> str:
    """The JSON path msgspec names in its message, without any claim value."""
    text = str(exc)
    return text.rsplit(" - at ", 1)[1] if " - at " in text else "payload"


def timestamp(moment: datetime) -> int:
    """A NumericDate (whole seconds) from an aware datetime."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return int(moment.timestamp())


def from_timestamp(value: int) -> datetime:
    """An aware UTC datetime from a NumericDate."""
    return datetime.fromtimestamp(value, UTC)


def check_lifetime(
    *, iat: int, nbf: int | None, exp: int, now: datetime, leeway: timedelta, kind: Kind
) -> None:
    """Refuse (403) a token that is expired, not yet valid, or issued in the future."""
    current, slack = now.timestamp(), leeway.total_seconds()
    if exp <= current - slack:
        raise kind.refuse("expired", "expired")
    if nbf is not None and nbf > current + slack:
        raise kind.refuse("not-yet-valid", "not yet valid")
    if iat > current + slack:
        raise kind.refuse("issued-in-future", "issued in the future")
