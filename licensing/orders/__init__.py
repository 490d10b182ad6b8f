"""Orders: quotes and routing (pure), idempotency, signed webhooks and Shopify inbound.

`routing` and `country_centroids` are pure and import no database code; the
other modules hold SQLModel tables and take a caller-owned `sqlmodel.Session`
(except the webhook `Dispatcher`, which owns its own short transactions).
"""
