"""Idempotent creating POSTs (IETF httpapi-idempotency-key draft).

Where a key is optional (issuance, redemption), authorization, the key's
claim, the work and the stored response join the process's group commit
(`api.groupcommit`), with or without a key: the hot path. Where a key is
required (orders), the caller is authorized and the key claimed in one
transaction of its own (so a concurrent retry sees it in flight), then the
work and the stored response commit together. Either way a client error is
stored and replayed like a success, and a server error releases the key.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
import msgspec
from litestar import Response
from litestar.params import HeaderParameter
from sqlmodel import Session

from api.auth import Credentials, authorize
from api.groupcommit import Deferred, Once, Request, run_grouped
from api.logs import current_request_id
from api.problems import PROBLEM_MEDIA_TYPE, problem_body
from api.services import Services
from inventory.accounts import Principal, TokenKind
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


@dataclass(frozen=True)
class CreatingPost:
    """A creating POST as a route hands it over: who calls, which roles may, the
    Idempotency-Key (if any), the request as fingerprinted, and the work (a
    `Deferred` where the key is optional: such posts run in the group commit)."""

    credentials: Credentials
    kinds: Collection[TokenKind]
    key: str | None
    path: str
    payload: Any
    work: Callable[[Session, Principal], Any] | Deferred[Any]
    status_code: int = 201
    key_required: bool = False
    method: str = "POST"


async def run_creating(services: Services, post: CreatingPost) -> Response[bytes]:
    """Run a creating POST: in the group commit where a key is optional, else once
    per Idempotency-Key in transactions of its own (`run_idempotent`)."""
    if post.key_required:
        return await in_thread(run_idempotent, services, post)
    if not isinstance(post.work, Deferred):
        raise TypeError("work run in the group commit must be Deferred")
    outcome = await run_grouped(
        services, Request(post.credentials, post.kinds, post.work, _once(post))
    )
    if isinstance(outcome, Replay):
        return _replay(outcome)
    return _json(outcome, post.status_code)


def _once(post: CreatingPost) -> Once | None:
    if post.key is None:
        return None
    return Once(
        key=post.key,
        fingerprint=_fingerprint(post),
        path=post.path,
        status_code=post.status_code,
        request_id=current_request_id() or secrets.token_hex(8),
    )


def _fingerprint(post: CreatingPost) -> str:
    return idempotency.fingerprint(post.method, post.path, msgspec.json.encode(post.payload))


def run_idempotent(services: Services, post: CreatingPost) -> Response[bytes]:
    """Authorize the caller, then run the work once per (token, key) (a missing key
    is 400); replay its stored response afterwards."""
    if isinstance(post.work, Deferred):
        raise TypeError("Deferred work runs in the group commit only")
    with services.transaction() as session:
        principal = authorize(session, post.credentials, post.kinds)
        key = idempotency.require_key(post.key)
        outcome = idempotency.begin(session, principal.token_id, key, _fingerprint(post))
    if isinstance(outcome, Replay):
        return _replay(outcome)
    try:
        with services.transaction() as session:
            body = msgspec.json.encode(post.work(session, principal))
            idempotency.finish(session, outcome.record_id, post.status_code, body)
    except PartvaultError as exc:
        _settle_failure(services, outcome.record_id, exc, post.path)
        raise
    except BaseException:
        with services.transaction() as session:
            idempotency.abandon(session, outcome.record_id)
        raise
    return _json(body, post.status_code)


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
