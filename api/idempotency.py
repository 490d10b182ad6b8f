"""Idempotent creating POSTs (IETF httpapi-idempotency-key draft).

The key is claimed in its own transaction (so concurrent retries see it in
flight), the work and the stored response commit together, and a client error
is stored and replayed like a success; a server error releases the key.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
import msgspec
from litestar import Response
from litestar.params import HeaderParameter
from sqlmodel import Session

from api.problems import PROBLEM_MEDIA_TYPE, problem_body
from api.services import Services
from inventory.errors import PartvaultError
from licensing.orders import idempotency
from licensing.orders.idempotency import Replay

REPLAY_HEADER = "idempotent-replayed"
#: The optional ``Idempotency-Key`` request header.
IdempotencyKey = Annotated[str | None, HeaderParameter(name="Idempotency-Key", max_length=255)]
T = TypeVar("T")


async def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking (database) work in a worker thread, off the event loop."""
    return await anyio.to_thread.run_sync(partial(function, *args, **kwargs))


def run_idempotent(
    services: Services,
    *,
    scope: str,
    key: str | None,
    method: str,
    path: str,
    payload: Any,
    status_code: int,
    work: Callable[[Session], Any],
) -> Response[bytes]:
    """Run `work` once per (scope, key); replay its stored response afterwards."""
    if key is None:
        with services.transaction() as session:
            return _json(msgspec.json.encode(work(session)), status_code)
    key = idempotency.require_key(key)
    fingerprint = idempotency.fingerprint(method, path, msgspec.json.encode(payload))
    with services.transaction() as session:
        outcome = idempotency.begin(session, scope, key, fingerprint)
    if isinstance(outcome, Replay):
        return _replay(outcome)
    try:
        with services.transaction() as session:
            body = msgspec.json.encode(work(session))
            idempotency.finish(session, outcome.record_id, status_code, body)
    except PartvaultError as exc:
        _settle_failure(services, outcome.record_id, exc, path)
        raise
    except BaseException:
        with services.transaction() as session:
            idempotency.abandon(session, outcome.record_id)
        raise
    return _json(body, status_code)


def _settle_failure(services: Services, record_id: str, exc: PartvaultError, path: str) -> None:
    with services.transaction() as session:
        if exc.status >= 500:
            idempotency.abandon(session, record_id)
        else:
            idempotency.finish(session, record_id, exc.status, problem_body(exc, path))


def _json(body: bytes, status_code: int) -> Response[bytes]:
    return Response(body, status_code=status_code, media_type="application/json")


def _replay(replay: Replay) -> Response[bytes]:
    media = PROBLEM_MEDIA_TYPE if replay.status >= 400 else "application/json"
    return Response(
        replay.body, status_code=replay.status, media_type=media, headers={REPLAY_HEADER: "true"}
    )
