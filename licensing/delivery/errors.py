"""Typed failures of the delivery package (packaging and opening a bureau's copy).

Every class is a `PartvaultError`; each carries one precise `code` slug so the
API and the CLI can tell a bureau exactly what is wrong with a file.
"""

from __future__ import annotations

from typing import Any

from inventory.errors import Conflict, Invalid


class DeliveryError(Invalid):
    """Base of the delivery family: a design copy cannot be built or opened (422)."""

    title = "Delivery error"
    slug = "delivery-error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, code=self.slug, **extra)


class WrongKey(DeliveryError):
    """The private key presented is not the one the content key was wrapped to."""

    slug = "securecontent-wrong-key"


class NotForThisConsumer(DeliveryError):
    """The package names no consumer matching this facility or its key."""

    slug = "securecontent-not-for-this-consumer"


class KeyUnwrapFailed(DeliveryError):
    """The key id matches but RSA-OAEP unwrapping fails: the wrapped key was edited."""

    slug = "securecontent-unwrap-failed"


class TagMismatch(DeliveryError):
    """AES-GCM authentication failed: ciphertext, IV, AAD or tag was changed."""

    slug = "securecontent-tag-mismatch"


class Truncated(DeliveryError):
    """The package or one of its parts ends early."""

    slug = "securecontent-truncated"


class Corrupt(DeliveryError):
    """The ZIP container is damaged (bad CRC, unreadable entry)."""

    slug = "securecontent-corrupt"


class Malformed(DeliveryError):
    """Parts, relationships or the key store break the 3MF Secure Content layout."""

    slug = "securecontent-malformed"


class Unsupported(DeliveryError):
    """An algorithm, compression or cipher-file version this opener does not accept."""

    slug = "securecontent-unsupported"


class AttachmentMismatch(DeliveryError):
    """An attachment (print profile, signature) differs from the one bound at packaging."""

    slug = "securecontent-attachment-mismatch"


class TooLarge(DeliveryError):
    """A part exceeds the configured size limit (zip-bomb guard)."""

    slug = "securecontent-too-large"


class InvalidMesh(DeliveryError):
    """Vertices, faces or unit cannot be serialised as a 3MF mesh."""

    slug = "model-invalid-mesh"


class MalformedModel(DeliveryError):
    """The decrypted 3MF model XML cannot be read as a mesh."""

    slug = "model-malformed"


class UnsupportedOutput(DeliveryError):
    """The requested output file type is neither .3mf nor .stl."""

    slug = "bureau-output-format"


class BadKeyFile(DeliveryError):
    """A facility key file is missing, unreadable or of the wrong type."""

    slug = "bureau-bad-key-file"


class KeyFileExists(Conflict):
    """Key generation refuses to overwrite an existing key file (409)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code="bureau-key-exists")
