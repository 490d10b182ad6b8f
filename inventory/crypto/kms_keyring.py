"""A key ring in AWS KMS (the production provider).

Ring membership uses an **alias scheme**, so that every API process sees the
same ring without local state: the alias (``alias/partvault-kek`` by default)
points at the current KMS key. `rotate` creates a new symmetric KMS key
(tagged ``partvault-ring=<alias>``) and moves the alias to it. Old keys are
never disabled or deleted by partvault, so blobs wrapped under them keep
unwrapping; each blob names the key ARN that wrapped it, and `unwrap` passes
that ARN to Decrypt explicitly.

On first use, if the alias does not exist it is created, pointing at `key_id`
when given (adopt an existing key) or at a newly created key.

URL (see `keyring.open_keyring`)::

    kms://?alias=partvault-kek&key_id=<id or ARN>&region=eu-central-1&endpoint_url=http://...

Wrapped blob::

    b"PVK\\x01" ‖ u16 BE len(arn) ‖ key ARN (ASCII) ‖ KMS CiphertextBlob

`context` becomes the KMS EncryptionContext ``{"partvault-context":
base64url(context)}``; KMS enforces it on Decrypt and records it in CloudTrail.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from inventory.crypto.keyring import KeyRingError, KeyRingUnavailable

MAGIC = b"PVK\x01"
RING_TAG = "partvault-ring"
_UNWRAP_FAILURES = {"InvalidCiphertextException", "IncorrectKeyException", "NotFoundException"}


class KmsKeyRing:
    """`KeyRing` whose KEK versions are KMS keys behind one alias."""

    def __init__(
        self,
        alias: str = "partvault-kek",
        *,
        key_id: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        client: Any | None = None,
    ) -> None:
        self.alias = alias if alias.startswith("alias/") else f"alias/{alias}"
        self.key_id = key_id
        self._alias_ready = False
        self._kms = client or boto3.session.Session().client(
            "kms",
            region_name=region,
            endpoint_url=endpoint_url,
            config=Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5),
        )

    def wrap(self, secret: bytes, context: bytes) -> bytes:
        self._ensure_alias()
        resp = _call(
            self._kms.encrypt,
            KeyId=self.alias,
            Plaintext=secret,
            EncryptionContext=_encryption_context(context),
        )
        arn = str(resp["KeyId"]).encode("ascii")
        return MAGIC + struct.pack(">H", len(arn)) + arn + bytes(resp["CiphertextBlob"])

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        arn, body = _parse(blob)
        try:
            resp = self._kms.decrypt(
                CiphertextBlob=body, KeyId=arn, EncryptionContext=_encryption_context(context)
            )
        except ClientError as exc:
            if _error_code(exc) in _UNWRAP_FAILURES:
                raise KeyRingError(
                    "KMS refused to unwrap the key", code="key-unwrap-failed"
                ) from None
            raise _unavailable(exc) from None
        except BotoCoreError as exc:
            raise _unavailable(exc) from None
        return bytes(resp["Plaintext"])

    def rotate(self) -> str:
        arn = self._create_key()
        if self._alias_target() is None:
            _call(self._kms.create_alias, AliasName=self.alias, TargetKeyId=arn)
        else:
            _call(self._kms.update_alias, AliasName=self.alias, TargetKeyId=arn)
        self._alias_ready = True
        return arn

    def current_version(self) -> str:
        self._ensure_alias()
        target = self._alias_target()
        if target is None:
            raise KeyRingError(f"KMS alias {self.alias} vanished", code="keyring-alias-missing")
        return target

    def version_of(self, blob: bytes) -> str:
        return _parse(blob)[0]

    def _ensure_alias(self) -> None:
        """Create the alias on first use (adopting `key_id` if configured)."""
        if self._alias_ready or self._alias_target() is not None:
            self._alias_ready = True
            return
        target = self.key_id or self._create_key()
        try:
            self._kms.create_alias(AliasName=self.alias, TargetKeyId=target)
        except ClientError as exc:
            if _error_code(exc) != "AlreadyExistsException":  # another process won the race
                raise _unavailable(exc) from None
        except BotoCoreError as exc:
            raise _unavailable(exc) from None
        self._alias_ready = True

    def _alias_target(self) -> str | None:
        try:
            meta = self._kms.describe_key(KeyId=self.alias)["KeyMetadata"]
        except ClientError as exc:
            if _error_code(exc) == "NotFoundException":
                return None
            raise _unavailable(exc) from None
        except BotoCoreError as exc:
            raise _unavailable(exc) from None
        return str(meta["Arn"])

    def _create_key(self) -> str:
        resp = _call(
            self._kms.create_key,
            Description=f"partvault key-encryption key ({self.alias})",
            KeySpec="SYMMETRIC_DEFAULT",
            KeyUsage="ENCRYPT_DECRYPT",
            Tags=[{"TagKey": RING_TAG, "TagValue": self.alias}],
        )
        return str(resp["KeyMetadata"]["Arn"])


def _call(method: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """Call a KMS client method; any failure means the key service is unavailable."""
    try:
        return dict(method(**kwargs))
    except (ClientError, BotoCoreError) as exc:
        raise _unavailable(exc) from None


def _encryption_context(context: bytes) -> dict[str, str]:
    return {"partvault-context": base64.urlsafe_b64encode(context).decode("ascii").rstrip("=")}


def _parse(blob: bytes) -> tuple[str, bytes]:
    """Return (key ARN, KMS ciphertext) of a wrapped blob."""
    if len(blob) < len(MAGIC) + 2 or not blob.startswith(MAGIC):
        raise KeyRingError("not a KMS key ring blob", code="key-blob-invalid")
    (length,) = struct.unpack_from(">H", blob, len(MAGIC))
    start = len(MAGIC) + 2
    body = blob[start + length :]
    if not body:
        raise KeyRingError("wrapped key truncated", code="key-blob-invalid")
    try:
        return blob[start : start + length].decode("ascii"), body
    except UnicodeDecodeError:
        raise KeyRingError("bad key ARN in blob", code="key-blob-invalid") from None


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _unavailable(exc: Exception) -> KeyRingUnavailable:
    detail = _error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    return KeyRingUnavailable(f"KMS request failed ({detail})", code="kms-unavailable")
