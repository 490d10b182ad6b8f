"""Every table model, imported so the metadata is complete for Alembic."""

from sqlmodel import SQLModel

import inventory.accounts
import inventory.catalog
import inventory.db
import licensing.audit
import licensing.audit.signer
import licensing.facilities
import licensing.licences
import licensing.orders.idempotency
import licensing.orders.orders
import licensing.orders.shopify
import licensing.orders.webhooks
import licensing.tokens

target_metadata = SQLModel.metadata

__all__ = ["inventory", "licensing", "target_metadata"]
