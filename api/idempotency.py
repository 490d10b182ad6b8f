"""Idempotent creating POSTs (IETF httpapi-idempotency-key draft).

The caller is authorized and the key claimed in one transaction (so
concurrent retries see it in flight), the work and the stored response commit
together, and a client error is stored and replayed like a success; a server
error releases the key. Without a key, authorization and work are one
transaction (one thread hop, one commit: the hot path of issuance and
redemption).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
import msgspec
from litestar import Response
from litestar.params import HeaderParameter
from sqlmodel import Session

from api.auth import Authorized, Credentials, authorize
from api.problems import PROBLEM_MEDIA_TYPE, problem_body
from api.services import Services
from inventory.accounts import Principal, TokenKind
from inventory.errors import PartvaultError
from licensing.orders import idempotency
from licensing.orders.idempotency import Replay
from licensing.tokens.replay import keep_spent

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
    credentials: Credentials,
    kinds: Collection[TokenKind],
    key: str | None,
    method: str,
    path: str,
    payload: Any,
    status_code: int,
    work: Callable[[Session, Principal], Any],
    key_required: bool = False,
) -> Response[bytes]:
    """Authorize the caller, then run `work` once per (token, key); replay its stored
    response afterwards. Without a key, authorization and work share one transaction."""
    if key is None and not key_required:
        return _run_once(services, credentials, kinds, work, status_code)
    fingerprint = idempotency.fingerprint(method, path, msgspec.json.encode(payload))
    with services.transaction() as session:
        principal = authorize(session, credentials, kinds).principal
        key = idempotency.require_key(key)
        outcome = idempotency.begin(session, principal.token_id, key, fingerprint)
    if isinstance(outcome, Replay):
        return _replay(outcome)
    try:
        with services.transaction() as session:
            body = msgspec.json.encode(work(session, principal))
            idempotency.finish(session, outcome.record_id, status_code, body)
    except PartvaultError as exc:
        _settle_failure(services, outcome.record_id, exc, path)
        raise
    except BaseException:
        with services.transaction() as session:
            idempotency.abandon(session, outcome.record_id)
        raise
    return _json(body, status_code)


def _run_once(
    services: Services,
    credentials: Credentials,
    kinds: Collection[TokenKind],
    work: Callable[[Session, Principal], Any],
    status_code: int,
) -> Response[bytes]:
    """Authorization and work in one transaction; a refused request still spends its proof."""
    authorized: Authorized | None = None
    try:
        with services.transaction() as session:
            authorized = authorize(session, credentials, kinds)
            body = msgspec.json.encode(work(session, authorized.principal))
    except BaseException:
        if authorized is not None and authorized.spent_proof is not None:
            with services.transaction() as session:
                keep_spent(session, authorized.spent_proof)
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
