"""Audit log tables.

``audit_entry`` holds each event's canonical body and leaf hash; ``audit_node``
holds every leaf hash (level 0) and the hash of every perfect subtree as it
completes, so any root or proof needs O(log n) rows; ``audit_head`` is the one
row that serializes appends; ``audit_checkpoint`` keeps every signed tree head.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
)
from sqlmodel import Field, SQLModel

from inventory.db import UTCDateTime, utcnow

HEAD_ID = 1
# BIGINT on PostgreSQL; INTEGER on SQLite so the key is the rowid (no second index).
_ROWID = BigInteger().with_variant(Integer, "sqlite")


class AuditEntry(SQLModel, table=True):
    """One logged event: its position, searchable columns and canonical body."""

    __tablename__ = "audit_entry"
    __table_args__ = (Index("ix_audit_entry_brand_id_index", "brand_id", "index"),)

    index: int = Field(sa_column=Column("index", _ROWID, primary_key=True, autoincrement=False))
    event_type: str = Field(sa_column=Column(String(200), nullable=False))
    brand_id: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    actor: str = Field(sa_column=Column(String(200), nullable=False))
    subject: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    leaf_hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))


class AuditNode(SQLModel, table=True):
    """The hash of the perfect subtree over leaves [index·2^level, (index+1)·2^level)."""

    __tablename__ = "audit_node"
    __table_args__ = {"sqlite_with_rowid": False}

    level: int = Field(sa_column=Column(SmallInteger, primary_key=True, autoincrement=False))
    index: int = Field(sa_column=Column("index", BigInteger, primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))


class AuditHead(SQLModel, table=True):
    """The single row (id = 1) holding the log size; appends lock it first."""

    __tablename__ = "audit_head"

    id: int = Field(default=HEAD_ID, primary_key=True)
    size: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class AuditCheckpoint(SQLModel, table=True):
    """A signed checkpoint as it was served, kept so its history can be audited."""

    __tablename__ = "audit_checkpoint"

    id: int | None = Field(default=None, primary_key=True)
    origin: str = Field(sa_column=Column(String(200), nullable=False))
    size: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    root: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    signed_note: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
