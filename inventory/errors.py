"""The one error family of partvault.

Every failure a client can cause or observe is a `PartvaultError`. The API maps
the whole family once to RFC 9457 problem+json; domain code raises the subclass
that names the rule that was broken (`code`) and a human `detail`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class PartvaultError(Exception):
    """Base class: an HTTP status, a stable problem `code` and a detail text."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code()
        self.extra = extra

    @classmethod
    def default_code(cls) -> str:
        return cls.title.lower().replace(" ", "-")


class BadRequest(PartvaultError):
    status = 400
    title = "Bad request"


class Unauthorized(PartvaultError):
    status = 401
    title = "Unauthorized"


class Forbidden(PartvaultError):
    status = 403
    title = "Forbidden"


class NotFound(PartvaultError):
    status = 404
    title = "Not found"


class Conflict(PartvaultError):
    status = 409
    title = "Conflict"


class Gone(PartvaultError):
    status = 410
    title = "Gone"


class PayloadTooLarge(PartvaultError):
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(PartvaultError):
    status = 415
    title = "Unsupported media type"


class Invalid(PartvaultError):
    """The request is well-formed but breaks a domain rule (422)."""

    status = 422
    title = "Unprocessable content"


class Unavailable(PartvaultError):
    """A dependency (database, object store, key service) failed (503)."""

    status = 503
    title = "Service unavailable"
