"""Keyset (cursor) pagination ordered by (created_at, id).

The cursor is opaque to clients: base64url of the last row's sort key. A
cursor that does not decode is a 400, never a silent restart.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import sqlalchemy as sa
from sqlmodel import Session
from sqlmodel.sql.expression import SelectOfScalar

from inventory.errors import BadRequest


class Keyed(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


T = TypeVar("T", bound=Keyed)

MAX_PAGE = 200


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, row_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created), str(row_id)
    except (ValueError, TypeError) as exc:
        raise BadRequest("the pagination cursor is not valid", code="bad-cursor") from exc


def paginate(
    session: Session, query: SelectOfScalar[T], model: Any, *, cursor: str | None, limit: int
) -> Page[T]:
    limit = max(1, min(limit, MAX_PAGE))
    if cursor:
        created, row_id = decode_cursor(cursor)
        query = query.where(
            sa.or_(
                model.created_at > created,
                sa.and_(model.created_at == created, model.id > row_id),
            )
        )
    rows = list(session.exec(query.order_by(model.created_at, model.id).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return Page(rows, next_cursor)
