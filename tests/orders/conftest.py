"""Fixtures for the orders tests: every orders table registered, a local key ring.

`engine` is overridden for speed and realism: one database per test module and
backend (SQLite and PostgreSQL, both always run), built with
`inventory.db.make_engine` as the app builds it (SQLite: BEGIN IMMEDIATE, WAL,
busy timeout), and emptied of the orders tables before every test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel
from tests_support import create_pg_database, drop_pg_database

import licensing.orders.idempotency
import licensing.orders.shopify
import licensing.orders.webhooks  # noqa: F401  (tables must exist before create_all)
from inventory.crypto.local_keyring import LocalKeyRing
from inventory.db import make_engine

ORDERS_TABLES = (
    "webhook_delivery_log",
    "webhook_outbox",
    "webhook_endpoint",
    "idempotency_record",
    "shopify_delivery",
    "shopify_connection",
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('orders') / 'pv.db'}"
    else:
        url = create_pg_database()
    eng = make_engine(url)
    SQLModel.metadata.create_all(eng)
    try:
        yield eng
    finally:
        eng.dispose()
        if request.param == "postgresql":
            drop_pg_database(url)


@pytest.fixture
def engine(module_engine: Engine) -> Engine:
    with module_engine.begin() as conn:
        for name in ORDERS_TABLES:
            conn.execute(sa.delete(SQLModel.metadata.tables[name]))
    return module_engine


@pytest.fixture
def keyring(tmp_path: Path) -> LocalKeyRing:
    return LocalKeyRing(tmp_path / "keys" / "keyring.json")
