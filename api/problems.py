"""The one mapping from errors to RFC 9457 problem+json responses."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from api.logs import current_request_id
from inventory.errors import PartvaultError

log = logging.getLogger("partvault.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://partvault.dev/problems/"

HTTP_CODES = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    429: "too-many-requests",
    500: "internal-error",
    503: "service-unavailable",
}


def _body(
    status: int, code: str, title: str, detail: str, path: str, request_id: str, **extra: Any
) -> dict[str, Any]:
    return {
        "type": PROBLEM_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": path,
        "request_id": request_id,
        **extra,
    }


def problem_body(exc: PartvaultError, path: str, request_id: str | None = None) -> bytes:
    """The encoded problem document of a domain error (stored for idempotent replays);
    `request_id` defaults to the current request's."""
    request_id = request_id or current_request_id() or secrets.token_hex(8)
    return msgspec.json.encode(
        _body(exc.status, exc.code, exc.title, exc.detail, path, request_id, **exc.extra)
    )


def problem(
    status: int, code: str, title: str, detail: str, request: Request[Any, Any, Any], **extra: Any
) -> Response[bytes]:
    request_id = current_request_id() or secrets.token_hex(8)
    body = _body(status, code, title, detail, request.url.path, request_id, **extra)
    headers = {"x-request-id": request_id}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="partvault"'

    return Response(
        msgspec.json.encode(body),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def domain_error(request: Request[Any, Any, Any], exc: PartvaultError) -> Response[bytes]:
    if exc.status >= 500:
        log.warning("dependency failure", extra={"code": exc.code, "detail": exc.detail})
    return problem(exc.status, exc.code, exc.title, exc.detail, request, **exc.extra)


def validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    """msgspec decoding errors: malformed JSON is a 400, a body of the wrong shape a 422."""
    messages = [
        str(item.get("message", "")) for item in (exc.extra or []) if isinstance(item, dict)
    ]
    text = "; ".join(messages) or str(exc.detail)
    if "malformed" in text.lower() or "truncated" in text.lower():
        return problem(400, "malformed-json", "Malformed JSON", text, request)
    if "unknown field" in text.lower():
        return problem(422, "unknown-field", "Unknown field", text, request, errors=exc.extra)
    if "query" in text.lower() or _from_params(exc):
        return problem(
            400, "invalid-parameter", "Invalid parameter", text, request, errors=exc.extra
        )
    return problem(422, "invalid-field", "Invalid field", text, request, errors=exc.extra)


def _from_params(exc: ValidationException) -> bool:
    extra = exc.extra or []
    return any(
        isinstance(i, dict) and i.get("source") in ("query", "path", "header") for i in extra
    )


MALFORMED_HINTS = ("json", "truncated", "malformed", "input data", "invalid character")


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    code = HTTP_CODES.get(status, f"http-{status}")
    if status == 400 and any(hint in str(exc.detail).lower() for hint in MALFORMED_HINTS):
        return problem(400, "malformed-json", "Malformed JSON", str(exc.detail), request)
    return problem(status, code, code.replace("-", " ").capitalize(), str(exc.detail), request)


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "internal-error", "Internal error", "an unexpected error occurred", request)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    PartvaultError: domain_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}

__all__ = ["EXCEPTION_HANDLERS", "PROBLEM_MEDIA_TYPE", "MediaType", "problem"]
