"""Portable ``INSERT … ON CONFLICT DO NOTHING`` for SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel


def insert_if_absent(
    session: Session, model: type[SQLModel], row: dict[str, Any], key: str
) -> bool:
    """Insert `row` unless it violates a unique constraint; True when inserted.

    `key` names a column to return (RETURNING reports the outcome on every driver).

    On PostgreSQL a conflicting insert by a concurrent, uncommitted transaction
    makes this wait for that transaction; SQLite serialises writers anyway.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(model).values(**row).on_conflict_do_nothing()
    inserted = session.execute(statement.returning(getattr(model, key))).first()
    return inserted is not None
